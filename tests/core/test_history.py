"""core/history.py: a job's attempts as the rows of its history table (artifact and `train status`)."""

from __future__ import annotations

from datetime import UTC, datetime

from core.history import HISTORY_COLUMNS, history_rows
from core.jobs import AttemptRecord, JobRecord, JobStatus

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def _record() -> JobRecord:
    first = AttemptRecord(
        number=1,
        status=JobStatus.INTERRUPTED,
        instance_id="i-0aaaaaaaaaaaaaaa1",
        availability_zone="us-east-1a",
        capacity_type="spot",
        created_at=T0,
        launched_at=T0.replace(minute=1),
        finished_at=T0.replace(minute=30),
    )
    second = AttemptRecord(
        number=2,
        status=JobStatus.SUCCEEDED,
        launched_by="spot-watch",
        instance_id="i-0bbbbbbbbbbbbbbb2",
        availability_zone="us-east-1b",
        capacity_type="on-demand",
        created_at=T0.replace(minute=31),
        finished_at=T0.replace(hour=13),
        exit_code=0,
        resumed_from="ckpt-000012/",
        resumed_from_seq=12,
        time_lost_s=75.4,
    )
    return JobRecord(name="hist", bucket="b", status=JobStatus.SUCCEEDED, attempts=[first, second], created_at=T0)


def test_each_attempt_is_one_row_with_every_column() -> None:
    rows = history_rows(_record())
    assert [tuple(r) for r in rows] == [HISTORY_COLUMNS, HISTORY_COLUMNS]
    first, second = rows
    assert first["instance"] == "i-0aaaaaaaaaaaaaaa1" and first["az"] == "us-east-1a" and first["capacity"] == "spot"
    assert (first["start"], first["end"]) == ("2026-03-01 12:01:00", "2026-03-01 12:30:00")  # launched, not claimed
    assert first["why_it_ended"] == "interrupted" and first["resumed_from"] == "" and first["time_lost"] == ""
    assert second["launched_by"] == "spot-watch" and second["capacity"] == "on-demand"
    assert second["start"] == "2026-03-01 12:31:00"  # never launched: the claim's time
    assert second["why_it_ended"] == "succeeded (exit code 0)"
    assert second["resumed_from"] == "ckpt-000012/" and second["time_lost"] == "75 s"


def test_a_message_says_why_and_a_running_attempt_has_no_end() -> None:
    record = _record()
    record = record.model_copy(
        update={
            "attempts": [
                record.attempts[0].model_copy(update={"message": "spot took i-0aaaaaaaaaaaaaaa1"}),
                record.attempts[1].model_copy(
                    update={"status": JobStatus.RUNNING, "finished_at": None, "exit_code": None, "resumed_from": None}
                ),
            ]
        }
    )
    first, second = history_rows(record)
    assert first["why_it_ended"] == "spot took i-0aaaaaaaaaaaaaaa1"
    assert second["end"] == "" and second["why_it_ended"] == "" and second["resumed_from"] == "checkpoint 12"
