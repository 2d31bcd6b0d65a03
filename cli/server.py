"""`trainctl server up|down|status`: the one local Prefect server the CLI reuses (cli/local_server.py).

    trainctl server up [--port N] [--json]     start it in the background (idempotent: prints the URL when up)
    trainctl server status [--json]            URL, PID, whether it answers, the UI address
    trainctl server down [--json]              stop it (SIGTERM, then SIGKILL); fine when it is already down

None of these imports Prefect: they answer in well under a second (but `up`'s first start, ~10-20 s).
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from cli import local_server
from cli.output import emit_json, info, state_of, stdout_console

app = typer.Typer(help="The local Prefect server that flow commands use (UI on 127.0.0.1).", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON on stdout).")]


def _describe(server: local_server.LocalServer | None, *, answering: bool) -> dict[str, Any]:
    return {
        "url": server.url if server else None,
        "api_url": server.api_url if server else None,
        "ui_url": server.ui_url if server else None,
        "pid": server.pid if server else None,
        "running": bool(server and local_server.alive(server.pid)),
        "answering": answering,
        "home": str(local_server.server_dir()),
        "log": server.log if server else None,
        # Flow commands use PREFECT_API_URL instead when it is set (the profile is not read here: no Prefect import).
        "prefect_api_url_env": os.environ.get("PREFECT_API_URL"),
    }


@app.command("up")
def up(
    ctx: typer.Context,
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            min=1,
            max=65535,
            help=f"Port on 127.0.0.1. Default: ${local_server.PORT_ENV}, else the last one used, "
            f"else {local_server.DEFAULT_PORT}.",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Start the local Prefect server in the background (it outlives this command) and wait until it answers."""
    state_of(ctx, json_output=json_output)
    already = local_server.running()
    if already is None and not json_output:
        info(f"starting the local Prefect server (its files in {local_server.server_dir()})")
    server, started = local_server.start(port)
    if json_output:
        emit_json({**_describe(server, answering=True), "started": started})
        return
    if not started and port is not None and port != server.port:
        info(f"already running on port {server.port} (`trainctl server down` first to move it to {port})")
    what = "started" if started else "already up"
    stdout_console().print(f"Prefect server {what}: {server.ui_url} (UI)", highlight=False)
    info(f"API {server.api_url}, PID {server.pid}, log {server.log}; `trainctl server down` stops it")


@app.command("status")
def status(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Show the local Prefect server: URL, PID, whether it answers, the UI address."""
    state_of(ctx, json_output=json_output)
    server = local_server.read_state()
    answering = bool(server and local_server.alive(server.pid) and local_server.answers(server.url))
    described = _describe(server, answering=answering)
    if json_output:
        emit_json(described)
        return
    out = stdout_console()
    if server is None:
        out.print("local Prefect server: not running (`trainctl server up` starts it)", highlight=False)
    else:
        state = "answering" if answering else ("running, not answering" if described["running"] else "not running")
        out.print(f"local Prefect server: {state}", highlight=False)
        out.print(f"  url  {server.url}\n  ui   {server.ui_url}\n  api  {server.api_url}", highlight=False)
        out.print(f"  pid  {server.pid}\n  log  {server.log}", highlight=False)
    if described["prefect_api_url_env"]:
        info(f"PREFECT_API_URL is set: flow commands use {described['prefect_api_url_env']}, not this server")


@app.command("down")
def down(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Stop the local Prefect server (SIGTERM, then SIGKILL after a timeout); fine when it is already down."""
    state_of(ctx, json_output=json_output)
    stopped = local_server.stop()
    if json_output:
        emit_json({"stopped": stopped is not None, "pid": stopped.pid if stopped else None})
        return
    if stopped is None:
        stdout_console().print("local Prefect server: already down", highlight=False)
    else:
        stdout_console().print(f"local Prefect server stopped (PID {stopped.pid})", highlight=False)
