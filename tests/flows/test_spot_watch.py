"""spot-watch in the sandbox: the real agent runs examples/train.py; spot interruptions and missing capacity are
injected through the sandbox's control surface, and each pass is a real flow run.

Few tests, each doing a lot: a launch costs a few seconds (boot, SSM, the trainer's steps), a pass about one.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from core import jobs
from core import tags as t
from core.ebs import VolumeSpec
from core.jobs import AttemptRecord, JobRecord, JobSpec, JobStatus, TemplateSpec
from flows import spot_watch as spot_watch_module
from flows.launch_attempt import launch_request
from flows.spot_watch import SpotWatchReport, SpotWatchRequest, spot_watch
from flows.train_launch import train_launch
from sandbox import Sandbox
from tasks.ebs import create_volume
from tasks.ec2_instances import launch_instance
from tasks.jobs import read_record, write_record
from tests.flows.conftest import record_events

pytestmark = pytest.mark.sandbox
BUCKET = "watch-jobs"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train.py"
MAX_PASSES = 8


def _code_dir(tmp_path: Path) -> str:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    shutil.copy(EXAMPLE, code / "train.py")
    return str(code)


def _spec(code_dir: str, name: str, steps: int = 400, **fields: Any) -> JobSpec:
    base: dict[str, Any] = {
        "name": name,
        "bucket": BUCKET,
        "template": TemplateSpec(instance_type="t3.micro"),
        "code_dir": code_dir,
        "command": ["python3", "train.py", "--steps", str(steps), "--step-seconds", "0.1"],
        "sync_interval_s": 1,
    }
    return JobSpec(**{**base, **fields})


def _get_json(cloud: Sandbox, uri: str) -> Any:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return json.loads(cloud.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())


def _record(cloud: Sandbox, name: str) -> JobRecord:
    return JobRecord.model_validate(_get_json(cloud, jobs.job_record_uri(BUCKET, name)))


def _instance(cloud: Sandbox, instance_id: str) -> dict[str, Any]:
    found = cloud.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"]
    return dict(found[0]["Instances"][0])


def _live_instances(cloud: Sandbox, job: str) -> list[dict[str, Any]]:
    found = cloud.client("ec2").describe_instances(
        Filters=[
            {"Name": f"tag:{t.JOB}", "Values": [job]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )["Reservations"]
    return [i for r in found for i in r["Instances"]]


def _volume(cloud: Sandbox, volume_id: str) -> dict[str, Any]:
    return dict(cloud.client("ec2").describe_volumes(VolumeIds=[volume_id])["Volumes"][0])


def _has_checkpoint(cloud: Sandbox, name: str) -> bool:
    try:
        return bool(_get_json(cloud, jobs.default_checkpoint_uri(BUCKET, name) + jobs.LATEST_NAME))
    except Exception:
        return False


def _job_log(cloud: Sandbox, instance_id: str, name: str) -> str:
    path = Path(cloud.runtime.instance_root(instance_id)) / jobs.instance_job_dir(name).lstrip("/") / jobs.LOG_FILE
    return path.read_text() if path.exists() else ""


def _passes_until(cloud: Sandbox, done: Any, buckets: list[str] | None = None) -> list[SpotWatchReport]:
    """spot-watch passes (as the schedule would run them) until `done()`, at most MAX_PASSES."""
    reports: list[SpotWatchReport] = []
    for _ in range(MAX_PASSES):
        reports.append(spot_watch(SpotWatchRequest(buckets=buckets or [BUCKET])))
        if done():
            return reports
        cloud.wait_for(done, 2.0, 0.2)
    raise AssertionError(f"not done after {MAX_PASSES} passes: {[r.jobs for r in reports]}")


def _artifact_rows(key: str) -> list[dict[str, Any]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
    data = artifacts[0].data
    return json.loads(data) if isinstance(data, str) else list(data)  # type: ignore[arg-type]


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every event the passes emit (name, resource, related, payload), recorded as Prefect receives them."""
    return record_events(monkeypatch)


def _related(event: dict[str, Any]) -> set[tuple[str, str]]:
    return {(r["prefect.resource.role"], r["prefect.resource.id"]) for r in event["related"]}


def test_an_interrupted_job_resumes_from_its_checkpoint_on_its_volume_once_with_racing_or_killed_passes(
    cloud: Sandbox, tmp_path: Path, events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    volume = create_volume.fn(VolumeSpec(name="watch-data", size_gib=10), availability_zone="us-east-1a")
    first = train_launch(_spec(_code_dir(tmp_path), "resumes", data_volume_id=volume.id))
    assert cloud.wait_for(lambda: _has_checkpoint(cloud, "resumes"), 30, 0.2)
    cloud.interrupt_spot(first.instance_id, delay_seconds=4)

    _passes_until(
        cloud, lambda: _record(cloud, "resumes").status == JobStatus.RUNNING and _record(cloud, "resumes").attempt == 2
    )

    record = _record(cloud, "resumes")
    old, new = record.attempts
    assert (old.status, old.instance_id) == (JobStatus.INTERRUPTED, first.instance_id) and old.finished_at
    assert (new.status, new.launched_by, new.availability_zone) == (JobStatus.RUNNING, "spot-watch", "us-east-1a")
    instance = _instance(cloud, new.instance_id or "")
    assert instance["State"]["Name"] == "running" and t.from_aws(instance["Tags"])[t.ATTEMPT] == "2"
    assert _instance(cloud, first.instance_id)["State"]["Name"] == "terminated"
    attached = _volume(cloud, volume.id)["Attachments"]
    assert [(a["InstanceId"], a["State"]) for a in attached] == [(new.instance_id, "attached")]
    assert cloud.wait_for(lambda: "resuming from step" in _job_log(cloud, new.instance_id or "", "resumes"), 20, 0.2)
    resumed = re.search(r"resuming from step (\d+)", _job_log(cloud, new.instance_id or "", "resumes"))
    assert resumed and int(resumed.group(1)) > 0
    assert new.resumed_from_seq is not None
    # What was said about it: the events, the job's history artifact, `train status`.
    said = {(e["event"], e["resource"]["prefect.resource.id"]) for e in events}
    assert {
        ("trainctl.job.interrupted", "trainctl.job.resumes"),
        ("trainctl.job.resumed", "trainctl.job.resumes"),
    } <= said
    interrupted_event = next(e for e in events if e["event"] == "trainctl.job.interrupted")
    assert _related(interrupted_event) >= {
        ("instance", f"aws.ec2.instance.{first.instance_id}"),
        ("volume", f"aws.ec2.volume.{volume.id}"),
        ("bucket", f"aws.s3.bucket.{BUCKET}"),
    }
    resumed_event = next(e for e in events if e["event"] == "trainctl.job.resumed")
    assert resumed_event["payload"]["attempt"] == 2
    assert _related(resumed_event) >= {
        ("instance", f"aws.ec2.instance.{new.instance_id}"),
        ("volume", f"aws.ec2.volume.{volume.id}"),
    }
    history = _artifact_rows("job-resumes-history")
    assert [(r["attempt"], r["instance"]) for r in history] == [("1", first.instance_id), ("2", new.instance_id)]
    out = CliRunner().invoke(app, ["train", "status", "resumes", "--bucket", BUCKET])
    assert out.exit_code == 0, out.output
    assert first.instance_id in out.output and str(new.instance_id) in out.output and "interrupted" in out.output

    # 30 % of all calls throttled: a pass judges the running attempt right or leaves it; never a false recovery.
    cloud.throttle(0.3)
    try:
        throttled = [spot_watch(SpotWatchRequest(buckets=[BUCKET])) for _ in range(2)]
    finally:
        cloud.throttle(0.0)
    assert {j.after for r in throttled for j in r.jobs} <= {"running"}  # judged running, or skipped this pass
    assert [i["InstanceId"] for i in _live_instances(cloud, "resumes")] == [new.instance_id]
    assert _record(cloud, "resumes").attempt == 2
    assert [e["event"] for e in events].count("trainctl.job.interrupted") == 1

    # Attempt 2 is interrupted too, and a pass was killed after recording it: two passes then run at the same
    # moment, both read the `interrupted` record, both decide to resume; one claims attempt 3, one instance.
    cloud.interrupt_spot(new.instance_id or "", delay_seconds=4)
    assert cloud.wait_for(lambda: _instance(cloud, new.instance_id or "")["State"]["Name"] == "terminated", 20, 0.2)
    stored, etag = read_record.fn(BUCKET, "resumes")
    assert stored is not None
    write_record.fn(stored.with_status(JobStatus.INTERRUPTED, message="spot took it"), expected_etag=etag)
    barrier = threading.Barrier(2, timeout=60)
    real_read = spot_watch_module.read_record_checked

    def read_then_meet(bucket: str, job: str, **kwargs: Any) -> Any:
        found = real_read(bucket, job, **kwargs)
        if job == "resumes" and found[0] is not None and found[0].status == JobStatus.INTERRUPTED:
            barrier.wait()
        return found

    monkeypatch.setattr(spot_watch_module, "read_record_checked", read_then_meet)
    reports: list[SpotWatchReport] = []
    passes = [
        threading.Thread(target=lambda: reports.append(spot_watch(SpotWatchRequest(buckets=[BUCKET]))))
        for _ in range(2)
    ]
    for thread in passes:
        thread.start()
    for thread in passes:
        thread.join(timeout=180)
    assert len(reports) == 2
    live = _live_instances(cloud, "resumes")
    assert len(live) == 1 and t.from_aws(live[0]["Tags"])[t.ATTEMPT] == "3"
    record = _record(cloud, "resumes")
    assert [a.number for a in record.attempts] == [1, 2, 3] and record.instance_id == live[0]["InstanceId"]
    lost = [j for r in reports for j in r.jobs if "changed the record first" in j.reason]
    assert len(lost) == 1  # the other pass left the job as the winner made it
    monkeypatch.setattr(spot_watch_module, "read_record_checked", real_read)

    # Attempt 3 is interrupted, and the pass resuming it is killed -9 after its claim and RunInstances: what it
    # leaves is attempt 4 `resuming` and an instance under attempt 4's launch key. Once the launch's lease is
    # over, the next pass continues that launch with that instance: one attempt running, nothing leaked.
    third = live[0]["InstanceId"]
    cloud.interrupt_spot(third, delay_seconds=4)
    assert cloud.wait_for(lambda: _instance(cloud, third)["State"]["Name"] == "terminated", 20, 0.2)
    stored, etag = read_record.fn(BUCKET, "resumes")
    assert stored is not None and stored.spec is not None and isinstance(stored.spec.template, TemplateSpec)
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    claim = AttemptRecord(
        number=4, launched_by="spot-watch", availability_zone="us-east-1a", capacity_type="spot", created_at=long_ago
    )
    interrupted = stored.with_status(JobStatus.INTERRUPTED, message="spot took it", finished_at=long_ago)
    write_record.fn(interrupted.with_new_attempt(claim, JobStatus.RESUMING), expected_etag=etag)
    request = launch_request(stored.spec, stored.spec.template, zone="us-east-1a", capacity="spot", attempt=4)
    orphan = launch_instance.fn(request)
    report = spot_watch(SpotWatchRequest(buckets=[BUCKET]))
    assert "stopped moving: continuing it" in report.jobs[0].reason
    record = _record(cloud, "resumes")
    assert (record.attempt, record.status, record.instance_id) == (4, JobStatus.RUNNING, orphan.id)
    assert [i["InstanceId"] for i in _live_instances(cloud, "resumes")] == [orphan.id]
