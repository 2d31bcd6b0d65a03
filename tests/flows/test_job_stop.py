"""One stop of a job, through its agent (tasks/jobs.py stop_job, `trainctl train stop`, teardown), in the sandbox:
the real agent runs examples/train.py; every outcome is read back from S3 and EC2."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from core import jobs
from core import tags as t
from core.ebs import VolumeSpec
from core.jobs import AttemptRecord, JobRecord, JobStatus
from core.launch import launch_key
from flows.teardown import TeardownRequest, safe_teardown
from flows.train_launch import train_launch
from sandbox import Sandbox
from tasks.ebs import create_volume
from tasks.ec2_instances import LaunchRequest, launch_instance
from tasks.jobs import write_record
from tests.flows.conftest import record_events
from tests.flows.test_train_launch import BUCKET, _code_dir, _final_state, _get_json, _spec

pytestmark = pytest.mark.sandbox


def _state(cloud: Sandbox, instance_id: str) -> str:
    found = cloud.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return str(found["State"]["Name"])


def _launch_long(cloud: Sandbox, code: str, name: str, **fields: Any) -> Any:
    """A job that would run for minutes, launched without waiting; returns once it has trained a few steps."""
    report = train_launch(_spec(code, name=name, steps=10_000, sync_interval_s=300, **fields))
    root = Path(cloud.runtime.instance_root(report.instance_id))
    state = root / jobs.instance_job_dir(name).lstrip("/") / jobs.CHECKPOINT_DIR / "state.json"
    assert cloud.wait_for(lambda: state.exists() and json.loads(state.read_text())["step"] >= 2, 30, 0.2)
    return report


def _stop(name: str, *options: str) -> str:
    result = CliRunner().invoke(app, ["train", "stop", name, "--bucket", BUCKET, "--grace", "10", *options])
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def _related(event: dict[str, Any]) -> set[tuple[str, str]]:
    return {(r["prefect.resource.role"], r["prefect.resource.id"]) for r in event["related"]}


def test_train_stop_checkpoints_records_stopped_and_ends_the_instance(
    cloud: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = record_events(monkeypatch)
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    volume = create_volume.fn(VolumeSpec(name="stop-data", size_gib=10), availability_zone="us-east-1a")
    code = _code_dir(tmp_path)
    ended = _launch_long(cloud, code, "stop-me", data_volume_id=volume.id)
    kept = _launch_long(cloud, code, "stop-kept")

    # While it runs, `train logs` reads the log from the instance through the agent's poll.
    shown = CliRunner().invoke(app, ["train", "logs", "stop-kept", "--bucket", BUCKET, "--json"])
    assert shown.exit_code == 0, shown.output
    live = json.loads(shown.stdout)
    assert live["live"] is True and "step 2/10000" in live["log"]

    assert "stopped stop-me attempt 1" in _stop("stop-me")
    assert "stopped stop-kept attempt 1" in _stop("stop-kept", "--keep-instance")

    for name, action in (("stop-me", "shutdown"), ("stop-kept", "keep")):
        status = _get_json(cloud, jobs.status_uri(BUCKET, name, 1))
        assert (status["status"], status["instance_action"]) == ("stopped", action)
        record = JobRecord.model_validate(_get_json(cloud, jobs.job_record_uri(BUCKET, name)))
        assert (record.status, record.attempt) == ("stopped", 1) and record.finished_at
        state = _final_state(cloud, name)  # the trainer saved on the stop's SIGTERM, and that checkpoint is in S3
        assert state["sigterm_received_at"] is not None and state["step"] >= 2
    assert cloud.wait_for(lambda: _state(cloud, ended.instance_id) == "terminated", 30, 0.5)
    data = cloud.client("ec2").describe_volumes(VolumeIds=[volume.id])["Volumes"][0]
    assert data["State"] == "available" and t.from_aws(data["Tags"])[t.PERSISTENT] == "true"
    assert _state(cloud, kept.instance_id) == "running"
    # Stopping it again changes nothing and says so.
    before = _get_json(cloud, jobs.job_record_uri(BUCKET, "stop-me"))
    assert "already ended (stopped): nothing to stop" in _stop("stop-me")
    assert _get_json(cloud, jobs.job_record_uri(BUCKET, "stop-me")) == before
    # The job's life as events: launched, then stopped once (the second stop changed nothing, so said nothing).
    told = [(e["event"], e["resource"]["prefect.resource.id"]) for e in events]
    assert told == [
        ("trainctl.job.launched", "trainctl.job.stop-me"),
        ("trainctl.job.launched", "trainctl.job.stop-kept"),
        ("trainctl.job.stopped", "trainctl.job.stop-me"),
        ("trainctl.job.stopped", "trainctl.job.stop-kept"),
    ]
    launched, stopped = events[0], events[2]
    assert _related(launched) == {
        ("instance", f"aws.ec2.instance.{ended.instance_id}"),
        ("volume", f"aws.ec2.volume.{volume.id}"),
        ("bucket", f"aws.s3.bucket.{BUCKET}"),
    }
    assert ("instance", f"aws.ec2.instance.{ended.instance_id}") in _related(stopped)
    assert stopped["payload"]["by"] == "trainctl job stop" and stopped["payload"]["attempt"] == 1


def _killed_launch(name: str, *, recorded_instance: bool) -> str:
    """What a `train launch` killed (kill -9) after RunInstances and before its ship step leaves: the attempt's
    instance (launched with the attempt's key) and a PENDING record, with or without the instance's ID."""
    instance = launch_instance.fn(
        LaunchRequest(
            name=f"trainctl-{name}",
            role=t.Role.TRAIN,
            idempotency_key=launch_key(name, 1),
            attempt=1,
            job=name,
            instance_type="t3.micro",
            availability_zone="us-east-1a",
            shutdown_behavior="terminate",
        )
    )
    now = datetime.now(UTC)
    attempt = AttemptRecord(number=1, instance_id=instance.id if recorded_instance else None, created_at=now)
    record = JobRecord(name=name, bucket=BUCKET, status=JobStatus.PENDING, attempts=[attempt], created_at=now)
    write_record.fn(record, expected_etag=None)
    return instance.id


def test_train_stop_after_a_launch_killed_before_the_ship_step_ends_its_instance(cloud: Sandbox) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    unrecorded = _killed_launch("killed-early", recorded_instance=False)
    recorded = _killed_launch("killed-late", recorded_instance=True)
    for name, instance_id in (("killed-early", unrecorded), ("killed-late", recorded)):
        said = _stop(name)
        assert f"stopped {name} attempt 1" in said and f"{instance_id} terminated" in said
        assert _state(cloud, instance_id) in {"shutting-down", "terminated"}
        record = JobRecord.model_validate(_get_json(cloud, jobs.job_record_uri(BUCKET, name)))
        assert (record.status, record.attempt) == ("stopped", 1)


def test_teardown_stops_a_job_through_its_agent(
    cloud: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    report = _launch_long(cloud, _code_dir(tmp_path), "torn")
    events = record_events(monkeypatch)
    planned = safe_teardown(TeardownRequest(job="torn", bucket=BUCKET, force=True, force_training=True))
    assert planned.plan.operations and events == []  # a dry run tells nothing happened, since nothing did
    done = safe_teardown(TeardownRequest(job="torn", bucket=BUCKET, dry_run=False, force=True, force_training=True))
    assert not done.failed, done.failed
    status = _get_json(cloud, jobs.status_uri(BUCKET, "torn", 1))
    assert status["status"] == "stopped"  # not `failed`: the agent stopped it, and knew it
    state = _final_state(cloud, "torn")
    assert state["sigterm_received_at"] is not None and state["step"] >= 2  # saved on the stop
    assert _get_json(cloud, jobs.job_record_uri(BUCKET, "torn"))["status"] == "stopped"
    assert _state(cloud, report.instance_id) == "terminated"
    [torn] = [e for e in events if e["event"] == "trainctl.job.torn-down"]
    assert torn["resource"]["prefect.resource.id"] == "trainctl.job.torn"
    assert ("instance", f"aws.ec2.instance.{report.instance_id}") in _related(torn)
    assert report.instance_id in torn["payload"]["deleted"] and torn["payload"]["failed"] == []
