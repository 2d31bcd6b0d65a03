"""train-launch end to end in the sandbox: the real agent runs examples/train.py on a sandbox instance.

Few tests, each doing a lot: a flow call costs ~1 s, the rest is the trainer's own (short) steps.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from core import jobs
from core import tags as t
from core.ebs import VolumeSpec
from core.errors import InvalidInputError
from core.launch import JobSpec, TemplateSpec
from flows.train_launch import JobFailedError, LaunchFailedError, train_launch
from sandbox import Sandbox
from tasks.volumes import create_volume

pytestmark = pytest.mark.sandbox
BUCKET = "ml-jobs"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train.py"


def _code_dir(tmp_path: Path) -> str:
    code = tmp_path / "code"
    code.mkdir()
    shutil.copy(EXAMPLE, code / "train.py")
    (code / ".gitignore").write_text("checkpoints/\n*.bin\n")
    (code / "checkpoints").mkdir()
    (code / "checkpoints" / "old.bin").write_bytes(b"\0" * 1024)  # ignored: never shipped
    return str(code)


def _spec(code_dir: str, name: str = "demo", steps: int = 4, **fields: Any) -> JobSpec:
    base: dict[str, Any] = {
        "name": name,
        "bucket": BUCKET,
        "template": TemplateSpec(instance_type="t3.micro"),
        "code_dir": code_dir,
        "command": ["python3", "train.py", "--steps", str(steps), "--step-seconds", "0.2"],
        "sync_interval_s": 1,
        "wait": True,
    }
    return JobSpec(**{**base, **fields})


def _get_json(cloud: Sandbox, uri: str) -> Any:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return json.loads(cloud.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())


def _get_text(cloud: Sandbox, uri: str) -> str:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return str(cloud.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode())


def _final_state(cloud: Sandbox, name: str) -> dict[str, Any]:
    """state.json of the latest complete checkpoint in S3 (LATEST → manifest → file)."""
    ckpt = jobs.default_checkpoint_uri(BUCKET, name)
    latest = _get_json(cloud, ckpt + jobs.LATEST_NAME)
    manifest = _get_json(cloud, ckpt + latest["prefix"] + jobs.MANIFEST_NAME)
    assert {f["path"] for f in manifest["files"]} >= {"state.json", "weights.bin"}
    state: dict[str, Any] = _get_json(cloud, ckpt + latest["prefix"] + "state.json")
    return state


def _live_instances(cloud: Sandbox) -> list[str]:
    found = cloud.client("ec2").describe_instances(
        Filters=[
            {"Name": "tag:trainctl:managed", "Values": ["true"]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )["Reservations"]
    return [i["InstanceId"] for r in found for i in r["Instances"]]


def test_runs_to_completion_then_resumes_on_relaunch(cloud: Sandbox, tmp_path: Path) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    volume = create_volume.fn(VolumeSpec(name="demo-data", size_gib=10), availability_zone="us-east-1b")
    code = _code_dir(tmp_path)

    first = train_launch(_spec(code, data_volume_id=volume.id, mount_point="/data"))
    assert first.status == "succeeded" and first.exit_code == 0 and first.attempt == 1
    assert first.availability_zone == "us-east-1b"  # the instance followed the data volume
    assert first.capacity_type == "spot" and first.instance_terminated
    assert first.code_files == 2  # train.py and .gitignore; checkpoints/ is ignored
    log = _get_text(cloud, first.log_uri)
    assert "starting from scratch" in log and "done: 4 steps" in log
    assert _final_state(cloud, "demo")["step"] == 4
    record = _get_json(cloud, jobs.job_record_uri(BUCKET, "demo"))
    assert record["status"] == "succeeded" and record["capacity_type"] == "spot" and record["exit_code"] == 0
    data = cloud.client("ec2").describe_volumes(VolumeIds=[volume.id])["Volumes"][0]
    assert data["State"] == "available" and t.from_aws(data["Tags"])[t.PERSISTENT] == "true"  # kept, detached

    # The same job again, with more steps: attempt 2 resumes from step 4.
    second = train_launch(_spec(code, steps=6, data_volume_id=volume.id, mount_point="/data"))
    assert second.status == "succeeded" and second.attempt == 2
    log = _get_text(cloud, second.log_uri)
    assert "resuming from step 4" in log and "step 5/6" in log and "step 1/" not in log
    state = _final_state(cloud, "demo")
    assert state["step"] == 6 and state["resumed_from_step"] == 4
    assert _get_json(cloud, jobs.job_record_uri(BUCKET, "demo"))["attempt"] == 2
    assert _live_instances(cloud) == []


def test_failing_script_fails_the_flow_with_its_exit_code(cloud: Sandbox, tmp_path: Path) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    spec = _spec(_code_dir(tmp_path), name="fails", spot=False)
    spec.command += ["--fail-with", "3", "--fail-at", "2"]
    with pytest.raises(JobFailedError, match="exit code 3") as err:
        train_launch(spec)
    assert err.value.job_exit_code == 3
    record = _get_json(cloud, jobs.job_record_uri(BUCKET, "fails"))
    assert record["status"] == "failed" and record["exit_code"] == 3
    assert _live_instances(cloud) == []


def test_bad_input_is_refused_before_anything_is_launched(cloud: Sandbox, tmp_path: Path) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    code = _code_dir(tmp_path)
    volume = create_volume.fn(VolumeSpec(name="far", size_gib=10), availability_zone="us-east-1a")
    template = TemplateSpec(instance_type="t3.micro", availability_zone="us-east-1b")
    with pytest.raises(InvalidInputError, match="trainctl ebs move") as err:
        train_launch(_spec(code, name="far", template=template, data_volume_id=volume.id))
    assert err.value.field == "data_volume_id"
    with pytest.raises(InvalidInputError) as err:
        train_launch(_spec(str(tmp_path / "missing"), name="nocode"))
    assert err.value.field == "code_dir"
    with pytest.raises(InvalidInputError) as err:
        train_launch(_spec(code, name="badtype", template=TemplateSpec(instance_type="zz9.mega")))
    assert err.value.field == "instance_type"
    with pytest.raises(InvalidInputError) as err:
        train_launch(_spec(code, name="nobucket", bucket="no-such-bucket"))
    assert err.value.field == "bucket"
    assert _live_instances(cloud) == []


def test_failure_half_way_leaves_no_instance(cloud: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    volume = create_volume.fn(VolumeSpec(name="half", size_gib=10), availability_zone="us-east-1a")
    # The ship step fails on the instance (after launch, attach and mount succeeded).
    monkeypatch.setattr("flows.train_launch.ship_script", lambda job, staging: ["echo 'no space left' >&2", "exit 7"])
    with pytest.raises(LaunchFailedError) as err:
        train_launch(_spec(_code_dir(tmp_path), name="half", data_volume_id=volume.id))
    message = str(err.value)
    assert "step 'ship'" in message and "no space left" in message
    assert "terminated" in message and f"volume {volume.id} detached" in message
    assert _live_instances(cloud) == []
    data = cloud.client("ec2").describe_volumes(VolumeIds=[volume.id])["Volumes"][0]
    assert data["State"] == "available"  # the data volume is kept
    record = _get_json(cloud, jobs.job_record_uri(BUCKET, "half"))
    assert record["status"] == "failed" and "ship" in record["message"]


def test_spot_interruption_checkpoints_before_termination(cloud: Sandbox, tmp_path: Path) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    report = train_launch(_spec(_code_dir(tmp_path), name="spotty", steps=200, wait=False, sync_interval_s=30))
    assert report.status == "running" and report.capacity_type == "spot"
    root = Path(cloud.runtime.instance_root(report.instance_id))
    state_file = root / "var/lib/trainctl/jobs/spotty/checkpoints/state.json"
    assert cloud.wait_for(lambda: state_file.exists() and json.loads(state_file.read_text())["step"] >= 3, 30)

    notice_at = time.time()
    cloud.interrupt_spot(report.instance_id, delay_seconds=15)
    record_uri = jobs.interruption_uri(BUCKET, "spotty", report.instance_id)
    s3 = cloud.client("s3")

    def recorded() -> bool:
        try:
            s3.head_object(Bucket=BUCKET, Key=record_uri.split("/", 3)[3])
            return True
        except Exception:
            return False

    assert cloud.wait_for(recorded, 20, 0.2)
    record = _get_json(cloud, record_uri)
    state = _final_state(cloud, "spotty")
    sigterm_latency = state["sigterm_received_at"] - notice_at
    uploaded = datetime.fromisoformat(record["checkpoint_uploaded_at"]).timestamp()
    print(f"SIGTERM after {sigterm_latency:.2f} s; checkpoint verified {uploaded - notice_at:.2f} s after the notice")
    assert 0 <= sigterm_latency < 6
    assert record["verified"] is True and record["checkpoint_seq"] is not None
    assert uploaded < notice_at + 15  # in S3 and verified before the instance goes
    assert state["step"] >= 3 and state["sigterm_received_at"] is not None
    status = _get_json(cloud, jobs.status_uri(BUCKET, "spotty", 1))
    assert status["status"] == "interrupted"

    ec2 = cloud.client("ec2")

    def terminated() -> dict[str, Any] | None:
        data = ec2.describe_instances(InstanceIds=[report.instance_id])["Reservations"][0]["Instances"][0]
        return data if data["State"]["Name"] == "terminated" else None

    assert cloud.wait_for(lambda: terminated() is not None, 25, 0.5)
    assert time.time() - notice_at >= 14.5
    assert (terminated() or {}).get("StateReason", {}).get("Code") == "Server.SpotInstanceTermination"
