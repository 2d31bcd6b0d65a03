"""tasks/jobs.py, the one job store, against the sandbox's S3 (which honours conditional writes as S3 does): what
job.json holds after each write, a stale writer refused, and the record following the agent's final status."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from core import jobs
from core.jobs import AttemptRecord, JobRecord, JobStatus, StopReason
from sandbox import Sandbox
from tasks.jobs import (
    CheckpointStopReport,
    JobChangedError,
    _checkpoint_problem,
    checkpoint_then_stop,
    current_record,
    list_jobs,
    read_record,
    read_record_checked,
    update_attempt,
    write_record,
)
from tests.conftest import exported_sandbox

pytestmark = pytest.mark.sandbox
BUCKET = "store-jobs"


@pytest.fixture(scope="module")
def cloud() -> Iterator[Sandbox]:
    with exported_sandbox() as sandbox:
        sandbox.client("s3").create_bucket(Bucket=BUCKET)
        yield sandbox


def _stored(cloud: Sandbox, job: str) -> dict[str, Any]:
    key = jobs.job_record_uri(BUCKET, job).removeprefix(f"s3://{BUCKET}/")
    return dict(json.loads(cloud.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()))


def _record(job: str, attempt: int = 1, status: JobStatus = JobStatus.RUNNING) -> JobRecord:
    now = datetime.now(UTC)
    tried = [AttemptRecord(number=n, status=JobStatus.FAILED, created_at=now) for n in range(1, attempt)]
    current = AttemptRecord(number=attempt, status=status, created_at=now)
    return JobRecord(name=job, bucket=BUCKET, status=status, attempts=[*tried, current], created_at=now)


def test_writes_are_conditional_on_what_was_read(cloud: Sandbox) -> None:
    assert read_record.fn(BUCKET, "cond") == (None, None)
    first = write_record.fn(_record("cond"), expected_etag=None)  # claims the name
    with pytest.raises(JobChangedError, match="changed by another command at the same time"):
        write_record.fn(_record("cond", attempt=9), expected_etag=None)  # a second claim of the name
    record, etag = read_record.fn(BUCKET, "cond")
    assert record is not None and record.attempt == 1 and etag == first
    second = write_record.fn(_record("cond", attempt=2), expected_etag=etag)
    with pytest.raises(JobChangedError, match=f"trainctl train status cond --bucket {BUCKET}"):
        write_record.fn(_record("cond", attempt=3), expected_etag=first)  # stale: read before attempt 2
    assert _stored(cloud, "cond")["attempts"][-1]["number"] == 2 and read_record.fn(BUCKET, "cond")[1] == second


def test_a_record_it_cannot_parse_is_replaced_only_conditionally(cloud: Sandbox) -> None:
    key = jobs.job_record_uri(BUCKET, "foreign").removeprefix(f"s3://{BUCKET}/")
    cloud.client("s3").put_object(Bucket=BUCKET, Key=key, Body=b'{"made_by": "another tool"}')
    record, etag = read_record.fn(BUCKET, "foreign")
    assert record is None and etag is not None
    with pytest.raises(JobChangedError):
        write_record.fn(_record("foreign"), expected_etag=None)
    write_record.fn(_record("foreign"), expected_etag=etag)
    assert _stored(cloud, "foreign")["name"] == "foreign"


def test_the_record_follows_the_agents_final_status_when_saved(cloud: Sandbox) -> None:
    write_record.fn(_record("ended", attempt=2), expected_etag=None)
    status_key = jobs.status_uri(BUCKET, "ended", 2).removeprefix(f"s3://{BUCKET}/")
    agent = {"attempt": 2, "status": "failed", "exit_code": 3, "ended_at": "2026-01-01T00:00:00.000+00:00"}
    cloud.client("s3").put_object(Bucket=BUCKET, Key=status_key, Body=json.dumps(agent).encode())

    record, _, seen = current_record(BUCKET, "ended")  # a read: nothing written
    assert record is not None and record.status == JobStatus.FAILED and seen == agent
    assert _stored(cloud, "ended")["status"] == "running"
    current_record(BUCKET, "ended", save=True)
    stored = _stored(cloud, "ended")
    current = stored["attempts"][-1]
    assert (stored["status"], current["exit_code"], current["finished_at"]) == ("failed", 3, "2026-01-01T00:00:00Z")

    # update_attempt touches only the attempt it names: a later attempt owns the name.
    assert update_attempt(BUCKET, "ended", 1, {"status": JobStatus.STOPPED}) is None
    assert _stored(cloud, "ended")["status"] == "failed"
    update_attempt(BUCKET, "ended", 2, {"status": JobStatus.STOPPED, "exit_code": 143})
    stored = _stored(cloud, "ended")
    assert (stored["status"], stored["attempts"][-1]["exit_code"]) == ("stopped", 143)


def test_a_retried_write_whose_first_try_landed_is_no_conflict(cloud: Sandbox) -> None:
    """The answer to a conditional PUT is lost and the task retries it: the retry fails its own condition, but the
    stored record is byte for byte the one it writes, so the write succeeded; another writer's record still
    conflicts."""
    record = _record("lost-answer")
    first = write_record.fn(record, expected_etag=None)
    assert write_record.fn(record, expected_etag=None) == first  # the retry of a claim
    moved = _record("lost-answer", attempt=2)
    second = write_record.fn(moved, expected_etag=first)
    assert write_record.fn(moved, expected_etag=first) == second  # the retry of an update
    with pytest.raises(JobChangedError):
        write_record.fn(_record("lost-answer", attempt=3), expected_etag=first)  # someone else's: still refused
    assert _stored(cloud, "lost-answer")["attempts"][-1]["number"] == 2


def test_a_pass_learns_why_a_record_was_not_read_and_finds_every_job(cloud: Sandbox) -> None:
    s3 = cloud.client("s3")
    write_record.fn(_record("readable"), expected_etag=None)
    newer = {**_record("newer").model_dump(mode="json"), "version": 99}
    s3.put_object(Bucket=BUCKET, Key=f"{jobs.JOBS_ROOT}/newer/job.json", Body=json.dumps(newer).encode())
    s3.put_object(Bucket=BUCKET, Key=f"{jobs.JOBS_ROOT}/corrupt/job.json", Body=b'{"name": "corrupt", ')
    s3.put_object(Bucket=BUCKET, Key=f"{jobs.JOBS_ROOT}/no-record/staging/attempt-1/code.tar.gz", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key=f"{jobs.JOBS_ROOT}/Not_A_Job/job.json", Body=b"{}")

    assert {"readable", "newer", "corrupt", "no-record"} <= set(list_jobs.fn(BUCKET))
    assert "Not_A_Job" not in list_jobs.fn(BUCKET)
    record, etag, problem = read_record_checked.fn(BUCKET, "readable")
    assert record is not None and record.name == "readable" and etag and problem is None
    record, etag, problem = read_record_checked.fn(BUCKET, "newer")
    assert record is None and etag and problem is not None and "newer trainctl" in problem
    record, etag, problem = read_record_checked.fn(BUCKET, "corrupt")
    assert record is None and etag and problem is not None and problem.startswith("not JSON")
    assert read_record_checked.fn(BUCKET, "no-record") == (None, None, None)
    # read_record itself still answers as before: no record, but the ETag for a conditional replacement.
    assert read_record.fn(BUCKET, "newer")[0] is None and read_record.fn(BUCKET, "newer")[1]


def test_the_latest_checkpoint_is_the_newest_complete_one(cloud: Sandbox) -> None:
    from tasks.checkpoints import latest_checkpoint

    s3 = cloud.client("s3")
    uri = jobs.default_checkpoint_uri(BUCKET, "ckpts")
    prefix = uri.removeprefix(f"s3://{BUCKET}/")
    assert latest_checkpoint.fn(uri) is None
    for seq, complete in ((1, True), (2, True), (3, False)):  # 3 is being uploaded: no manifest yet
        folder = prefix + jobs.checkpoint_folder(seq)
        s3.put_object(Bucket=BUCKET, Key=folder + "state.json", Body=b"{}")
        if complete:
            s3.put_object(Bucket=BUCKET, Key=folder + jobs.MANIFEST_NAME, Body=b"{}")
    latest = latest_checkpoint.fn(uri)
    assert latest is not None and latest.seq == 2 and latest.prefix == prefix + "ckpt-000002/"


# -- checkpoint_then_stop without instances (with the real agent: tests/flows/test_cost_actions.py) -----------


def _put(cloud: Sandbox, uri: str, body: Any) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    cloud.client("s3").put_object(Bucket=BUCKET, Key=uri.removeprefix(f"s3://{BUCKET}/"), Body=data)


def _checkpoint(cloud: Sandbox, job: str, seq: int, *, manifest: Any = "auto", latest: int | None = None) -> str:
    """ckpt-<seq>/ with weights.bin (4 bytes) and its manifest (or `manifest` as given, None: none), and LATEST."""
    uri = jobs.default_checkpoint_uri(BUCKET, job)
    folder = uri + jobs.checkpoint_folder(seq)
    _put(cloud, folder + "weights.bin", b"0123")
    if manifest == "auto":
        manifest = {"seq": seq, "files": [{"path": "weights.bin", "size": 4, "sha256": "x"}]}
    if manifest is not None:
        _put(cloud, folder + jobs.MANIFEST_NAME, manifest)
    _put(
        cloud, uri + jobs.LATEST_NAME, {"seq": seq if latest is None else latest, "prefix": jobs.checkpoint_folder(seq)}
    )
    return uri


@pytest.mark.parametrize(
    ("manifest", "latest", "says"),
    [
        pytest.param("auto", None, None, id="verified"),
        pytest.param(None, None, "MANIFEST.json is missing or malformed", id="no-manifest"),
        pytest.param({"files": "weights.bin"}, None, "missing or malformed", id="malformed-manifest"),
        pytest.param(
            {"files": [{"path": "weights.bin", "size": 5}]}, None, "weights.bin: 4 bytes in S3, 5 in", id="size"
        ),
        pytest.param({"files": [{"path": "optim.bin", "size": 1}]}, None, "optim.bin: None bytes", id="file-missing"),
        pytest.param("auto", 4, "LATEST.json names 4, not 3", id="not-the-latest"),
    ],
)
def test_a_checkpoint_is_verified_as_the_agent_verifies_it(
    cloud: Sandbox, request: pytest.FixtureRequest, manifest: Any, latest: int | None, says: str | None
) -> None:
    job = f"verify-{request.node.callspec.id}"
    uri = _checkpoint(cloud, job, 3, manifest=manifest, latest=latest)
    report = CheckpointStopReport(job=job, attempt=1, reason=StopReason.BUDGET, outcome="stopped", status="stopped")
    problem = _checkpoint_problem(report, uri, 3, None)
    assert report.checkpoint_uri == f"{uri}ckpt-000003/"
    if says is None:
        assert problem is None and report.checkpoint_written_at is not None
    else:
        assert problem is not None and says in problem and report.checkpoint_written_at is None


def test_an_attempt_without_an_instance_is_recorded_stopped_with_its_reason_at_once(cloud: Sandbox) -> None:
    now = datetime.now(UTC)
    record = JobRecord(
        name="no-instance",
        bucket=BUCKET,
        status=JobStatus.RUNNING,
        attempts=[AttemptRecord(number=1, status=JobStatus.RUNNING, created_at=now, instance_id="i-0123456789abcdef0")],
        created_at=now,
    )
    write_record.fn(record, expected_etag=None)
    report = checkpoint_then_stop.fn(BUCKET, "no-instance", StopReason.IDLE_GPU, verify_timeout_s=120)
    assert (report.outcome, report.instance_ended, report.checkpoint_verified) == ("stopped", False, False)
    stored, _ = read_record.fn(BUCKET, "no-instance")
    assert stored is not None and (stored.status, stored.current.stop_reason) == ("stopped", StopReason.IDLE_GPU)
    assert stored.current.message == (
        "stopped by cost-watch (idle-gpu): no checkpoint verified: the agent reported no checkpoint of attempt 1; "
        "no instance of this attempt was running"
    )
    again = checkpoint_then_stop.fn(BUCKET, "no-instance", StopReason.BUDGET)
    assert again.outcome == "already-ended" and read_record.fn(BUCKET, "no-instance")[0] == stored
