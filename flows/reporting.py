"""Reports every flow uses: progress (core/progress.py events) as a Prefect progress artifact and step log lines,
and markdown reports."""

from __future__ import annotations

import logging
import re
from typing import cast
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.exceptions import MissingContextError

from core.progress import (
    STEP_RECORD,
    BytesMoved,
    ProgressEvent,
    Publisher,
    Steps,
    StepStarted,
    Subscriber,
    subscribers,
)
from core.transfer import human_bytes


def artifact_key(*parts: str) -> str:
    """The one sanitizer of names Prefect restricts (artifact keys; also our concurrency-limit names): lowercase
    ASCII letters, digits and single dashes. Keys name the scope (`teardown-plan-<job>`), never the run, so the
    Artifacts page keeps a history per job."""
    raw = "-".join(parts).lower()
    return re.sub(r"[^a-z0-9]+", "-", raw).strip("-")[:100].rstrip("-")


def log(message: str, *, level: int = logging.INFO) -> None:
    """A line in the run's log; printed outside a flow run (plain calls, bench)."""
    try:
        get_run_logger().log(level, message)
    except MissingContextError:
        print(message)


def progress_artifact(key: str, description: str) -> Subscriber:
    """A Prefect progress artifact that follows the events: the share of steps started, or of bytes moved."""
    # Sync-compatible in Prefect 3: called from a sync flow it returns the UUID itself.
    artifact_id = cast(UUID, create_progress_artifact(0.0, key=key, description=description))

    def update(event: ProgressEvent) -> None:
        if isinstance(event, StepStarted):
            percent, text = 100.0 * event.done / event.total, f"{event.step}…"
        elif isinstance(event, BytesMoved):
            percent = 100.0 * event.fraction
            text = (
                f"{event.phase}: {event.files_done}/{event.files_total} files, "
                f"{human_bytes(event.bytes_done)}/{human_bytes(event.bytes_total)}"
            )
        else:
            percent, text = 100.0, event.summary
        update_progress_artifact(artifact_id, percent, description=text)

    return update


def log_steps(event: ProgressEvent) -> None:
    if isinstance(event, StepStarted):
        get_run_logger().info("step: %s", event.step, extra={STEP_RECORD: event.step})


def flow_publisher(key: str, description: str, *, steps: bool = True) -> Publisher:
    """The run's progress goes to its log (steps), its progress artifact, then to the caller's subscribers
    (`core.progress.subscribed`: the CLI's progress bar; none for a run started from the UI)."""
    own = [log_steps] if steps else []
    return Publisher([*own, progress_artifact(key, description), *subscribers()], on_error=log)


class StepProgress(Steps):
    """A flow's named steps: a log line each, a Prefect progress artifact advanced step by step, and the caller's
    subscribers. `current` is the step in progress: a flow's failure report names it."""

    def __init__(self, key: str, steps: list[str]) -> None:
        super().__init__(steps, flow_publisher(key, f"{steps[0]}…"))


def markdown_report(key: str, title: str, rows: dict[str, object], *, notes: list[str] | None = None) -> None:
    lines = [f"# {title}", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows.items()]]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    create_markdown_artifact("\n".join(lines), key=key, description=title)
