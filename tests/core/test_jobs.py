"""core.jobs: the record follows the agent's final status for its attempt (reconcile), the status state machine,
attempt numbering, the version-1 record upgrade, and how leniently what the agent writes is read."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from core.errors import InvalidInputError
from core.jobs import (
    RECORD_VERSION,
    TRANSITIONS,
    AgentStatus,
    AttemptRecord,
    JobRecord,
    JobSpec,
    JobStateError,
    JobStatus,
    RecoveryStrategy,
    check_transition,
    reconcile,
)

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


def test_a_resuming_record_follows_its_new_attempts_agent() -> None:
    """spot-watch's claim (`resuming`) whose trainer already ended before the launch recorded `running`."""
    claimed = _running_record().with_status(JobStatus.INTERRUPTED)
    claimed = claimed.with_new_attempt(AttemptRecord(number=2, created_at=CREATED), JobStatus.RESUMING)
    got = reconcile(claimed, _agent("succeeded", attempt=2, exit_code=0))
    assert got is not None and (got.status, got.current.status) == (JobStatus.SUCCEEDED, JobStatus.SUCCEEDED)
    assert got.exit_code == 0
    assert got.attempt_record(1) == claimed.attempt_record(1)


# -- the state machine ----------------------------------------------------------------------------------------

SPEC = JobSpec(name="llm", bucket="trainctl-test", template="gpu", command=["python", "train.py"])
LIVE_ATTEMPT = {"instance_id": "i-0123456789abcdef0", "availability_zone": "us-east-1a"}
# Sorted: the order of TRANSITIONS (built from frozensets) differs between the test processes.
ALLOWED = sorted((current, target) for current, targets in TRANSITIONS.items() for target in targets)
REFUSED = [
    (JobStatus.PENDING, JobStatus.RESUMING),
    (JobStatus.PENDING, JobStatus.GAVE_UP),
    (JobStatus.RUNNING, JobStatus.PENDING),
    (JobStatus.RUNNING, JobStatus.RESUMING),
    (JobStatus.RUNNING, JobStatus.GAVE_UP),
    (JobStatus.INTERRUPTED, JobStatus.RUNNING),
    (JobStatus.INTERRUPTED, JobStatus.SUCCEEDED),
    (JobStatus.RESUMING, JobStatus.PENDING),
    (JobStatus.SUCCEEDED, JobStatus.RUNNING),
    (JobStatus.GAVE_UP, JobStatus.RESUMING),
    (JobStatus.STOPPED, JobStatus.FAILED),
]
# The shortest way to each status, as the flows get there.
PATHS: dict[JobStatus, list[JobStatus]] = {
    JobStatus.PENDING: [],
    JobStatus.RUNNING: [JobStatus.RUNNING],
    JobStatus.INTERRUPTED: [JobStatus.RUNNING, JobStatus.INTERRUPTED],
    JobStatus.RESUMING: [JobStatus.RUNNING, JobStatus.INTERRUPTED, JobStatus.RESUMING],
    JobStatus.SUCCEEDED: [JobStatus.RUNNING, JobStatus.SUCCEEDED],
    JobStatus.FAILED: [JobStatus.FAILED],
    JobStatus.STOPPED: [JobStatus.RUNNING, JobStatus.STOPPED],
    JobStatus.GAVE_UP: [JobStatus.RUNNING, JobStatus.INTERRUPTED, JobStatus.GAVE_UP],
}


def _move(record: JobRecord, target: JobStatus) -> JobRecord:
    """`target` as the flows reach it: a new attempt for pending/resuming, else the current attempt's status."""
    if target in {JobStatus.PENDING, JobStatus.RESUMING} and target != record.status:
        return record.with_new_attempt(AttemptRecord(number=record.attempt + 1, created_at=CREATED), target)
    return record.with_status(target)


def _in(status: JobStatus) -> JobRecord:
    record = JobRecord.first(SPEC, now=CREATED).with_attempt(**LIVE_ATTEMPT)
    for step in PATHS[status]:
        record = _move(record, step)
    assert record.status == status
    return record


def _running_record() -> JobRecord:
    return _in(JobStatus.RUNNING)


@pytest.mark.parametrize(("current", "target"), ALLOWED, ids=[f"{c}->{t}" for c, t in ALLOWED])
def test_every_allowed_transition(current: JobStatus, target: JobStatus) -> None:
    before = _in(current)
    after = _move(before, target)
    assert after.status == target
    new_attempt = target in {JobStatus.PENDING, JobStatus.RESUMING}
    assert after.attempt == before.attempt + (1 if new_attempt else 0)
    assert after.attempts[: before.attempt - 1] == before.attempts[: before.attempt - 1]  # history kept
    if target in {JobStatus.GAVE_UP}:
        assert after.current.status == before.current.status  # a job-only status leaves the attempt's
    elif new_attempt:
        assert after.current.status == JobStatus.PENDING and after.attempts[-2] == before.current
    else:
        assert after.current.status == target


@pytest.mark.parametrize(("current", "target"), REFUSED, ids=[f"{c}->{t}" for c, t in REFUSED])
def test_refused_transitions_raise(current: JobStatus, target: JobStatus) -> None:
    record = _in(current)
    with pytest.raises(JobStateError, match="job llm"):
        _move(record, target)
    with pytest.raises(JobStateError):
        check_transition("llm", current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (JobStatus.INTERRUPTED, JobStatus.PENDING),
        (JobStatus.INTERRUPTED, JobStatus.RESUMING),
        (JobStatus.SUCCEEDED, JobStatus.PENDING),
        (JobStatus.GAVE_UP, JobStatus.PENDING),
    ],
)
def test_pending_and_resuming_are_only_reached_with_a_new_attempt(current: JobStatus, target: JobStatus) -> None:
    """with_status would reopen the ended attempt (its instance) as if it were the one being launched."""
    record = _in(current)
    assert target in TRANSITIONS[current]  # allowed, but only as a claim
    with pytest.raises(JobStateError, match="new attempt"):
        record.with_status(target)


@pytest.mark.parametrize("status", [JobStatus.PENDING, JobStatus.RESUMING, JobStatus.RUNNING])
def test_no_second_attempt_is_claimed_while_one_is_active(status: JobStatus) -> None:
    """Two claims of one job would run two trainers on one checkpoint prefix."""
    record = _in(status)
    for claim in (JobStatus.PENDING, JobStatus.RESUMING):
        with pytest.raises(JobStateError):
            record.with_new_attempt(AttemptRecord(number=record.attempt + 1, created_at=CREATED), claim)


def test_a_new_attempt_is_numbered_next_and_claims_as_pending_or_resuming_only() -> None:
    record = _in(JobStatus.INTERRUPTED)
    for number in (1, 3, 7):
        with pytest.raises(JobStateError, match=f"attempt {number} cannot follow attempt 1"):
            record.with_new_attempt(AttemptRecord(number=number, created_at=CREATED), JobStatus.RESUMING)
    with pytest.raises(JobStateError):
        record.with_new_attempt(AttemptRecord(number=2, created_at=CREATED), JobStatus.RUNNING)
    claimed = record.with_new_attempt(AttemptRecord(number=2, launched_by="spot-watch", created_at=CREATED))
    assert [a.number for a in claimed.attempts] == [1, 2]
    assert (claimed.status, claimed.attempt, claimed.instance_id, claimed.message) == (JobStatus.PENDING, 2, None, None)
    assert claimed.attempt_record(1) == record.current and claimed.attempt_record(3) is None


_CLAIM_OR_STATUS = st.sampled_from(list(JobStatus))


@given(st.lists(_CLAIM_OR_STATUS, max_size=30))
def test_any_sequence_of_transitions_keeps_attempts_numbered_and_status_consistent(steps: list[JobStatus]) -> None:
    record = JobRecord.first(SPEC, now=CREATED)
    for target in steps:
        allowed = target == record.status or target in TRANSITIONS[record.status]
        try:
            after = _move(record, target)
        except JobStateError:
            assert not allowed
            continue
        assert allowed
        record = after
        assert [a.number for a in record.attempts] == list(range(1, len(record.attempts) + 1))
        if record.status == JobStatus.RESUMING:
            assert record.current.status == JobStatus.PENDING  # claimed, not launched
        elif record.status == JobStatus.GAVE_UP:
            assert record.current.status in {JobStatus.INTERRUPTED, JobStatus.PENDING}
        else:
            assert record.current.status == record.status
        assert all(a.status not in {JobStatus.RESUMING, JobStatus.GAVE_UP} for a in record.attempts)


# -- the version-1 record -------------------------------------------------------------------------------------

V1_RECORD: dict[str, Any] = {
    # As trainctl wrote job.json before the spine (core.models.Job + core.launch.JobRecord, no version key).
    "name": "llm",
    "bucket": "trainctl-test",
    "status": "interrupted",
    "attempt": 3,
    "instance_id": "i-0123456789abcdef0",
    "volume_id": "vol-0123456789abcdef0",
    "checkpoint_uri": "s3://trainctl-test/trainctl/jobs/llm/checkpoints/",
    "created_at": "2026-01-01T00:00:00Z",
    "updated_at": "2026-01-02T03:04:05Z",
    "exit_code": None,
    "capacity_type": "spot",
    "instance_type": "g5.xlarge",
    "availability_zone": "us-east-1b",
    "mount_point": "/mnt/trainctl/vol-0123456789abcdef0",
    "launched_at": "2026-01-01T00:05:00Z",
    "finished_at": "2026-01-02T03:04:00Z",
    "message": "spot interruption",
    "spec": {
        "name": "llm",
        "bucket": "trainctl-test",
        "template": "gpu",
        "command": ["python", "train.py"],
        "data_volume_id": "vol-0123456789abcdef0",
        "on_demand_fallback": True,
        "wait": True,
        "wait_timeout_minutes": 60,
        "terminate_when_done": False,
    },
}


def test_a_version_1_record_reads_into_attempts_and_a_resume_policy() -> None:
    record = JobRecord.model_validate(V1_RECORD)
    assert record.version == RECORD_VERSION
    assert (record.name, record.bucket, record.status, record.message) == (
        "llm",
        "trainctl-test",
        JobStatus.INTERRUPTED,
        "spot interruption",
    )
    assert len(record.attempts) == 1
    attempt = record.current
    assert (attempt.number, attempt.status, attempt.instance_id, attempt.volume_id) == (
        3,
        JobStatus.INTERRUPTED,
        "i-0123456789abcdef0",
        "vol-0123456789abcdef0",
    )
    assert (attempt.instance_type, attempt.availability_zone, attempt.capacity_type) == (
        "g5.xlarge",
        "us-east-1b",
        "spot",
    )
    assert attempt.launched_at == datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    assert attempt.finished_at == datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    assert record.spec is not None and record.spec.resume.on_demand_fallback is True
    assert record.spec.resume.strategy == RecoveryStrategy.SAME_AZ  # the default: v1 had no strategy
    assert record.spec.data_volume_id == "vol-0123456789abcdef0"
    assert (record.checkpoint_uri, record.mount_point) == (V1_RECORD["checkpoint_uri"], V1_RECORD["mount_point"])
    # It reads back as itself once written in today's shape, and the next attempt follows the old numbering.
    assert JobRecord.model_validate_json(record.model_dump_json()) == record
    assert record.with_new_attempt(AttemptRecord(number=4, created_at=CREATED), JobStatus.RESUMING).attempt == 4
    assert V1_RECORD["spec"]["wait"] is True  # the input is left as it was


@pytest.mark.parametrize("version", [3, 99])
def test_a_record_of_a_newer_version_is_refused(version: int) -> None:
    document = JobRecord.first(SPEC, now=CREATED).model_dump(mode="json") | {"version": version}
    with pytest.raises(ValidationError, match=f"record version {version} was written by a newer trainctl"):
        JobRecord.model_validate(document)


# -- what the agent writes, read leniently ----------------------------------------------------------------------


def test_agent_status_parse_is_lenient_about_what_it_can_leave_out() -> None:
    got = AgentStatus.parse(
        {
            "job": "llm",
            "attempt": 2,
            "status": "failed",
            "exit_code": "3",
            "checkpoint_seq": True,
            "started_at": "yesterday",
            "ended_at": "2026-01-01T01:00:00+00:00",
            "written_by": "agent 9.9",  # a newer agent's key
        }
    )
    assert got is not None
    assert (got.attempt, got.status, got.final) == (2, "failed", True)
    assert (got.exit_code, got.checkpoint_seq, got.started_at) == (None, None, None)
    assert got.ended_at == datetime(2026, 1, 1, 1, tzinfo=UTC)
    assert AgentStatus.parse(got) is got
    assert AgentStatus.parse({"attempt": 1, "status": "running"}).final is False  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "document",
    [None, {}, {"status": "running"}, {"attempt": 1, "status": "gave-up"}, {"attempt": "x", "status": "running"}],
    ids=["none", "empty", "no-attempt", "not-an-agent-word", "bad-attempt"],
)
def test_agent_status_parse_gives_none_for_what_it_cannot_read(document: dict[str, Any] | None) -> None:
    assert AgentStatus.parse(document) is None


@pytest.mark.parametrize(
    ("field", "value"), [("max_hourly_cost", 0), ("max_hourly_cost", 5000), ("budget_usd", -1), ("cost_policy", "a b")]
)
def test_cost_fields_refuse_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidInputError) as exc:
        JobSpec.model_validate({**SPEC.model_dump(), field: value})
    assert exc.value.field == field
    ok = JobSpec.model_validate({**SPEC.model_dump(), "max_hourly_cost": 2.5, "budget_usd": 100, "cost_policy": "gpu"})
    assert (ok.max_hourly_cost, ok.budget_usd, ok.cost_policy) == (2.5, 100, "gpu")
