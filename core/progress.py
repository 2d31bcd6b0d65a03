"""Progress of long work (a flow's steps, bytes a transfer moves), as typed events handed to subscribers.

Like s3transfer's subscribers: the work is given callables and calls each with every event, in order; it never
knows who listens. The CLI renders them as a rich progress bar, flows as a Prefect progress artifact (see
flows/reporting.py). A subscriber that raises never stops the work.

How subscribers reach a flow run: a callable cannot be a flow parameter (Prefect records parameters and shows them
as a form in the UI), so the caller subscribes for the duration of its call (`subscribed`, a context variable: it
follows the caller's thread and context into the flow run, which Prefect runs in the calling thread, and no other
caller sees it). A flow run from the UI or a deployment has no subscriber beyond its own artifact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class StepStarted:
    """A named step of a runbook began; `done` steps of `total` are behind it."""

    step: str
    done: int
    total: int


@dataclass(frozen=True)
class BytesMoved:
    """Where a copy stands: files and bytes done of the planned totals, in `phase` (copying, verifying, ...)."""

    phase: str
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int

    @property
    def fraction(self) -> float:
        return min(1.0, self.bytes_done / self.bytes_total) if self.bytes_total else 0.0


@dataclass(frozen=True)
class Finished:
    """The work ended well; `summary` says what it did."""

    summary: str


ProgressEvent = StepStarted | BytesMoved | Finished
Subscriber = Callable[[ProgressEvent], None]

# The attribute flows set on a step's log record (logging `extra`): a console that shows the steps its own way (the
# CLI's progress bar) leaves those lines out, without reading their text.
STEP_RECORD = "trainctl_step"

_SUBSCRIBED: ContextVar[tuple[Subscriber, ...]] = ContextVar("trainctl_progress_subscribers", default=())


@contextmanager
def subscribed(*subscribers: Subscriber) -> Iterator[None]:
    """Hand these subscribers to the work started inside the block (in this thread and context)."""
    token = _SUBSCRIBED.set((*_SUBSCRIBED.get(), *subscribers))
    try:
        yield
    finally:
        _SUBSCRIBED.reset(token)


def subscribers() -> tuple[Subscriber, ...]:
    """The subscribers the caller of the current work handed over (`subscribed`)."""
    return _SUBSCRIBED.get()


class Publisher:
    """Hands each event to every subscriber in order; one that raises is reported to `on_error`, never raised."""

    def __init__(self, subscribers: Iterable[Subscriber], on_error: Callable[[str], None] = print) -> None:
        self.subscribers = list(subscribers)
        self.on_error = on_error

    def publish(self, event: ProgressEvent) -> None:
        for subscriber in self.subscribers:
            try:
                subscriber(event)
            except Exception as exc:  # a progress display must never fail the work
                self.on_error(f"progress subscriber failed: {exc!r}")


class Steps:
    """A runbook's named steps, published as they start; `current` names the step in progress (failure reports
    name it)."""

    def __init__(self, names: list[str], publisher: Publisher) -> None:
        self.names, self.publisher = names, publisher
        self.current, self.done = names[0], 0

    def step(self, name: str) -> None:
        self.current = name
        if name in self.names:
            self.done = self.names.index(name)
        self.publisher.publish(StepStarted(name, self.done, len(self.names)))

    def finish(self, summary: str = "done") -> None:
        self.done = len(self.names)
        self.publisher.publish(Finished(summary))
