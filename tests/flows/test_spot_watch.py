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
from core.jobs import AttemptRecord, JobRecord, JobSpec, JobStatus, RecoveryStrategy, ResumePolicy, TemplateSpec
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
    return record_events(monkeypatch, spot_watch_module)


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
        ("trainctl.spot.interrupted", "trainctl.job.resumes"),
        ("trainctl.job.resumed", "trainctl.job.resumes"),
    } <= said
    resumed_event = next(e for e in events if e["event"] == "trainctl.job.resumed")
    assert resumed_event["payload"]["attempt"] == 2
    assert f"aws.ec2.instance.{new.instance_id}" in {r["prefect.resource.id"] for r in resumed_event["related"]}
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
    assert [e["event"] for e in events].count("trainctl.spot.interrupted") == 1

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
        ("trainctl.job.ended", "ends"),
        ("trainctl.job.ended", "ends-bad"),
    }
    # The unreadable records: reported in the pass's artifact, left byte for byte as they were.
    assert s3.get_object(Bucket=BUCKET, Key=corrupt_key)["Body"].read() == b'{"name": "corrupt", "status": '
    assert json.loads(s3.get_object(Bucket=BUCKET, Key=newer_key)["Body"].read())["version"] == 99
    rows = {r["job"]: r for r in _artifact_rows("spot-watch")}
    assert rows["corrupt"]["status"] == "skipped" and "not JSON" in rows["corrupt"]["reason"]
    assert rows["newer"]["status"] == "skipped" and "newer trainctl" in rows["newer"]["reason"]
    assert rows["ends"]["status"] == "running → succeeded" and rows["ends-bad"]["status"] == "running → failed"
    assert [r["why_it_ended"] for r in _artifact_rows("job-ends-bad-history")] == ["failed (exit code 3)"]
