"""Cleanup on failure, once for every flow that creates temporary resources (prewarm, launch-attempt).

A failure inside the block runs the flow's cleanup, publishes its failure report, and raises the error a user
reads: "<what> failed at step '<step>': <error>. Cleaned up: …". A termination signal stays a signal Prefect
sees (it carries that sentence as a note, which the CLI prints), unless it landed inside Prefect's task machinery
and was replaced: then the flow's `interrupted` error says so.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prefect.exceptions import ExternalSignal

from core.errors import TrainctlError

SIGNALS: tuple[type[BaseException], ...] = (ExternalSignal, KeyboardInterrupt, SystemExit)


@dataclass(frozen=True)
class Failure:
    """What a failure report publishes: the step, the error, the signal that stopped the flow, what was cleaned."""

    step: str
    error: BaseException
    stopped: BaseException | None
    cleaned: list[str]

    @property
    def verb(self) -> str:
        return f"was interrupted by {_stopped_by(self.stopped)}" if self.stopped else "failed"


def termination_in(exc: BaseException) -> BaseException | None:
    """The termination signal (Prefect's TerminationSignal, or SystemExit/KeyboardInterrupt) that `exc` is or
    was raised while handling, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, SIGNALS):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _stopped_by(stopped: BaseException | None) -> str:
    if isinstance(stopped, KeyboardInterrupt):
        return "Ctrl-C"
    number = getattr(stopped, "signal", None)
    return signal.Signals(number).name if isinstance(number, int) else "a termination signal"


@contextmanager
def cleanup_on_failure(
    what: str,
    step: Callable[[], str],
    cleanup: Callable[[], list[str]],
    report: Callable[[Failure], None],
    *,
    failed: type[TrainctlError],
    interrupted: type[TrainctlError] | None = None,
    catch: tuple[type[BaseException], ...] = (BaseException,),
    passes: tuple[type[BaseException], ...] = (),
) -> Iterator[None]:
    """Run the block; on an exception of `catch` (but not of `passes`, which the caller handles): clean up, report,
    raise (module docstring). `step` names the step that failed (read at the failure); without `interrupted`, a
    signal replaced by Prefect is a plain failure."""
    try:
        yield
    except passes:
        raise
    except catch as exc:
        failure = Failure(step(), exc, termination_in(exc), [])
        failure.cleaned.extend(cleanup())
        report(failure)
        message = f"{what} {failure.verb} at step '{failure.step}'"
        done = f"Cleaned up: {'; '.join(failure.cleaned) or 'nothing to clean'}"
        if failure.stopped is exc:
            exc.add_note(f"{message}. {done}")
            raise
        if failure.stopped is not None and interrupted is not None:
            raise interrupted(f"{message}. {done}") from exc
        if isinstance(exc, Exception):
            raise failed(f"{what} failed at step '{failure.step}': {exc}. {done}") from exc
        raise
