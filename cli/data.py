"""`trainctl data advise`: which data strategy fits a dataset, an instance type and a plan, and why.

It reads AWS only (one S3 listing, DescribeInstanceTypes, the volumes tagged with the dataset) through
flows/data.advise_data, a plain operation: no flow run, no Prefect server. The figures behind the estimates are
core/data.py's named constants.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from cli.output import as_input_error, aws_scope, emit_json, state_of, stdout_console
from core.data import DEFAULT_HOURS_PER_RUN, AdviceRequest, Strategy, duration, size_text

if TYPE_CHECKING:
    from core.data import Advice, Estimate

app = typer.Typer(help="Data strategies: how a job gets its dataset fastest.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON on stdout).")]


def _money(value: float | None) -> str:
    return "price unknown" if value is None else f"${value:,.2f}"


def _row(estimate: Estimate, chosen: bool) -> list[str]:
    name = f"* {estimate.strategy.value}" if chosen else f"  {estimate.strategy.value}"
    if not estimate.possible:
        return [name, "-", "-", "-", "-", f"not possible: {estimate.why_not}"]
    first_epoch = f" (+{duration(estimate.first_epoch_extra_s)} first)" if estimate.first_epoch_extra_s else ""
    return [
        name,
        duration(estimate.first_batch_s),
        duration(estimate.epoch_s) + first_epoch,
        duration(estimate.total_s),
        _money(estimate.cost.total_usd),
        estimate.plan,
    ]


def render(advice: Advice) -> None:
    console = stdout_console()
    where = f" in {advice.availability_zone}" if advice.availability_zone else ""
    table = Table(
        title=f"{advice.dataset_uri}: {advice.file_count:,} files, {size_text(advice.dataset_bytes)}; "
        f"{advice.instance_type}{where}, {advice.runs} run(s) × {advice.epochs} epoch(s)"
    )
    table.add_column("STRATEGY", no_wrap=True)
    for column in ("FIRST BATCH", "EPOCH (I/O)", "ALL RUNS", "COST"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("HOW", overflow="fold")
    for estimate in advice.estimates:
        chosen = estimate.strategy == advice.chosen
        table.add_row(*_row(estimate, chosen), style="bold" if chosen else None)
    console.print(table)
    console.print(f"chosen: {advice.reason}", highlight=False, markup=False)
    console.print(
        f"cost: EBS for the runs' hours, the prewarm instance, S3 GETs; prices: {advice.price_source}",
        highlight=False,
        markup=False,
        style="dim",
    )


@app.command("advise")
def advise_command(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help="The dataset: s3://bucket/prefix/.")],
    instance_type: Annotated[str, typer.Option("--instance-type", help="The training instance type.")],
    runs: Annotated[int, typer.Option("--runs", help="How many runs will read the dataset.")] = 1,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the dataset per run.")] = 1,
    hours: Annotated[
        float, typer.Option("--hours-per-run", help="How long one run keeps its data (prices the EBS volume).")
    ] = DEFAULT_HOURS_PER_RUN,
    az: Annotated[str | None, typer.Option("--az", help="The job's availability zone.")] = None,
    volume: Annotated[
        str | None, typer.Option("--volume", help="An existing volume holding the dataset (existing-ebs).")
    ] = None,
    strategy: Annotated[
        Strategy, typer.Option("--data-strategy", help="Check this strategy (refused when it cannot work here).")
    ] = Strategy.AUTO,
    json_output: JsonOption = False,
) -> None:
    """Compare direct-s3, local-cache, prewarmed-ebs and existing-ebs for this dataset, and pick one."""
    state_of(ctx, json_output=json_output)
    try:
        request = AdviceRequest(
            dataset_uri=dataset,
            instance_type=instance_type,
            runs=runs,
            epochs=epochs,
            hours_per_run=hours,
            availability_zone=az,
            volume_id=volume,
            strategy=strategy,
        )
    except ValidationError as exc:
        raise as_input_error(exc) from None
    with aws_scope(ctx) as account:
        from flows.data import advise_data

        advice = advise_data(request.model_copy(update={"account": account}))
    if json_output:
        emit_json(advice.model_dump(mode="json"))
    else:
        render(advice)
