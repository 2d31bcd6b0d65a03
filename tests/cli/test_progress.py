"""The CLI's progress bars follow the flows' progress events (no log lines read): prewarm's steps, a transfer's
phases and bytes. The events come as the flows publish them (core.progress), to the subscribers the command
hands over for its flow run."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from rich.progress import Progress

from core.progress import STEP_RECORD, Publisher, Steps, subscribers


@pytest.fixture
def bar_updates(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every update of the rich progress bar's task (what the bar shows, frame by frame)."""
    updates: list[dict[str, Any]] = []
    real = Progress.update

    def spy(self: Progress, task_id: Any, **fields: Any) -> None:
        updates.append(fields)
        real(self, task_id, **fields)

    monkeypatch.setattr(Progress, "update", spy)
    return updates


def test_prewarm_progress_shows_each_step_and_the_flows_other_lines(
    bar_updates: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.ebs import _step_progress
    from flows.prewarm import STEPS

    def flow_log(message: str, **extra: str) -> None:
        """A line of the flow's log, handed to the command's handler only (not to Prefect's API handler, which
        warns about records from outside a flow run)."""
        record = logging.makeLogRecord({"name": "prefect.flow_runs", "levelno": logging.INFO, "msg": message, **extra})
        for handler in logging.getLogger("prefect.flow_runs").handlers:
            if type(handler).__module__ == "cli.ebs":
                handler.handle(record)

    with _step_progress(enabled=True):
        # What the flow's StepProgress does (flows/reporting.py), its Prefect artifact aside.
        steps = Steps(STEPS, Publisher(subscribers()))
        for name in STEPS[:3]:
            flow_log(f"step: {name}", **{STEP_RECORD: name})
            steps.step(name)
        flow_log("volume vol-0123 in us-east-1a")
        steps.finish("12 files on vol-0123")
    shown = [(u.get("description"), u.get("completed")) for u in bar_updates]
    assert shown[:4] == [("check source", 0), ("volume", 1), ("instance", 2), ("done", len(STEPS))]
    err = capsys.readouterr().err
    assert "volume vol-0123 in us-east-1a" in err and "step: volume" not in err


def test_transfer_progress_shows_phases_files_and_bytes(bar_updates: list[dict[str, Any]]) -> None:
    from cli.transfer import _progress_bar
    from flows.transfer import Tracker

    with _progress_bar(enabled=True):
        tracker = Tracker(subscribers())  # as run_transfer makes it, with the command's subscriber
        tracker.start("copying", 2, 3000)
        tracker(1, 1000)  # throttled: not shown on its own
        tracker.phase("verifying")
        tracker(1, 2000)
        tracker.finish()
    assert bar_updates == [
        {"description": "copying", "total": 3000, "completed": 0, "files": "0/2"},
        {"description": "verifying", "total": 3000, "completed": 1000, "files": "1/2"},
        {"description": "done"},
    ]
