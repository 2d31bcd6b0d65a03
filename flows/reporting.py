"""Artifacts every flow uses: a progress bar that advances step by step, and markdown reports."""

from __future__ import annotations

from typing import cast
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    raw = "-".join(parts).lower()
    return "".join(c if c.isalnum() else "-" for c in raw).strip("-")[:100]


class StepProgress:
    """A Prefect progress artifact advanced by named steps, with a log line per step.

    `current` is the step in progress: a flow's failure report names it.
    """

    def __init__(self, key: str, steps: list[str]) -> None:
        self.steps = steps
        self.done = 0
        self.current = steps[0]
        # Sync-compatible in Prefect 3: called from a sync flow it returns the UUID itself.
        self.artifact_id = cast(UUID, create_progress_artifact(0.0, key=key, description=f"{steps[0]}…"))

    def step(self, name: str) -> None:
        self.current = name
        get_run_logger().info("step: %s", name)
        if name in self.steps:
            self.done = self.steps.index(name)
        update_progress_artifact(self.artifact_id, 100.0 * self.done / len(self.steps), description=f"{name}…")

    def finish(self, description: str = "done") -> None:
        update_progress_artifact(self.artifact_id, 100.0, description=description)


def markdown_report(key: str, title: str, rows: dict[str, object], *, notes: list[str] | None = None) -> None:
    lines = [f"# {title}", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows.items()]]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    create_markdown_artifact("\n".join(lines), key=key, description=title)
