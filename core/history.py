"""A job's history as rows: one per attempt (instance, AZ, capacity, start, end, why it ended, the checkpoint it
resumed from, the time lost). The same rows feed the job's history artifact (flows/spot_watch.py) and
`trainctl train status` (cli/train.py). Pure.
"""

from __future__ import annotations

from datetime import datetime

from core.jobs import AttemptRecord, JobRecord, JobStatus

HISTORY_COLUMNS = (
    "attempt",
    "status",
    "launched_by",
    "instance",
    "az",
    "capacity",
    "start",
    "end",
    "why_it_ended",
    "resumed_from",
    "time_lost",
)


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _why(attempt: AttemptRecord) -> str:
    if attempt.message:
        return attempt.message
    if attempt.status in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED} and attempt.exit_code is not None:
        return f"{attempt.status.value} (exit code {attempt.exit_code})"
    if attempt.status in {JobStatus.INTERRUPTED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        return attempt.status.value
    return ""


def _resumed_from(attempt: AttemptRecord) -> str:
    if attempt.resumed_from:
        return attempt.resumed_from
    if attempt.resumed_from_seq is not None:
        return f"checkpoint {attempt.resumed_from_seq}"
    return ""


def attempt_row(attempt: AttemptRecord) -> dict[str, str]:
    return {
        "attempt": str(attempt.number),
        "status": attempt.status.value,
        "launched_by": attempt.launched_by,
        "instance": attempt.instance_id or "",
        "az": attempt.availability_zone or "",
        "capacity": attempt.capacity_type or "",
        "start": _time(attempt.launched_at or attempt.created_at),
        "end": _time(attempt.finished_at),
        "why_it_ended": _why(attempt),
        "resumed_from": _resumed_from(attempt),
        "time_lost": f"{attempt.time_lost_s:.0f} s" if attempt.time_lost_s is not None else "",
    }


def history_rows(record: JobRecord) -> list[dict[str, str]]:
    """Every attempt of the job, oldest first."""
    return [attempt_row(attempt) for attempt in record.attempts]
