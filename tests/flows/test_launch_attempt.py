"""launch_attempt in the sandbox: a killed run continued, an earlier attempt's code reused, the overlap with an
instance serving its spot notice, and a capacity refusal recorded. The trainer is examples/train.py."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from core import jobs
from core import tags as t
from core.ebs import VolumeSpec
from core.errors import CapacityRefusedError
from core.jobs import AgentStatus, AttemptRecord, JobRecord, JobSpec, JobStatus, ResumePolicy, TemplateSpec
from core.launch import AGENT_TARBALL, CODE_TARBALL
from flows.launch_attempt import AttemptRequest, launch_attempt
from flows.train_launch import train_launch
from sandbox import Sandbox
from tasks.code import package_agent, package_code
from tasks.ebs import create_volume
from tasks.jobs import read_record, write_record
from tasks.s3 import upload_file
from tests.flows.test_train_launch import BUCKET, _code_dir, _get_json, _job_record, _live_instances, _spec

pytestmark = pytest.mark.sandbox


class Killed(BaseException):
    """Stands for kill -9 of the launching process: no cleanup runs."""


def _claim_first(spec: JobSpec, tmp_path: Path) -> None:
    """What train-launch does before the subflow: attempt 1 claimed in job.json, code and agent staged."""
    write_record.fn(JobRecord.first(spec, now=datetime.now(UTC)), expected_etag=None)
    staging = jobs.staging_prefix(BUCKET, spec.name, 1)
    code = package_code(spec.code_dir, str(tmp_path / CODE_TARBALL), limit_bytes=spec.code_limit_bytes)
    upload_file.fn(code.path, staging + CODE_TARBALL)
    upload_file.fn(package_agent(str(tmp_path / AGENT_TARBALL)).path, staging + AGENT_TARBALL)


def _job_instances(cloud: Sandbox, job: str) -> list[str]:
    found = cloud.client("ec2").describe_instances(
        Filters=[
            {"Name": f"tag:{t.JOB}", "Values": [job]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )["Reservations"]
    return [i["InstanceId"] for r in found for i in r["Instances"]]


def _agent_status(cloud: Sandbox, job: str, attempt: int) -> AgentStatus:
    status = AgentStatus.parse(_get_json(cloud, jobs.status_uri(BUCKET, job, attempt)))
    assert status is not None
    return status


def test_a_rerun_after_a_kill_continues_with_the_one_instance(
    cloud: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    spec = _spec(_code_dir(tmp_path), name="killed", steps=3)
    _claim_first(spec, tmp_path)
    from flows import launch_attempt as module

    real_wait_online = module.wait_online
    kills = [Killed("kill -9 after RunInstances")]

    def killed_once(*args: Any, **kwargs: Any) -> None:
        if kills:
            raise kills.pop()
        real_wait_online(*args, **kwargs)

    monkeypatch.setattr(module, "wait_online", killed_once)
    request = AttemptRequest(spec=spec, attempt=1, capacity="spot")
    with pytest.raises(Killed):
        launch_attempt(request)
    [first] = _job_instances(cloud, "killed")
    record = _job_record(cloud, "killed")
    assert (record.status, record.instance_id, record.current.tries) == (JobStatus.PENDING, first, 1)

    report = launch_attempt(request)
    assert report.instance_id == first and _job_instances(cloud, "killed") in ([first], [])
    record = _job_record(cloud, "killed")
    assert record.attempt == 1 and record.instance_id == first and record.current.tries == 2
    assert record.status in {JobStatus.RUNNING, JobStatus.SUCCEEDED}  # the agent may already have ended it
    tags = cloud.client("ec2").describe_instances(InstanceIds=[first])["Reservations"][0]["Instances"][0]["Tags"]
    assert t.from_aws(tags)[t.BUCKET] == BUCKET
    assert cloud.wait_for(lambda: _live_instances(cloud) == [], 30, 0.5)  # the trainer ran and the job ended
    assert _agent_status(cloud, "killed", 1).status == "succeeded"


def test_a_resume_reuses_the_code_and_starts_only_once_the_old_attempt_let_go(cloud: Sandbox, tmp_path: Path) -> None:
    """Attempt 2 is launched while attempt 1 serves its spot notice (spot-watch's overlap), without a code folder:
    its agent starts only after the old instance went, the volume came free and the old agent's status was final."""
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    volume = create_volume.fn(VolumeSpec(name="overlap-data", size_gib=10), availability_zone="us-east-1a")
    spec = _spec(_code_dir(tmp_path), name="overlap", steps=200, data_volume_id=volume.id)
    first = train_launch(spec)
    root = Path(cloud.runtime.instance_root(first.instance_id))
    state_file = root / "var/lib/trainctl/jobs/overlap/checkpoints/state.json"
    assert cloud.wait_for(lambda: state_file.exists() and json.loads(state_file.read_text())["step"] >= 3, 30)

    notice_at = time.time()
    cloud.interrupt_spot(first.instance_id, delay_seconds=8)
    stored, etag = read_record.fn(BUCKET, "overlap")
    assert stored is not None
    now = datetime.now(UTC)
    claimed = stored.with_status(JobStatus.INTERRUPTED).with_new_attempt(
        AttemptRecord(number=2, volume_id=volume.id, launched_by="spot-watch", created_at=now), JobStatus.RESUMING
    )
    write_record.fn(claimed, expected_etag=etag)
    request = AttemptRequest(
        spec=spec.model_copy(update={"code_dir": str(tmp_path / "gone")}),
        attempt=2,
        capacity="spot",
        volume_id=volume.id,
        code_from=jobs.staging_prefix(BUCKET, "overlap", 1),
        after_instance=first.instance_id,
        launched_by="spot-watch",
    )
    second = launch_attempt(request)

    assert second.instance_id != first.instance_id and second.volume_id == volume.id
    assert _job_instances(cloud, "overlap") == [second.instance_id]
    old, new = _agent_status(cloud, "overlap", 1), _agent_status(cloud, "overlap", 2)
    assert old.status == "interrupted" and old.ended_at is not None and new.started_at is not None
    assert new.started_at >= old.ended_at  # never two trainers on one checkpoint prefix
    assert new.started_at.timestamp() >= notice_at + 7.5  # nor on one volume: the old instance was gone
    data = cloud.client("ec2").describe_volumes(VolumeIds=[volume.id])["Volumes"][0]
    assert [a["InstanceId"] for a in data["Attachments"]] == [second.instance_id]
    new_state = Path(cloud.runtime.instance_root(second.instance_id)) / "var/lib/trainctl/jobs/overlap/checkpoints"
    assert cloud.wait_for(lambda: (new_state / "state.json").exists(), 30, 0.5)
    assert json.loads((new_state / "state.json").read_text())["resumed_from_step"] >= 3  # the shipped code runs
    record = _job_record(cloud, "overlap")
    assert (record.status, record.attempt, record.instance_id) == (JobStatus.RUNNING, 2, second.instance_id)
    assert record.current.launched_by == "spot-watch" and record.attempts[0].instance_id == first.instance_id


def test_a_capacity_refusal_is_recorded_then_train_launch_falls_back_to_on_demand(
    cloud: Sandbox, tmp_path: Path
) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    cloud.set_capacity("us-east-1a", "t3.micro", available=False)
    spec = _spec(_code_dir(tmp_path), name="nocap", steps=2)
    _claim_first(spec, tmp_path)
    with pytest.raises(CapacityRefusedError) as err:
        launch_attempt(AttemptRequest(spec=spec, attempt=1, capacity="spot", zone="us-east-1a"))
    assert (err.value.code, err.value.availability_zone) == ("InsufficientInstanceCapacity", "us-east-1a")
    record = _job_record(cloud, "nocap")
    assert record.status == JobStatus.PENDING and record.instance_id is None
    assert record.current.capacity_refused_at is not None and record.current.tries == 1
    assert record.current.last_try_at is not None and record.availability_zone == "us-east-1a"
    assert _job_instances(cloud, "nocap") == []

    # Spot refused for its price; the policy allows on-demand: train-launch asks core.recovery and launches that.
    (tmp_path / "b").mkdir()
    cheap = _spec(
        _code_dir(tmp_path / "b"),
        name="cheap",
        steps=2,
        max_price="0.0001",
        template=TemplateSpec(instance_type="t3.micro", availability_zone="us-east-1b"),
        resume=ResumePolicy(on_demand_fallback=True),
    )
    report = train_launch(cheap)
    assert report.capacity_type == "on-demand" and _job_instances(cloud, "cheap") in ([report.instance_id], [])
    current = _job_record(cloud, "cheap").current
    assert current.capacity_type == "on-demand" and current.capacity_refused_at is not None and current.tries == 2
