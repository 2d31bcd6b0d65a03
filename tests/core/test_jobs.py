"""core.jobs.reconcile: the job record follows the agent's final status for its attempt, and nothing else."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from core.jobs import JobRecord, JobStatus, reconcile

CREATED = datetime(2026, 1, 1, tzinfo=UTC)


def _record(status: JobStatus = JobStatus.RUNNING, attempt: int = 2, **fields: Any) -> JobRecord:
    return JobRecord(name="llm", bucket="b", attempt=attempt, status=status, created_at=CREATED, **fields)


def _agent(status: str, attempt: int = 2, **fields: Any) -> dict[str, Any]:
    return {"job": "llm", "attempt": attempt, "status": status, **fields}


@pytest.mark.parametrize(
    ("word", "exit_code"), [("succeeded", 0), ("failed", 3), ("stopped", 143), ("interrupted", None)]
)
def test_a_final_agent_status_becomes_the_records(word: str, exit_code: int | None) -> None:
    ended = "2026-01-01T01:02:03.456+00:00"
    record = _record()
    got = reconcile(record, _agent(word, exit_code=exit_code, ended_at=ended))
    assert got is not None
    assert (got.status, got.exit_code) == (JobStatus(word), exit_code)
    assert got.finished_at == datetime(2026, 1, 1, 1, 2, 3, 456000, tzinfo=UTC)
    assert (got.name, got.attempt, got.created_at) == ("llm", 2, CREATED)
    assert record.status == JobStatus.RUNNING  # the input is left as it was


def test_a_pending_record_follows_too_and_a_bad_end_time_is_left_out() -> None:
    got = reconcile(_record(JobStatus.PENDING), _agent("succeeded", exit_code=0, ended_at="soon"))
    assert got is not None and got.status == JobStatus.SUCCEEDED and got.finished_at is None


@pytest.mark.parametrize(
    ("record", "agent"),
    [
        (_record(), None),
        (_record(), {}),
        (_record(), _agent("running")),
        (_record(), _agent("succeeded", attempt=1, exit_code=0)),  # an older attempt's status
        (_record(), _agent("gave-up")),  # not a word the agent writes
        (_record(JobStatus.STOPPED, exit_code=143), _agent("failed", exit_code=1)),  # its end is recorded already
        (_record(JobStatus.SUCCEEDED, exit_code=0), _agent("succeeded", exit_code=0)),
    ],
)
def test_nothing_changes_unless_the_attempt_ended_and_the_record_still_runs(
    record: JobRecord, agent: dict[str, Any] | None
) -> None:
    assert reconcile(record, agent) is None


def test_an_exit_code_that_is_not_a_number_keeps_the_records() -> None:
    got = reconcile(_record(exit_code=None), _agent("failed", exit_code="3"))
    assert got is not None and got.status == JobStatus.FAILED and got.exit_code is None
