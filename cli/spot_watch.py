"""`trainctl spot-watch --bucket B [--bucket …]`: one spot-watch pass now (a Prefect flow run), then its table.

The deployment runs the same pass every minute (deployments/); this command is for a machine without a Prefect
worker, a cron line, or a look at what a pass would do right now. Exit 1 when EC2 could not be read (nothing was
judged) or a job record was skipped.
"""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from cli.output import as_input_error, emit_json, run_pass, state_of, stdout_console


def spot_watch_command(
    ctx: typer.Context,
    buckets: Annotated[
        list[str] | None,
        typer.Option(
            "--bucket",
            help="A job bucket to watch (repeat for more); buckets named by training "
            "instances' trainctl:bucket tags are watched too.",
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON on stdout).")] = False,
) -> None:
    """Run one spot-watch pass: record ended and interrupted jobs, resume them as their policy says."""
    state = state_of(ctx, json_output=json_output)
    from flows.spot_watch import SpotWatchRequest, spot_watch

    try:
        request = SpotWatchRequest(buckets=list(buckets or []), account=state.account)
    except ValidationError as exc:
        raise as_input_error(exc) from None
    report = run_pass(ctx, "spot-watch", request, spot_watch)
    if json_output:
        emit_json(report.model_dump(mode="json"))
    else:
        table = Table(title=f"spot-watch over {', '.join(report.buckets) or 'no bucket'}")
        for column in ("JOB", "BUCKET", "STATUS", "ACT", "REASON"):
            table.add_column(column, overflow="fold")
        for job in report.jobs:
            table.add_row(job.job, job.bucket, f"{job.before} → {job.after}", job.act, job.reason)
        for skipped in report.skipped:
            table.add_row(skipped.job, skipped.bucket, "skipped", "", skipped.problem)
        stdout_console().print(table)
        if not report.looked:
            stdout_console().print("EC2 could not be read: no instance was judged this pass", highlight=False)
    if not report.looked or report.skipped:
        raise typer.Exit(1)
