"""spot-watch when the volume's AZ has no capacity: the volume moves, or the job resumes on-demand, as its strategy
says (split from test_spot_watch.py so the two files run in parallel).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from core import jobs
from core import tags as t
from core.ebs import VolumeSpec
from core.jobs import JobStatus, RecoveryStrategy, ResumePolicy, TemplateSpec
from flows.spot_watch import SpotWatchReport
from flows.train_launch import train_launch
from sandbox import Sandbox
from tasks.ebs import create_volume
from tasks.jobs import read_record, write_record
from tests.flows.conftest import record_events
from tests.flows.test_spot_watch import (
    BUCKET,
    _artifact_rows,
    _code_dir,
    _get_json,
    _has_checkpoint,
    _instance,
    _passes_until,
    _record,
    _spec,
    _volume,
)

pytestmark = pytest.mark.sandbox


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every event the passes emit, recorded as Prefect receives them."""
    return record_events(monkeypatch)


def test_no_capacity_in_the_volumes_az_moves_the_volume_or_resumes_on_demand(
    cloud: Sandbox, tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    code = _code_dir(tmp_path)
    volume = create_volume.fn(VolumeSpec(name="move-data", size_gib=10), availability_zone="us-east-1a")
    now_wait = {"capacity_wait_minutes": 0}
    mover = train_launch(
        _spec(
            code,
            "mover",
            data_volume_id=volume.id,
            resume=ResumePolicy(strategy=RecoveryStrategy.SAME_AZ_THEN_MOVE, **now_wait),
        )
    )
    on_demand = train_launch(
        _spec(
            code,
            "ondemand",
            template=TemplateSpec(instance_type="t3.small", availability_zone="us-east-1a"),
            resume=ResumePolicy(strategy=RecoveryStrategy.SAME_AZ_THEN_ON_DEMAND, **now_wait),
        )
    )
    assert cloud.wait_for(lambda: _has_checkpoint(cloud, "mover") and _has_checkpoint(cloud, "ondemand"), 30, 0.2)
    # Written on the mounted volume (a blank volume is formatted at its first mount: so after it).
    (Path(cloud.runtime.volume_dir(volume.id)) / "fs" / "dataset.txt").write_text("the data\n")
    cloud.set_capacity("us-east-1a", "t3.micro", available=False, spot_only=True)
    cloud.set_capacity("us-east-1a", "t3.small", available=False, spot_only=True)
    cloud.interrupt_spot(mover.instance_id, delay_seconds=3, reason="capacity")
    cloud.interrupt_spot(on_demand.instance_id, delay_seconds=3, reason="capacity")
    gone = (mover.instance_id, on_demand.instance_id)
    assert cloud.wait_for(lambda: all(_instance(cloud, i)["State"]["Name"] == "terminated" for i in gone), 20, 0.2)

    def refused() -> bool:
        return all(_record(cloud, n).current.capacity_refused_at is not None for n in ("mover", "ondemand"))

    _passes_until(cloud, refused)
    for name in ("mover", "ondemand"):  # a retry's backoff and the capacity wait are over
        stored, etag = read_record.fn(BUCKET, name)
        assert stored is not None and stored.status == JobStatus.RESUMING
        current = stored.current
        assert current.capacity_refused_at is not None and current.last_try_at is not None
        earlier = {
            "capacity_refused_at": current.capacity_refused_at - timedelta(minutes=5),
            "last_try_at": current.last_try_at - timedelta(minutes=5),
        }
        write_record.fn(stored.with_attempt(**earlier), expected_etag=etag)

    _passes_until(cloud, lambda: all(_record(cloud, n).status == JobStatus.RUNNING for n in ("mover", "ondemand")))

    moved = _record(cloud, "mover").current
    assert moved.availability_zone not in {None, "us-east-1a"} and moved.volume_id not in {None, volume.id}
    instance = _instance(cloud, moved.instance_id or "")
    assert instance["Placement"]["AvailabilityZone"] == moved.availability_zone
    new_volume = _volume(cloud, moved.volume_id or "")
    assert [a["InstanceId"] for a in new_volume["Attachments"]] == [moved.instance_id]
    assert new_volume["AvailabilityZone"] == moved.availability_zone
    data = Path(cloud.runtime.volume_dir(moved.volume_id or "")) / "fs" / "dataset.txt"
    assert data.read_text() == "the data\n"
    original = _volume(cloud, volume.id)  # kept, detached, renamed after its AZ
    assert original["State"] == "available" and t.from_aws(original["Tags"])[t.NAME] == "move-data@us-east-1a"

    ondemand = _record(cloud, "ondemand").current
    assert (ondemand.capacity_type, ondemand.availability_zone) == ("on-demand", "us-east-1a")
    assert _instance(cloud, ondemand.instance_id or "").get("InstanceLifecycle") != "spot"


def test_a_pass_records_ended_jobs_and_reports_unreadable_records(
    cloud: Sandbox, tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    code = _code_dir(tmp_path)
    volume = create_volume.fn(VolumeSpec(name="ends-data", size_gib=10), availability_zone="us-east-1a")
    done = train_launch(_spec(code, "ends", steps=3, data_volume_id=volume.id))
    failing = _spec(code, "ends-bad", steps=5, spot=False)
    failing.command += ["--fail-with", "3", "--fail-at", "2"]
    bad = train_launch(failing)
    corrupt_key = f"{jobs.JOBS_ROOT}/corrupt/job.json"
    newer_key = f"{jobs.JOBS_ROOT}/newer/job.json"
    newer = {**_record(cloud, "ends").model_dump(mode="json"), "name": "newer", "version": 99}
    s3.put_object(Bucket=BUCKET, Key=corrupt_key, Body=b'{"name": "corrupt", "status": ')
    s3.put_object(Bucket=BUCKET, Key=newer_key, Body=json.dumps(newer).encode())

    def ended() -> bool:
        return all(_instance(cloud, i)["State"]["Name"] == "terminated" for i in (done.instance_id, bad.instance_id))

    assert cloud.wait_for(ended, 30, 0.5)  # the agent shut them down; nobody told the records
    assert _record(cloud, "ends").status == JobStatus.RUNNING
    refused = CliRunner().invoke(app, ["spot-watch", "--bucket", "Not_A_Bucket"])
    assert refused.exit_code == 2 and "buckets" in refused.output  # refused before any call
    # One pass through the command line; exit 1: two records were skipped.
    out = CliRunner().invoke(app, ["spot-watch", "--bucket", BUCKET, "--json"])
    assert out.exit_code == 1, out.output
    report = SpotWatchReport.model_validate_json(out.stdout)

    assert report.looked and report.buckets == [BUCKET]
    assert (_record(cloud, "ends").status, _record(cloud, "ends").exit_code) == (JobStatus.SUCCEEDED, 0)
    assert (_record(cloud, "ends-bad").status, _record(cloud, "ends-bad").exit_code) == (JobStatus.FAILED, 3)
    assert _volume(cloud, volume.id)["State"] == "available"
    assert _get_json(cloud, jobs.default_checkpoint_uri(BUCKET, "ends") + jobs.LATEST_NAME)["seq"] >= 1
    assert {(e["event"], e["payload"]["job"]) for e in events} >= {
        ("trainctl.job.finished", "ends"),
        ("trainctl.job.failed", "ends-bad"),
    }
    finished = next(e for e in events if e["event"] == "trainctl.job.finished")
    assert {r["prefect.resource.id"] for r in finished["related"]} >= {
        f"aws.ec2.instance.{done.instance_id}",
        f"aws.ec2.volume.{volume.id}",
    }
    # The unreadable records: reported in the pass's artifact, left byte for byte as they were.
    assert s3.get_object(Bucket=BUCKET, Key=corrupt_key)["Body"].read() == b'{"name": "corrupt", "status": '
    assert json.loads(s3.get_object(Bucket=BUCKET, Key=newer_key)["Body"].read())["version"] == 99
    rows = {r["job"]: r for r in _artifact_rows("spot-watch")}
    assert rows["corrupt"]["status"] == "skipped" and "not JSON" in rows["corrupt"]["reason"]
    assert rows["newer"]["status"] == "skipped" and "newer trainctl" in rows["newer"]["reason"]
    assert rows["ends"]["status"] == "running → succeeded" and rows["ends-bad"]["status"] == "running → failed"
    assert [r["why_it_ended"] for r in _artifact_rows("job-ends-bad-history")] == ["failed (exit code 3)"]
