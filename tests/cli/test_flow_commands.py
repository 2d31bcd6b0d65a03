"""train, transfer and teardown from the command line: bad input is refused with exit 2 before anything starts.

The endpoint is unreachable, so any AWS call (or a flow starting) would end in exit 1, not 2.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

UNREACHABLE = ("--endpoint-url", "http://127.0.0.1:9")
BASE = ("--name", "ok", "--bucket", "jobs", "--instance-type", "t3.micro")


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*UNREACHABLE, *args], env={"AWS_PROFILE": None})
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--name", "Bad Name!", "--bucket", "jobs", "--instance-type", "t3.micro", "--", "python3", "t.py"), "name"),
        (("--name", "ok", "--bucket", "jobs", "--instance-type", "t3.micro"), "command"),
        ((*BASE, "--checkpoint-uri", "/tmp/ckpt", "--", "python3", "t.py"), "checkpoint_uri"),
        ((*BASE, "--code-dir", "/no/such/dir", "--", "python3", "t.py"), "code_dir"),
        (("--name", "ok", "--bucket", "jobs", "--instance-type", "t3.micro", "--volume", "vol-1", "--", "x"), "vol"),
    ],
)
def test_train_launch_bad_input(args: tuple[str, ...], named: str) -> None:
    code, output = invoke("train", "launch", *args)
    assert code == 2, output
    assert named in output and "Traceback" not in output


@pytest.mark.parametrize(
    "args",
    [
        ("s3://bucket/data", "s3://other/data"),  # two ends of the same kind
        ("/no/such/source/dir", "s3://bucket/data"),
        ("ftp://host/data", "s3://bucket/data"),
        ("i-123:/data", "/tmp/out"),  # malformed instance ID
        ("s3://bucket/data", "i-0123456789abcdef0:relative/path"),
        ("s3://bucket/data", "/tmp/out", "--concurrency", "0"),  # a model's range check: still exit 2
    ],
)
def test_transfer_bad_input(args: tuple[str, ...], tmp_path: Path) -> None:
    code, output = invoke("transfer", *args)
    assert code == 2, output
    assert "Traceback" not in output


def test_teardown_needs_a_scope_and_well_formed_ids() -> None:
    code, output = invoke("teardown")
    assert code == 2, output
    code, output = invoke("teardown", "vol-12")
    assert code == 2 and "vol-12" in output, output


@pytest.mark.parametrize("debug", [False, True])
def test_flow_console_shows_a_failed_flow_without_its_traceback_unless_debug(debug: bool) -> None:
    """While a command runs a flow, Prefect's console lines carry no traceback (the command's error line says it
    all); the other handlers (Prefect's API handler: the run's page in the UI) still get it. --debug keeps it."""
    from prefect.logging.handlers import PrefectConsoleHandler

    from cli.output import CliState, flow_console

    console, api = io.StringIO(), io.StringIO()
    console_handler = PrefectConsoleHandler(stream=console, level=logging.INFO)
    console_handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    api_handler = logging.StreamHandler(api)
    prefect_logger, run_logger = logging.getLogger("prefect"), logging.getLogger("prefect.console-test")
    prefect_logger.addHandler(console_handler)
    run_logger.addHandler(api_handler)
    try:
        with flow_console(CliState(debug=debug), quiet=True):
            run_logger.info("step: sync")  # quiet: a progress bar owns the terminal
            try:
                raise RuntimeError("no such bucket")
            except RuntimeError:
                run_logger.exception("Encountered exception during execution")
        run_logger.info("after the command")
    finally:
        prefect_logger.removeHandler(console_handler)
        run_logger.removeHandler(api_handler)
    shown = console.getvalue()
    assert "ERROR Encountered exception during execution" in shown and "step: sync" not in shown
    assert ("Traceback (most recent call last)" in shown) == debug and "RuntimeError: no such bucket" in api.getvalue()
    assert "INFO after the command" in shown  # level and formatter are restored
