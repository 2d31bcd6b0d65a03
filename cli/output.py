"""What every command shares: the per-run state (global options), output to humans or as JSON, and the one
place where errors become a single line on stderr and an exit code.

Heavy imports (Prefect via blocks/, boto3) stay inside functions: `trainctl version` and `trainctl sandbox up`
should not pay the ~2 s `import prefect` costs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from typer.core import TyperGroup
from typer.exceptions import TyperException

from core.errors import InvalidInputError, TerminatedError, TrainctlError, UsageError
from core.names import NameKind, validate_name

if TYPE_CHECKING:
    from blocks.aws import AwsConfig

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")


@dataclass
class CliState:
    """The root callback's global options, plus what the running command said about its output mode."""

    account: str | None = None
    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    debug: bool = False
    json: bool = False

    def aws(self) -> AwsConfig:
        """The AWS account to use: the named block (or the environment), with this run's overrides applied."""
        from blocks.aws import AwsConfig, check_endpoint, check_profile, check_region, load_account

        # Checked here, before the block or the environment, so the message names the option the user typed.
        overrides: dict[str, str] = {}
        if self.region is not None:
            overrides["region"] = check_region(self.region, "--region")
        if self.profile is not None:
            overrides["profile"] = check_profile(self.profile, "--profile")
        if self.endpoint_url is not None:
            overrides["endpoint_url"] = check_endpoint(self.endpoint_url, "--endpoint-url")
        if self.account is None:
            # The environment, with this run's options taking the place of the variables they override.
            env_names = {"region": "AWS_REGION", "profile": "AWS_PROFILE", "endpoint_url": "AWS_ENDPOINT_URL"}
            return AwsConfig.from_env({**os.environ, **{env_names[k]: v for k, v in overrides.items()}})
        validate_name(NameKind.BLOCK, self.account, field="--account")  # before Prefect is asked for it
        from cli.local_server import choose_prefect_api

        choose_prefect_api()  # the block is read where the flow runs will read it
        account = load_account(self.account)
        # A copy, not a mutation: a loaded block may be reused elsewhere in the process. The values were checked
        # above, which model_copy (no validation) would not do.
        return account.model_copy(update=overrides) if overrides else account


def state_of(ctx: typer.Context, *, json_output: bool = False) -> CliState:
    """The run's CliState; a command calls this first so that a later error knows whether to answer in JSON."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    state: CliState = root.obj
    state.json = state.json or json_output
    return state


def stdout_console() -> Console:
    """A console on the current sys.stdout (CliRunner swaps it per call, so never cache one at import time).

    Not a terminal (piped, captured): a fixed wide layout, so IDs are never folded and `grep` sees whole rows.
    """
    probe = Console(file=sys.stdout)
    return Console(file=sys.stdout, width=None if probe.is_terminal else 200, soft_wrap=False)


def stderr_console() -> Console:
    return Console(file=sys.stderr, soft_wrap=True)


def emit_json(data: Any) -> None:
    """Machine-readable output: exactly one JSON document on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def info(message: str) -> None:
    """A message for humans that must not pollute stdout (which may be piped into another tool)."""
    stderr_console().print(message, highlight=False)


def format_age(age: timedelta) -> str:
    """Compact age for tables: `45s`, `3m`, `2h5m`, `2h`, `4d`, `4d3h`."""
    seconds = max(0, int(age.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    minutes, _ = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def _error_code(err: BaseException) -> str:
    code = getattr(err, "code", None)
    return code if isinstance(code, str) and code else type(err).__name__


def as_input_error(err: ValidationError) -> TrainctlError:
    """The first problem pydantic found, as the error users see: the field, the value, what is expected."""
    first = err.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, TrainctlError):  # our own validators raise errors that already say it all
        return cause
    field = ".".join(str(p) for p in first.get("loc", ())) or "input"
    return InvalidInputError(field, first.get("input"), str(first.get("msg", "a valid value")))


def fail(err: BaseException, state: CliState) -> NoReturn:
    """Report `err` the one way trainctl reports errors, then exit with its code.

    TrainctlError: its own message and exit code (2 usage, 1 AWS). Anything else is a bug: one line naming it,
    exit 1. `--debug` adds the traceback before the line; `--json` makes the line a JSON object.
    """
    if isinstance(err, ValidationError):
        # A model refused the input (a request built from options): bad input, exit 2, naming the field.
        err = as_input_error(err)
    if isinstance(err, TrainctlError):
        message, code, exit_code = str(err), _error_code(err), err.exit_code
    else:
        hint = "" if state.debug else "; rerun with --debug for the traceback"
        message, code, exit_code = f"internal error: {err!r}{hint}", "InternalError", 1
    if state.debug:
        traceback.print_exception(err, file=sys.stderr)
    # One line whatever the message holds: AWS messages sometimes carry newlines.
    one_line = " ".join(message.split())
    if state.json:
        sys.stderr.write(json.dumps({"error": one_line, "code": code, "exit_code": exit_code}) + "\n")
    else:
        sys.stderr.write(f"error: {one_line}\n")
    sys.stderr.flush()
    raise typer.Exit(exit_code)


def _is_usage_error(err: BaseException) -> bool:
    """click's UsageError (a bad or missing option, an unknown command), from typer's vendored click (≥0.25) or
    click itself. Not the "no arguments: show the help" signal, which is one too: typer prints the help for it."""
    if any(c.__name__ == "NoArgsIsHelpError" for c in type(err).__mro__):
        return False
    return getattr(err, "exit_code", None) == 2 and hasattr(err, "ctx") and hasattr(err, "format_message")


def fail_usage(err: Any, state: CliState) -> NoReturn:
    """A usage error as the one line every other error is (typer would draw a usage block and a box)."""
    message = str(err.format_message()).replace("Value error, ", "")
    where = getattr(err.ctx, "command_path", None) or "trainctl"
    fail(UsageError(message, fix=f"See `{where} --help`."), state)


class ErrorHandlingGroup(TyperGroup):
    """The root command group: every command runs inside its `invoke`, so errors are handled here, once.

    Usage errors (a bad option value, a missing argument, an unknown command) become one line too, exit 2. typer.Exit,
    Abort on Ctrl-C and the help shown for a bare group pass through untouched: typer handles those itself.
    """

    # `Any`: the context class lives in typer's vendored (private) click module since typer 0.25.
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return list(super().parse_args(ctx, args))
        except Exception as err:  # the root's own options (`trainctl --bogus`), parsed before `invoke`
            if _is_usage_error(err):
                fail_usage(err, CliState())
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as err:
            state = ctx.obj if isinstance(ctx.obj, CliState) else CliState()
            if _is_usage_error(err):
                fail_usage(err, state)
            if isinstance(err, TyperException | typer.Exit | typer.Abort):
                raise
            fail(err, state)


_OVERRIDE_ENV = {"region": "AWS_REGION", "profile": "AWS_PROFILE", "endpoint_url": "AWS_ENDPOINT_URL"}


@contextmanager
def aws_scope(ctx: typer.Context) -> Iterator[str | None]:
    """The AwsAccount block name for the tasks, with this run's global options applied for the whole command.

    Without `--account`, the tasks read the AWS environment, so the options are set there for the command's
    duration (and restored: CliRunner runs many commands in one process). A named block has its own region and
    endpoint; overriding them per run would need a copy the tasks cannot receive, so that combination is refused.
    """
    state = state_of(ctx)
    overrides = {env: getattr(state, field) for field, env in _OVERRIDE_ENV.items() if getattr(state, field)}
    if state.account is not None and overrides:  # before loading the block: that alone starts Prefect's API
        raise UsageError(
            f"--account {state.account} cannot be combined with --region/--profile/--endpoint-url",
            fix="Save those values in the AwsAccount block, or drop --account and pass the options alone",
        )
    state.aws()  # a bad --region/--profile/--endpoint-url is reported naming the option, before any call
    saved = {key: os.environ.get(key) for key in overrides}
    os.environ.update(overrides)
    try:
        yield state.account
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_pass(ctx: typer.Context, name: str, request: M, run: Callable[[M], R]) -> R:
    """One pass of a watch flow (spot-watch, cost-watch) as a Prefect flow run, with this run's AWS options:
    `request` is the flow's model; its `account` becomes the one aws_scope gives."""
    state = state_of(ctx)
    with aws_scope(ctx) as account:
        request = request.model_copy(update={"account": account})
        if not state.json:
            info(f"running one {name} pass (a Prefect flow run)")
        with flow_console(state, quiet=False):
            return run(request)


class _WithoutTraceback(logging.Formatter):
    """A console formatter's output without the traceback: the CLI reports the error once, as one line."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info or record.exc_text or record.stack_info):
            return self.inner.format(record)
        # A copy: the same record also goes to Prefect's API handler, where the run's page keeps the traceback.
        bare = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None})
        return self.inner.format(bare)


def not_a_run_failure(record: logging.LogRecord) -> bool:
    """False for Prefect's lines about a failed task or flow run (its ERROR lines, and the INFO line "Finished in
    state Failed(...)" a sync flow ends with): the command reports that failure itself, once."""
    if not record.name.startswith(("prefect.flow_runs", "prefect.task_runs")):
        return True
    if record.levelno >= logging.ERROR:
        return False
    message = record.msg if isinstance(record.msg, str) else ""
    return not message.startswith("Finished in state ") or message.startswith("Finished in state Completed")


@contextmanager
def flow_console(state: CliState, *, quiet: bool) -> Iterator[None]:
    """Prefect's console lines while a command runs a flow. Without --debug, a failure is the command's one
    error line (`fail`): Prefect's own lines about the failed runs (the same message, with a traceback, once per
    task and once for the flow) stay on the run's page in the UI, and other lines carry no tracebacks. `quiet`:
    only warnings and errors, for a progress bar that owns the terminal (INFO lines would tear through it)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    from cli.local_server import choose_prefect_api

    choose_prefect_api()  # every flow command runs its flow in here: the one place its Prefect API is chosen

    handlers = [
        h
        for h in {*logging.getLogger().handlers, *logging.getLogger("prefect").handlers}
        if isinstance(h, PrefectConsoleHandler)
    ]
    saved = [(h, h.level, h.formatter) for h in handlers]
    for h in handlers:
        if quiet and h.level < logging.WARNING:
            h.setLevel(logging.WARNING)
        if not state.debug:
            h.setFormatter(_WithoutTraceback(h.formatter))
            h.addFilter(not_a_run_failure)
    try:
        yield
    finally:
        for h, level, formatter in saved:
            h.setLevel(level)
            h.setFormatter(formatter)
            h.removeFilter(not_a_run_failure)


def _what_was_cleaned(exc: BaseException | None) -> str | None:
    """The sentence a flow noted on the signal it was stopped by (what it cleaned up), if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        notes = getattr(exc, "__notes__", None)
        if notes:
            return str(notes[-1])
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextmanager
def sigterm_as_error() -> Iterator[None]:
    """SIGTERM while a command runs a flow becomes one error line saying what the flow cleaned up, exit 143.

    Prefect swaps in its own handler for the flow run (the flow sees a TerminationSignal and cleans up), then
    re-delivers the signal to the handler it found: this one, which raises while Prefect is still handling the
    signal, so the flow's note on it (what was cleaned up) is at hand.
    """

    def on_sigterm(signum: int, frame: object) -> None:
        noted = _what_was_cleaned(sys.exception())
        if noted:
            raise TerminatedError(noted)
        raise TerminatedError("stopped by SIGTERM", fix="Check `trainctl resources list` for anything it left behind")

    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
