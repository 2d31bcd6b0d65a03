"""`trainctl teardown`: plan (and, with --yes, carry out) a safe teardown; a dry run unless --yes.

    trainctl teardown --job J | IDS... | --all  [--sweep] [--bucket B] [--yes] [--force] [--force-training]
                      [--wait-for-training] [--json]

Runs the safe-teardown flow (a Prefect flow run), then prints the plan: every resource, its action and every
reason, and on a real run what was deleted, kept and what failed (exit 1 when anything failed or was skipped).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from cli.output import aws_scope, emit_json, flow_console, format_age, info, state_of, stdout_console
from core.errors import InvalidInputError, TrainctlError, UsageError
from core.ids import kind_of

if TYPE_CHECKING:
    from flows.teardown import TeardownReport

_STYLE = {"terminate": "red", "delete": "red", "stop": "yellow", "detach-and-keep": "cyan", "keep": "green"}


def teardown(
    ctx: typer.Context,
    ids: Annotated[list[str] | None, typer.Argument(help="Instance, volume or snapshot IDs to tear down.")] = None,
    job: Annotated[str | None, typer.Option("--job", help="Tear down everything of this job.")] = None,
    all_managed: Annotated[bool, typer.Option("--all", help="Everything trainctl manages in the region.")] = False,
    sweep: Annotated[
        bool,
        typer.Option(
            "--sweep",
            help="Also remove orphans (with --bucket: the job records): leftovers of killed launches and prewarms, "
            "instances whose agent is gone, stopped instances of ended jobs, unattached volumes, old staging and "
            "unfinished uploads. Each by a named rule with an age (README); --force lifts the age.",
        ),
    ] = False,
    bucket: Annotated[
        str | None, typer.Option("--bucket", help="Bucket of the job records, checkpoints and staging objects.")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Act on the plan (default: dry run).")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Also remove young resources (never unmanaged ones or running jobs).")
    ] = False,
    force_training: Annotated[
        bool, typer.Option("--force-training", help="Stop running jobs (they save a checkpoint first).")
    ] = False,
    wait_for_training: Annotated[
        bool, typer.Option("--wait-for-training", help="Wait for running jobs to finish (policy timeout).")
    ] = False,
    policy: Annotated[str | None, typer.Option("--policy", help="SafetyPolicy block name.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON on stdout).")] = False,
) -> None:
    """Plan a safe teardown and show every action with its reasons; act only with --yes."""
    state = state_of(ctx, json_output=json_output)
    if job and ids:
        raise UsageError("give either --job or IDs, not both")
    _check_ids(ids or [])
    from flows.teardown import TeardownRequest

    try:
        request = TeardownRequest(
            job=job,
            ids=list(ids or []),
            all_managed=all_managed,
            sweep=sweep,
            bucket=bucket,
            dry_run=not yes,
            force=force,
            force_training=force_training,
            wait_for_training=wait_for_training,
            policy=policy,
            account=state.account,
        )
    except ValidationError as exc:
        raise _refused(exc) from None
    with aws_scope(ctx) as account:
        request = request.model_copy(update={"account": account})
        from flows.teardown import safe_teardown

        if not json_output:
            info("planning the teardown (starts a Prefect flow run)")
            if sweep and not bucket:
                info("without --bucket the sweep reads no job record: training instances, staging and uploads stay")
        with flow_console(state, quiet=False):
            report = safe_teardown(request)
    if json_output:
        emit_json(report.model_dump(mode="json"))
    else:
        _render(report)
    if report.failed:
        raise typer.Exit(1)


def _check_ids(ids: list[str]) -> None:
    """A typo is a usage error here, before anything starts; a well-formed ID that does not exist (or is not
    trainctl's) becomes a "keep" line in the plan with its reason."""
    for resource_id in ids:
        if kind_of(resource_id) not in {"instance", "volume", "snapshot"}:
            raise InvalidInputError(
                "ids", resource_id, "an instance, volume or snapshot ID such as vol-0123456789abcdef0"
            )


def _refused(exc: ValidationError) -> TrainctlError:
    """The request's first refusal: a field our validators refused keeps its own message (it names the field)."""
    cause = (exc.errors()[0].get("ctx") or {}).get("error")
    if isinstance(cause, TrainctlError):
        return cause
    message = exc.errors()[0]["msg"].removeprefix("Value error, ")
    return UsageError(message, fix="e.g. trainctl teardown --job my-job, or trainctl teardown --sweep")


def _render(report: TeardownReport) -> None:
    plan = report.plan
    console = stdout_console()
    title = f"teardown of {plan.scope.describe()}{' + sweep' if plan.sweep else ''} in {plan.region}"
    table = Table(title=title)
    table.add_column("RESOURCE", no_wrap=True, style="bold")
    table.add_column("KIND", no_wrap=True)
    table.add_column("JOB", overflow="fold")
    table.add_column("AGE", justify="right", no_wrap=True)
    table.add_column("ACTION", no_wrap=True)
    table.add_column("REASONS", overflow="fold")
    table.add_column("$/MONTH", justify="right", no_wrap=True)
    from datetime import timedelta

    for e in plan.entries:
        reasons = [
            f"{r.reason}: {r.detail}" + (f" (override: --{r.override.replace('_', '-')})" if r.override else "")
            for r in e.reasons
        ]
        table.add_row(
            e.id,
            e.kind,
            e.job or "",
            format_age(timedelta(seconds=e.age_seconds)) if e.age_seconds is not None else "",
            f"[{_STYLE.get(e.action.value, 'white')}]{e.action.value}[/]",
            "\n".join([*reasons, *e.notes]),
            f"{e.monthly_usd:.2f}" if e.monthly_usd else "",
        )
    console.print(table)
    console.print(f"saves about ${plan.monthly_savings}/month", highlight=False)
    if not report.executed:
        if not plan.operations:
            console.print("nothing to do: nothing was changed", highlight=False)
        elif report.approved is False:
            console.print("not approved: nothing was changed", highlight=False)
        else:
            console.print("dry run: nothing was changed (add --yes to act)", highlight=False)
        return
    console.print(f"done: {len(report.deleted)} removed, {len(report.kept)} kept", highlight=False)
    for r in report.failed:
        console.print(f"  [red]{r.status}[/red] {r.id}: {r.detail}", highlight=False)
