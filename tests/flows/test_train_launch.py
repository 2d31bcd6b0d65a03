"""train-launch end to end in the sandbox: the real agent runs examples/train.py on a sandbox instance.

Few tests, each doing a lot: a flow call costs ~1 s, the rest is the trainer's own (short) steps.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from blocks.policies import CostPolicy
from core import jobs
from core import tags as t
from core.ebs import VolumeSpec
from core.errors import InvalidInputError
from core.jobs import JobRecord, JobSpec, TemplateSpec
from core.launch import LaunchOptions
from flows.train_launch import JobFailedError, train_launch
from sandbox import Sandbox
from tasks.ebs import create_volume

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
    }
    return JobSpec(**{**base, **fields})


def _get_json(cloud: Sandbox, uri: str) -> Any:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return json.loads(cloud.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())


def _job_record(cloud: Sandbox, name: str) -> JobRecord:
    return JobRecord.model_validate(_get_json(cloud, jobs.job_record_uri(BUCKET, name)))


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

    first = train_launch(_spec(code, data_volume_id=volume.id, mount_point="/data"), LaunchOptions(wait=True))
    assert first.status == "succeeded" and first.exit_code == 0 and first.attempt == 1
    assert first.availability_zone == "us-east-1b"  # the instance followed the data volume
    assert first.capacity_type == "spot" and first.instance_terminated
    assert first.code_files == 2  # train.py and .gitignore; checkpoints/ is ignored
    # The hourly price it pays is shown: spot's current price in its AZ, from the sandbox's EC2 API.
    assert first.hourly_usd == cloud.ec2.spot_price("us-east-1b", "t3.micro") and first.price_source == "api"
    log = _get_text(cloud, first.log_uri)
    assert "starting from scratch" in log and "done: 4 steps" in log
    assert _final_state(cloud, "demo")["step"] == 4
    record = _job_record(cloud, "demo")
    assert record.status == "succeeded" and record.capacity_type == "spot" and record.exit_code == 0
    data = cloud.client("ec2").describe_volumes(VolumeIds=[volume.id])["Volumes"][0]
    assert data["State"] == "available" and t.from_aws(data["Tags"])[t.PERSISTENT] == "true"  # kept, detached

    # The same job again, with more steps: attempt 2 resumes from step 4.
    second = train_launch(_spec(code, steps=6, data_volume_id=volume.id, mount_point="/data"), LaunchOptions(wait=True))
    assert second.status == "succeeded" and second.attempt == 2
    log = _get_text(cloud, second.log_uri)
    assert "resuming from step 4" in log and "step 5/6" in log and "step 1/" not in log
    state = _final_state(cloud, "demo")
    assert state["step"] == 6 and state["resumed_from_step"] == 4
    assert _job_record(cloud, "demo").attempt == 2
    assert _live_instances(cloud) == []


def test_failing_script_fails_the_flow_with_its_exit_code(cloud: Sandbox, tmp_path: Path) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    spec = _spec(_code_dir(tmp_path), name="fails", spot=False)
    spec.command += ["--fail-with", "3", "--fail-at", "2"]
    with pytest.raises(JobFailedError, match="exit code 3") as err:
        train_launch(spec, LaunchOptions(wait=True))
    assert err.value.job_exit_code == 3
    record = _job_record(cloud, "fails")
    assert record.status == "failed" and record.exit_code == 3
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


def test_a_launch_above_max_hourly_cost_is_refused_with_nothing_created(cloud: Sandbox, tmp_path: Path) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    code = _code_dir(tmp_path)
    spot_now = cloud.ec2.spot_price("us-east-1a", "t3.micro")
    template = TemplateSpec(instance_type="t3.micro", availability_zone="us-east-1a")
    with pytest.raises(InvalidInputError) as err:
        train_launch(_spec(code, name="dear", template=template, max_hourly_cost=round(spot_now / 2, 6)))
    assert err.value.field == "max_hourly_cost"
    assert f"${spot_now:.4f}/hour" in str(err.value) and "(api" in str(err.value)  # the price and its source
    # On-demand, the limit from a saved CostPolicy block: $0.0104/hour is above its $0.005.
    CostPolicy(max_hourly_cost=0.005).save("cheap-launches", overwrite=True)
    with pytest.raises(InvalidInputError, match=r"\$0\.0104/hour.*\(api") as err:
        train_launch(_spec(code, name="dear-od", spot=False, cost_policy="cheap-launches"))
    assert err.value.field == "max_hourly_cost"
    # Refused before any mutation: no instance, no volume, no job record claimed.
    ec2 = cloud.client("ec2")
    assert ec2.describe_instances()["Reservations"] == [] and ec2.describe_volumes()["Volumes"] == []
    assert cloud.client("s3").list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
