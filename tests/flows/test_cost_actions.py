"""cost-watch's actions in the sandbox (issue 16): GPUs sampled over SSM with one command for every instance, the
idle one stopped, and a job over budget stopped with its checkpoint verified in S3 before its instance ends. The
real agent runs examples/train.py on g5 instances whose fake nvidia-smi reports what the test sets; every outcome is
read back from EC2 and S3."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import tasks.jobs as jobs_module
from core import jobs
from core.errors import AwsError
from core.idle import IdleHistory, idle_verdicts, merge_history
from core.jobs import JobRecord, JobSpec, StopReason, TemplateSpec
from flows.spot_watch import SpotWatchRequest, spot_watch
from flows.train_launch import train_launch
from sandbox import Sandbox
from tasks.gpu import sample_gpus
from tasks.jobs import checkpoint_then_stop
from tests.flows.test_train_launch import _code_dir, _get_json

pytestmark = pytest.mark.sandbox
BUCKET = "cost-jobs"
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)  # the passes' clock: a pass every 15 minutes
UNKNOWN = "i-0123456789abcdef0"


def _launch(cloud: Sandbox, code: str, name: str, command: list[str], ready: str | None) -> str:
    """A job on a g5.xlarge (one A10G), launched without waiting; returns its instance once its trainer runs (and
    has printed `ready`)."""
    spec = JobSpec(
        name=name,
        bucket=BUCKET,
        template=TemplateSpec(instance_type="g5.xlarge"),
        code_dir=code,
        command=command,
        sync_interval_s=300,  # the only checkpoint uploaded in these tests is the one the stop makes
    )
    instance_id = str(train_launch(spec).instance_id)
    folder = Path(cloud.runtime.instance_root(instance_id)) / jobs.instance_job_dir(name).lstrip("/")
    log = folder / jobs.LOG_FILE
    assert cloud.wait_for(lambda: (folder / jobs.PID_FILE).exists() and (ready is None or ready in _text(log)), 30)
    return instance_id


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _trainer(steps: int, step_seconds: float) -> list[str]:
    return ["python3", "train.py", "--steps", str(steps), "--step-seconds", str(step_seconds)]


def _instance(cloud: Sandbox, instance_id: str) -> dict[str, Any]:
    found = cloud.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"]
    return dict(found[0]["Instances"][0])


def _terminated_at(cloud: Sandbox, instance_id: str) -> datetime:
    """When EC2 terminated it, from its StateTransitionReason (`User initiated (2026-05-01 12:00:00 UTC)`)."""
    found = _instance(cloud, instance_id)
    assert found["State"]["Name"] == "terminated"
    stamp = re.search(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", found["StateTransitionReason"])
    assert stamp, found["StateTransitionReason"]
    return datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def _bare(cloud: Sandbox, instance_type: str) -> str:
    """An instance without a job (no agent, no job folder)."""
    found = cloud.client("ec2").run_instances(
        ImageId="ami-12c6146b", InstanceType=instance_type, MinCount=1, MaxCount=1
    )
    return str(found["Instances"][0]["InstanceId"])


def _online(cloud: Sandbox, instance_id: str) -> bool:
    found = cloud.client("ssm").describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": [instance_id]}]
    )["InstanceInformationList"]
    return any(i["PingStatus"] == "Online" for i in found)


def _record(cloud: Sandbox, name: str) -> JobRecord:
    return JobRecord.model_validate(_get_json(cloud, jobs.job_record_uri(BUCKET, name)))


def _final_checkpoint(cloud: Sandbox, name: str) -> tuple[int, dict[str, Any], datetime]:
    """The job's latest checkpoint in S3: its seq, its state.json and its manifest's LastModified."""
    ckpt = jobs.default_checkpoint_uri(BUCKET, name)
    latest = _get_json(cloud, ckpt + jobs.LATEST_NAME)
    key = ckpt[len(f"s3://{BUCKET}/") :] + latest["prefix"] + jobs.MANIFEST_NAME
    written = cloud.client("s3").head_object(Bucket=BUCKET, Key=key)["LastModified"]
    return int(latest["seq"]), _get_json(cloud, ckpt + latest["prefix"] + "state.json"), written


# make test walks the idle stop through the flow (tests/flows/test_cost_watch.py); this one's extra cases (a GPU
# idle while its trainer steps, no GPU, an unknown instance) run in make test-exhaustive.
@pytest.mark.exhaustive
def test_the_idle_gpu_is_found_over_ssm_and_stopped_with_its_checkpoint_busy_or_training_ones_are_not(
    cloud: Sandbox, tmp_path: Path
) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    code = _code_dir(tmp_path)
    # Stuck in its first step (a hung data loader): prints nothing more. The other prints a step every 0.1 s.
    stuck = _launch(cloud, code, "stuck", _trainer(10, 3600), "starting from scratch")
    training = _launch(cloud, code, "training", _trainer(100_000, 0.1), "step 2/")
    busy, cpu_only = (_bare(cloud, instance_type) for instance_type in ("g5.xlarge", "t3.micro"))
    cloud.set_gpu_utilization(stuck, 3)
    cloud.set_gpu_utilization(busy, 95)
    cloud.set_gpu_utilization(training, 2)  # idle GPU, but its step counter moves: never stopped
    with pytest.raises(ValueError, match="has no GPU"):
        cloud.set_gpu_utilization(cpu_only, 50)
    assert cloud.wait_for(lambda: _online(cloud, busy) and _online(cloud, cpu_only), 10)

    # Three passes, 15 minutes apart on the passes' clock; each one SSM command for all the instances.
    asked = [stuck, busy, training, cpu_only, UNKNOWN]
    history = IdleHistory()
    for k in range(3):
        readings = sample_gpus.fn(asked)
        assert [r.instance_id for r in readings] == asked
        now = T0 + k * timedelta(minutes=15)
        history = merge_history(
            history, [r.model_copy(update={"at": now}) for r in readings], now=now, window=timedelta(minutes=30)
        )
        time.sleep(0.2)  # the training job prints a few steps meanwhile
    states = {r.instance_id: (r.state, [g.utilization for g in r.gpus]) for r in readings}
    assert states == {
        stuck: ("ok", [3]),
        busy: ("ok", [95]),
        training: ("ok", [2]),
        cpu_only: ("no-gpu", []),
        UNKNOWN: ("no-answer", []),
    }
    pages = cloud.client("ssm").get_paginator("list_commands").paginate()
    sent = [c["InstanceIds"] for page in pages for c in page["Commands"] if c["Comment"].startswith("trainctl: GPU")]
    assert sent == [asked[:4]] * 3  # the instances Online in SSM, all in one command per pass

    verdicts = {
        v.instance_id: v for v in idle_verdicts(history, now=T0 + timedelta(minutes=30), below_percent=10, minutes=30)
    }
    assert [i for i, v in verdicts.items() if v.idle] == [stuck] and verdicts[stuck].jobs == ["stuck"]
    assert "a GPU at 95 %" in verdicts[busy].reason
    assert "training still moves (training)" in verdicts[training].reason
    assert "no GPU reading" in verdicts[cpu_only].reason and "no GPU reading" in verdicts[UNKNOWN].reason

    report = checkpoint_then_stop.fn(BUCKET, "stuck", StopReason.IDLE_GPU, grace_s=10)
    assert report.checkpoint_verified, report.detail
    record = _record(cloud, "stuck")
    assert (record.status, record.current.stop_reason) == ("stopped", StopReason.IDLE_GPU)
    assert "verified in S3" in (record.current.message or "")
    seq, state, written = _final_checkpoint(cloud, "stuck")
    assert seq == report.checkpoint_seq and state["sigterm_received_at"] is not None  # saved on the stop
    assert written.replace(microsecond=0) <= _terminated_at(cloud, stuck)
    assert [_instance(cloud, i)["State"]["Name"] for i in (busy, training)] == ["running", "running"]
    assert _record(cloud, "training").status == "running"


def test_over_budget_the_checkpoint_is_verified_before_the_instance_ends_and_spot_watch_leaves_it_stopped(
    cloud: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    code = _code_dir(tmp_path)
    costly = _launch(cloud, code, "costly", _trainer(100_000, 0.1), "step 2/")
    # A trainer that never writes a checkpoint: nothing to verify, and its instance ends all the same.
    silent = _launch(cloud, code, "silent", ["sleep", "3600"], None)

    # The stop's answer is lost (the SSM call fails after the agent acted): the agent's status in S3 names the
    # checkpoint to verify.
    def answer_lost(*args: Any, **kwargs: Any) -> Any:
        answer = real_stop(*args, **kwargs)
        raise AwsError("ssm:GetCommandInvocation", "InternalServerError", f"lost {answer.status}")

    real_stop = jobs_module.stop_agent
    monkeypatch.setattr(jobs_module, "stop_agent", answer_lost)
    report = checkpoint_then_stop.fn(BUCKET, "costly", StopReason.BUDGET, grace_s=10)
    monkeypatch.undo()
    assert "the agent's answer to the stop was lost" in report.detail
    seq, state, written = _final_checkpoint(cloud, "costly")
    assert report.checkpoint_verified and report.checkpoint_seq == seq, report.detail
    # In order: the stop asked, the trainer saved on its SIGTERM, the checkpoint verified in S3, the instance
    # terminated, the job recorded stopped (S3 and EC2 keep seconds: their times may be equal).
    assert report.stop_requested_at is not None and report.instance_ended_at is not None
    assert report.stop_requested_at.timestamp() <= state["sigterm_received_at"] <= state["saved_at"]
    assert report.stop_requested_at.replace(microsecond=0) <= written <= _terminated_at(cloud, costly)
    assert report.checkpoint_verified_at is not None and report.checkpoint_verified_at < report.instance_ended_at
    record = _record(cloud, "costly")
    assert (record.status, record.current.stop_reason, record.attempt) == ("stopped", StopReason.BUDGET, 1)
    assert record.finished_at is not None and report.instance_ended_at <= record.finished_at
    assert state["step"] >= 2

    started = time.monotonic()
    unverified = checkpoint_then_stop.fn(BUCKET, "silent", StopReason.BUDGET, grace_s=5, verify_timeout_s=120)
    assert not unverified.checkpoint_verified and time.monotonic() - started < 60  # nothing to wait for
    message = _record(cloud, "silent").current.message or ""
    assert "no checkpoint verified: the agent reported no checkpoint of attempt 1" in message
    assert _instance(cloud, silent)["State"]["Name"] == "terminated"
    assert _record(cloud, "silent").current.stop_reason == StopReason.BUDGET

    spot_watch(SpotWatchRequest(buckets=[BUCKET]))
    for name, instance_id in (("costly", costly), ("silent", silent)):
        after = _record(cloud, name)
        assert (after.status, after.attempt, len(after.attempts)) == ("stopped", 1, 1)
        assert after.current.stop_reason == StopReason.BUDGET
        assert _instance(cloud, instance_id)["State"]["Name"] == "terminated"
    live = cloud.client("ec2").describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )["Reservations"]
    assert live == []
    assert _final_checkpoint(cloud, "costly")[0] == seq  # still there, unchanged
