"""`trainctl deploy [--pool trainctl] [--notify TYPE/NAME]`: the work pool, the concurrency limits, every deployment
and the automations on the Prefect server PREFECT_API_URL names, else on the local server (`trainctl server up`;
started if it is not up), as flow commands do (deployments/setup.py). Run it again at any time:
what is already as defined is left alone, and the output says so.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table

from cli.output import emit_json, state_of, stdout_console


def deploy_command(
    ctx: typer.Context,
    pool: Annotated[
        str,
        typer.Option("--pool", help="Work pool for the deployments; created (type process) if missing."),
    ] = "trainctl",
    notify: Annotated[
        str | None,
        typer.Option(
            "--notify",
            envvar="TRAINCTL_NOTIFY_BLOCK",
            help="Notification block TYPE/NAME (e.g. slack-webhook/oncall) told when a job gives up. "
            "Without one, that automation is not created.",
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON on stdout).")] = False,
) -> None:
    """Create or update the work pool, concurrency limits, deployments and automations on the Prefect server."""
    state_of(ctx, json_output=json_output)
    from cli.local_server import choose_prefect_api
    from deployments.setup import deploy  # Prefect and the flows: only this command needs them

    choose_prefect_api()  # PREFECT_API_URL when set, else the local server (started if it is not up)

    changes = asyncio.run(deploy(pool=pool, notify=notify))
    if json_output:
        emit_json([asdict(c) for c in changes])
        return
    table = Table(title="trainctl deploy")
    for column in ("KIND", "NAME", "OUTCOME", "DETAIL"):
        table.add_column(column, overflow="fold")
    for change in changes:
        table.add_row(change.kind, change.name, change.outcome, change.detail)
    console = stdout_console()
    console.print(table)
    made = [c for c in changes if c.outcome in ("created", "updated")]
    if made:
        console.print(f"{len(made)} changed; the rest was already as defined.", highlight=False)
    else:
        console.print("nothing changed: everything was already as defined.", highlight=False)
