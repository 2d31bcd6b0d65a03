"""train, transfer and teardown from the command line: bad input is refused with exit 2 before anything starts.

The endpoint is unreachable, so any AWS call (or a flow starting) would end in exit 1, not 2.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

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


def test_secret_env_is_checked_before_anything_starts_and_never_echoes_a_value() -> None:
    code, output = invoke("train", "launch", *BASE, "--secret-env", "DB_PASSWORD=hunter2", "--", "python3", "t.py")
    assert code == 2 and "secret_env.DB_PASSWORD" in output and "ssm:/path/to/param" in output, output
    assert "hunter2" not in output  # a value given where the reference belongs
    code, output = invoke("train", "launch", *BASE, "--secret-env", "hunter2", "--", "python3", "t.py")
    assert code == 2 and "--secret-env" in output and "hunter2" not in output, output


def test_plain_env_that_looks_secret_is_warned_about_in_one_line(tmp_path: Path) -> None:
    """A warning, not a refusal: the command goes on (here to the code dir check, which stops it before Prefect)."""
    args = ("--env", "DB_PASSWORD=hunter2", "--env", "EPOCHS=3", "--env", "CREDS=AKIAIOSFODNN7EXAMPLE")
    code, output = invoke("train", "launch", *BASE, *args, "--code-dir", str(tmp_path / "nope"), "--", "python3", "x")
    warnings = [line for line in output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "DB_PASSWORD, CREDS look like secrets" in warnings[0], output
    assert "--secret-env NAME=ssm:/path" in warnings[0]
    assert "hunter2" not in output and "AKIAIOSFODNN7EXAMPLE" not in output and "EPOCHS" not in warnings[0]
    assert code == 2 and "code_dir" in output  # it went on to the next check
    code, output = invoke(
        "train", "launch", *BASE, "--env", "EPOCHS=3", "--code-dir", str(tmp_path / "nope"), "--", "x"
    )
    assert code == 2 and "warning:" not in output


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (("s3://bucket/data", "s3://other/data"), "s3://bucket/data → s3://other/data: both are s3 locations"),
        (("/no/such/source/dir", "s3://bucket/data"), "source: '/no/such/source/dir' is not valid"),
        (("ftp://host/data", "s3://bucket/data"), "source: 'ftp://host/data' is not valid"),
        (("i-123:/data", "/tmp/out"), "source: 'i-123:/data' is not valid: expected an instance ID"),
        (
            ("s3://bucket/data", "i-0123456789abcdef0:relative/path"),
            "destination: 'i-0123456789abcdef0:relative/path' is not valid: expected an absolute path",
        ),
        (("s3://bucket/data", "/tmp/out", "--concurrency", "0"), "concurrency: 0 is not valid"),  # a model's check
    ],
)
def test_transfer_bad_input_names_what_was_refused(args: tuple[str, ...], refused: str) -> None:
    code, output = invoke("transfer", *args)
    assert code == 2, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {refused}"), output
    assert "Traceback" not in output


def test_local_instance_transfer_without_staging_is_refused_before_prefect_starts(tmp_path: Path) -> None:
    for args in ((str(tmp_path), "i-0123456789abcdef0:/data"), ("job:llm:/data/out", str(tmp_path / "out"))):
        code, output = invoke("transfer", *args)
        assert code == 2 and "--staging s3://BUCKET" in output, output
        assert "Prefect" not in output  # refused before the flow (and Prefect's server) started


def test_teardown_needs_a_scope_and_well_formed_ids() -> None:
    code, output = invoke("teardown")
    assert code == 2, output
    code, output = invoke("teardown", "vol-12")
    assert code == 2 and "vol-12" in output, output


def test_teardown_with_nothing_to_do_says_so_not_add_yes(capsys: pytest.CaptureFixture[str]) -> None:
    from datetime import UTC, datetime

    from cli.teardown import _render
    from core.models import Inventory
    from core.teardown import Scope, plan_teardown
    from flows.teardown import TeardownReport

    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    empty = Inventory.assemble(region="us-east-1", taken_at=now, instances=[], volumes=[], snapshots=[])
    plan = plan_teardown(empty, scope=Scope(job="llm"), now=now)
    _render(TeardownReport(plan=plan, executed=False))  # what the flow returns for --yes with no operations
    out = capsys.readouterr().out
    assert "nothing to do" in out and "add --yes" not in out


@pytest.mark.parametrize("debug", [False, True])
def test_flow_console_leaves_a_failure_to_the_command_unless_debug(debug: bool) -> None:
    """While a command runs a flow, Prefect's console does not repeat the failure (the command's error line says
    it, once): its lines about failed runs are left out and other lines lose their traceback. The records are
    not changed, so Prefect's API handler (the run's page in the UI) still gets it all. --debug shows it all."""
    import sys

    from prefect.logging.handlers import PrefectConsoleHandler

    from cli.output import CliState, flow_console

    console = io.StringIO()
    handler = PrefectConsoleHandler(stream=console, level=logging.INFO)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    try:
        raise RuntimeError("no such bucket")
    except RuntimeError:
        error = sys.exc_info()

    def record(name: str, level: int, message: str, exc_info: Any = None) -> logging.LogRecord:
        return logging.makeLogRecord({"name": name, "levelno": level, "levelname": logging.getLevelName(level),
                                      "msg": message, "exc_info": exc_info})  # fmt: skip

    failed = record("prefect.flow_runs", logging.ERROR, "Encountered exception during execution", error)
    task_failed = record("prefect.task_runs", logging.ERROR, "Finished in state Failed('no such bucket')")
    warned = record("prefect.flow_runs", logging.WARNING, "could not remove staging", error)
    # Handed to the "prefect" logger, where Prefect's console handler sits (the run loggers' own API handler is
    # not involved: it would warn about records from outside a flow run).
    prefect_logger = logging.getLogger("prefect")
    prefect_logger.addHandler(handler)
    try:
        with flow_console(CliState(debug=debug), quiet=True):
            for each in (record("prefect.flow_runs", logging.INFO, "step: sync"), failed, task_failed, warned):
                prefect_logger.handle(each)
        prefect_logger.handle(record("prefect.flow_runs", logging.INFO, "after the command"))
    finally:
        prefect_logger.removeHandler(handler)
    shown = console.getvalue()
    assert "step: sync" not in shown  # quiet: a progress bar owns the terminal
    assert ("Encountered exception" in shown and "Finished in state Failed" in shown) == debug
    assert "WARNING could not remove staging" in shown
    assert ("Traceback (most recent call last)" in shown) == debug
    assert "RuntimeError: no such bucket" in logging.Formatter().format(failed)  # for the API handler
    assert "INFO after the command" in shown  # level, formatter and filter are restored


def test_a_sync_flows_info_line_about_its_failure_is_left_to_the_command() -> None:
    """A sync flow ends with "Finished in state Failed(...)" at INFO (prewarm's progress showed it above the
    command's own error line: the failure said twice); "Finished in state Completed()" and other lines stay."""
    from cli.output import not_a_run_failure

    def record(name: str, level: int, message: str) -> logging.LogRecord:
        return logging.makeLogRecord({"name": name, "levelno": level, "msg": message})

    assert not not_a_run_failure(record("prefect.flow_runs", logging.INFO, "Finished in state Failed('boom')"))
    assert not not_a_run_failure(record("prefect.flow_runs", logging.INFO, "Finished in state Crashed('kill')"))
    assert not not_a_run_failure(record("prefect.task_runs", logging.ERROR, "Task run failed"))
    assert not_a_run_failure(record("prefect.flow_runs", logging.INFO, "Finished in state Completed()"))
    assert not_a_run_failure(record("prefect.flow_runs", logging.INFO, "source s3://b/p/: 2 objects"))
    assert not_a_run_failure(record("prefect", logging.ERROR, "a server problem"))
