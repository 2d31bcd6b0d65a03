"""`trainctl`: the command line front of trainctl (typer + rich). Thin: it parses, calls, and renders.

    trainctl [--account NAME] [--region R] [--profile P] [--endpoint-url URL] [--debug] COMMAND [--json]

Errors are handled once, in `ErrorHandlingGroup` (cli/output.py): one line on stderr, exit 2 for usage errors and
1 for AWS errors, a traceback only with `--debug`.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Annotated

import typer

from cli import cost, data, deploy, ebs, iam, resources, sandbox, server, spot_watch, teardown, train, transfer
from cli.output import CliState, ErrorHandlingGroup, emit_json, state_of, stdout_console
from cli.prefect_server import tie_temporary_server

app = typer.Typer(
    name="trainctl",
    cls=ErrorHandlingGroup,
    help="Run ML training on AWS spot instances without losing data or money.",
    no_args_is_help=True,
    add_completion=False,
    # Our own handler decides what an error looks like; typer's pretty traceback would bypass --debug.
    pretty_exceptions_enable=False,
)
app.add_typer(resources.app, name="resources")
app.add_typer(ebs.app, name="ebs")
app.add_typer(data.app, name="data")
app.add_typer(iam.app, name="iam")
app.add_typer(sandbox.app, name="sandbox")
app.add_typer(server.app, name="server")
app.command("teardown")(teardown.teardown)
app.add_typer(train.app, name="train")
app.command("transfer")(transfer.transfer_command)
app.command("spot-watch")(spot_watch.spot_watch_command)
app.command("cost")(cost.cost)
app.command("cost-watch")(cost.cost_watch_command)
app.command("deploy")(deploy.deploy_command)


@app.callback()
def root(
    ctx: typer.Context,
    account: Annotated[
        str | None,
        typer.Option("--account", help="Name of a saved AwsAccount block. Default: the AWS environment."),
    ] = None,
    region: Annotated[str | None, typer.Option("--region", help="AWS region for this run (e.g. us-east-1).")] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="AWS profile for this run.")] = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option("--endpoint-url", help="AWS endpoint for this run (the sandbox, a moto server)."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback when something fails.")] = False,
) -> None:
    """Run ML training on AWS spot instances without losing data or money."""
    # The temporary Prefect server a command starts would report usage to Prefect (an ERROR line on every run
    # where the network is closed, as in many VPCs). Off unless the user turned it on.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    ctx.obj = CliState(account=account, region=region, profile=profile, endpoint_url=endpoint_url, debug=debug)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@app.command()
def version(
    ctx: typer.Context,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the versions of trainctl and of what it runs on."""
    state_of(ctx, json_output=json_output)
    # Read from package metadata, not by importing: `import prefect` alone costs ~2 s.
    versions = {
        "trainctl": _version("trainctl"),
        "python": platform.python_version(),
        **{name: _version(name) for name in ("prefect", "boto3", "moto")},
    }
    if json_output:
        emit_json(versions)
        return
    console = stdout_console()
    console.print(f"trainctl {versions['trainctl']}", highlight=False)
    console.print(
        ", ".join(f"{name} {value}" for name, value in versions.items() if name != "trainctl" and value),
        highlight=False,
        style="dim",
    )


def main() -> None:
    """The console script entry point (`trainctl = "cli.main:main"`)."""
    tie_temporary_server()  # a killed command must not leave Prefect's temporary server running
    app(prog_name="trainctl")


if __name__ == "__main__":
    main()
