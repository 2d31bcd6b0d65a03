"""`trainctl cost` (what trainctl's resources and jobs cost, now) and `trainctl cost-watch` (one cost-watch pass).

`cost` calls flows/cost_watch.cost_report: plain functions, no Prefect run, so no server is started just to print.
It reads only (the thresholds' state is cost-watch's to keep). `cost-watch` runs the pass as a Prefect flow run,
like the deployment every 15 minutes: events, actions the CostPolicy enables, the table artifact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from cli.output import as_input_error, aws_scope, emit_json, run_pass, state_of, stdout_console
from core.jobs import validate_job_name

if TYPE_CHECKING:
    from flows.cost_watch import CostReport, CostRow, CostWatchRequest

BucketsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--bucket",
        help="A job bucket whose records are priced (repeat for more); buckets named by training instances' "
        "trainctl:bucket tags are added. The first keeps cost-watch's state.",
    ),
]
RegionOption = Annotated[
    str | None, typer.Option("--region", help="The region to price (the same as trainctl's global --region).")
]
PolicyOption = Annotated[
    str | None, typer.Option("--cost-policy", help="CostPolicy block name (default: $50/hour, $100/day, $500).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON on stdout).")]


def _money(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"${value:,.{digits}f}"


def _rows_table(title: str, rows: list[CostRow], *, per_job: bool) -> Table:
    table = Table(title=title)
    table.add_column("JOB" if per_job else "ID", no_wrap=True, style="bold")
    labels = ["DETAIL"] if per_job else ["KIND", "JOB", "DETAIL"]
    for column in labels:
        table.add_column(column, overflow="fold")
    for column in ("$/HOUR", "SINCE CREATION", "TODAY", "MONTH (PROJ.)"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("SOURCE", overflow="fold")
    for r in rows:
        price = [_money(r.hourly_usd), _money(r.accumulated_usd), _money(r.today_usd), _money(r.end_of_month_usd, 2)]
        if r.unknown and not per_job:
            price = ["price unknown", "", "", ""]
        source = r.source or ""
        if r.unknown:
            source = f"{source} ({r.unknown})" if source else r.unknown
        labels = [r.detail] if per_job else [r.kind, r.job or "", r.detail]
        table.add_row(r.id, *labels, *price, source)
    return table


def render(report: CostReport) -> None:
    console = stdout_console()
    if report.nothing_running or report.totals is None:
        console.print(f"Nothing running in {report.region}: no managed resource and no active job.", highlight=False)
        return
    console.print(_rows_table(f"cost per job in {report.region}", report.jobs, per_job=True))
    console.print(_rows_table("cost per resource (price unknown last)", report.resources, per_job=False))
    s = report.totals
    lines = [
        f"burn rate ${s.hourly_usd:,.4f}/hour; since creation ${s.accumulated_usd:,.2f}; last 24 h "
        f"${s.last_24h_usd:,.2f}; today ${s.today_usd:,.2f}; this month ${s.month_usd:,.2f}",
        f"projected: end of day ${s.end_of_day_usd:,.2f}, end of month ${s.end_of_month_usd:,.2f}",
        f"prices from: {', '.join(s.sources) or 'none'}",
    ]
    if s.unknown:
        lines.append(f"price unknown: {s.unknown} resource(s), counted in no figure above")
    for row in report.thresholds:
        since = f" since {row.since:%Y-%m-%d %H:%M} UTC" if row.since else ""
        lines.append(f"threshold above: {row.key} ${row.amount_usd:,.2f} > ${row.limit_usd:,.2f}{since}")
    for advice in report.advice:
        saves = "price unknown" if advice.monthly_savings_usd is None else f"${advice.monthly_savings_usd:,.2f}/month"
        lines.append(f"cleanup: {advice.kind} {advice.id} ({advice.rule}: {advice.detail}) saves {saves}")
    lines += [f"price problem: {key}: {why}" for key, why in report.price_problems.items()]
    lines += [f"note: {note}" for note in report.notes]
    for line in lines:
        console.print(line, highlight=False, markup=False)


def _request(
    ctx: typer.Context, buckets: list[str] | None, region: str | None, cost_policy: str | None, json_output: bool
) -> CostWatchRequest:
    """The pass's request from the options (checked before Prefect is imported); `--region` as the global one."""
    state = state_of(ctx, json_output=json_output)
    if region is not None:
        state.region = region
    from flows.cost_watch import CostWatchRequest  # imports Prefect (~2 s): only when a command needs AWS

    try:
        return CostWatchRequest(buckets=list(buckets or []), cost_policy=cost_policy, account=state.account)
    except ValidationError as exc:
        raise as_input_error(exc) from None


def cost(
    ctx: typer.Context,
    job: Annotated[str | None, typer.Option("--job", help="Only this job (priced across all its attempts).")] = None,
    buckets: BucketsOption = None,
    region: RegionOption = None,
    cost_policy: PolicyOption = None,
    json_output: JsonOption = False,
) -> None:
    """What trainctl's jobs and resources cost: per job and resource, burn rate, projections, thresholds."""
    state_of(ctx, json_output=json_output)
    if job is not None:
        validate_job_name(job, field="--job")
    request = _request(ctx, buckets, region, cost_policy, json_output)
    if cost_policy is not None:  # a block to read: from the Prefect API the flow commands use
        from cli.local_server import choose_prefect_api

        choose_prefect_api()
    with aws_scope(ctx) as account:
        from flows.cost_watch import cost_report

        report = cost_report(request.model_copy(update={"account": account}), job=job)
    if json_output:
        emit_json(report.model_dump(mode="json"))
    else:
        render(report)


def cost_watch_command(
    ctx: typer.Context,
    buckets: BucketsOption = None,
    region: RegionOption = None,
    cost_policy: PolicyOption = None,
    json_output: JsonOption = False,
) -> None:
    """Run one cost-watch pass: price, check thresholds (events once per crossing), act as the policy says."""
    request = _request(ctx, buckets, region, cost_policy, json_output)
    from flows.cost_watch import cost_watch

    report = run_pass(ctx, "cost-watch", request, cost_watch)
    if json_output:
        emit_json(report.model_dump(mode="json"))
        return
    render(report)
    for action in report.actions:
        stdout_console().print(f"{action.job}: {action.outcome} ({action.reason}) {action.detail}", highlight=False)
