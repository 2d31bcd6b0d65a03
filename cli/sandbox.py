"""`trainctl sandbox up`: the local cloud (DESIGN.md section 6) in the foreground, until Ctrl-C or SIGTERM.

stdout carries only the `export ...` lines (or, with --json, the environment as JSON) so it can be captured or
sourced; everything for humans goes to stderr.
"""

from __future__ import annotations

import shlex
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from cli.output import emit_json, info, state_of
from core.errors import UsageError

app = typer.Typer(help="The local cloud: rehearse a run on your machine, for free.", no_args_is_help=True)

DEFAULT_PORT = 5055


def _check_port_free(host: str, port: int) -> None:
    """moto's threaded server waits forever when its port is taken (the bind fails in its thread): check first."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UsageError(
                f"port {port} on {host} is not available ({exc.strerror or exc})",
                fix="Pass --port with a free port, or --port 0 for any free port",
            ) from exc


def export_lines(env: dict[str, str]) -> list[str]:
    """`export NAME=value` lines, shell-quoted, in a stable order."""
    return [f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())]


@app.command("up")
def up(
    ctx: typer.Context,
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free port).")
    ] = DEFAULT_PORT,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="Where instance roots and volumes live (kept). Default: a temp dir."),
    ] = None,
    boot_delay: Annotated[
        float, typer.Option("--boot-delay", min=0, help="Seconds before a new instance is SSM Online.")
    ] = 0.5,
    transition_delay: Annotated[
        float,
        typer.Option("--transition-delay", min=0, help="Seconds pending/attaching/detaching states last (0: instant)."),
    ] = 0.0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the environment as JSON.")] = False,
) -> None:
    """Start the sandbox in the foreground and print the environment that points AWS tools at it."""
    state = state_of(ctx, json_output=json_output)
    _check_port_free(host, port)
    from sandbox import Sandbox  # moto is heavy; only this command needs it

    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # SIGTERM (kill, systemd, a test) and Ctrl-C both mean: stop cleanly, exit 0.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    cloud = Sandbox(
        port=port,
        host=host,
        state_dir=state_dir,
        boot_delay=boot_delay,
        transition_delay=transition_delay,
        verbose=state.debug,
    )
    cloud.start()
    try:
        if json_output:
            emit_json(cloud.env)
        else:
            print("\n".join(export_lines(cloud.env)), flush=True)
        info(
            f"[bold]sandbox[/] listening on {cloud.endpoint_url} (state in {cloud.state_dir}). "
            + ("" if json_output else "Export the lines above in another shell, then run trainctl there. ")
            + "Ctrl-C to stop."
        )
        sys.stdout.flush()
        # A timed wait keeps the main thread responsive to signals on every platform.
        while not stop.wait(0.5):
            pass
    finally:
        info("sandbox: stopping")
        cloud.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    info("sandbox: stopped")
