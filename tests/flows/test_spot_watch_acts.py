"""spot-watch's acts that the resume tests do not walk, in the sandbox (issue 14): END_INSTANCE (a finished job's
instance still runs past the grace), ABANDON_LAUNCH (a user's launch that died half-way, past its lease) and
GIVE_UP (interrupted with no attempt left). One test, three jobs, three passes; record times are moved back
rather than waited for.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from core import jobs
from core.ebs import VolumeSpec
from core.jobs import JobSpec, JobStatus, ResumePolicy
from core.recovery import INSTANCE_END_GRACE
from flows.spot_watch import JobPass, SpotWatchRequest, spot_watch
from flows.train_launch import train_launch
from sandbox import Sandbox
from tasks.ebs import create_volume
from tasks.jobs import read_record, write_record
from tests.flows.conftest import record_events
from tests.flows.test_launch_attempt import Killed
from tests.flows.test_launch_kills import _kill_after
from tests.flows.test_spot_watch import (
    BUCKET,
    _code_dir,
    _get_json,
    _has_checkpoint,
    _instance,
    _live_instances,
    _record,
    _spec,
    _volume,
)

pytestmark = pytest.mark.sandbox
AZ = "us-east-1a"


@pytest.fixture
def emitted(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every event the passes emit, as Prefect receives them."""
    return record_events(monkeypatch)


def _rewrite(job: str, **attempt: Any) -> None:
    """Change the stored record's current attempt (its times), or its spec (`spec=`), as a conditional write."""
    stored, etag = read_record.fn(BUCKET, job)
    assert stored is not None
    spec = attempt.pop("spec", None)
    updated = stored.with_attempt(**attempt)
    if spec is not None:
        updated = updated.model_copy(update={"spec": spec})
    write_record.fn(updated, expected_etag=etag)


def _by_job(passes: list[JobPass]) -> dict[str, JobPass]:
    return {j.job: j for j in passes}


def _gone(cloud: Sandbox, instance_id: str) -> bool:
    return bool(_instance(cloud, instance_id)["State"]["Name"] in {"shutting-down", "terminated"})


def test_a_pass_ends_a_kept_instance_abandons_a_dead_launch_and_gives_up_after_the_last_attempt(
    cloud: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emitted: list[dict[str, Any]]
) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    code = _code_dir(tmp_path)
    # "kept": the trainer ends, the instance stays (launched with keep_instance, which the stored spec then drops:
    # as if the agent's own shutdown had failed).
    kept_volume = create_volume.fn(VolumeSpec(name="kept-data", size_gib=10), availability_zone=AZ)
    kept = train_launch(_spec(code, "kept", steps=3, keep_instance=True, data_volume_id=kept_volume.id))
    # "dead": a user's launch killed -9 once the data volume was attached and mounted.
    dead_volume = create_volume.fn(VolumeSpec(name="dead-data", size_gib=10), availability_zone=AZ)
    with monkeypatch.context() as patched:
        _kill_after(patched, "flows.launch_attempt", "_attach_and_mount")
        with pytest.raises(Killed):
            train_launch(_spec(code, "dead", data_volume_id=dead_volume.id))
    [dead] = [i["InstanceId"] for i in _live_instances(cloud, "dead")]
    # "last": its only allowed attempt is interrupted.
    last = train_launch(_spec(code, "last", resume=ResumePolicy(max_attempts=1)))
    assert cloud.wait_for(lambda: _has_checkpoint(cloud, "last"), 30, 0.2)
    cloud.interrupt_spot(last.instance_id, delay_seconds=4)
    assert cloud.wait_for(lambda: _instance(cloud, last.instance_id)["State"]["Name"] == "terminated", 20, 0.2)

    def kept_ended() -> bool:
        try:
            return _get_json(cloud, jobs.status_uri(BUCKET, "kept", 1))["status"] == "succeeded"
        except Exception:
            return False

    assert cloud.wait_for(kept_ended, 30, 0.2)
    kept_spec = _record(cloud, "kept").spec
    assert isinstance(kept_spec, JobSpec)
    _rewrite("kept", spec=kept_spec.model_copy(update={"keep_instance": False}))
    hour = timedelta(hours=1)
    stale = _record(cloud, "dead").current
    assert stale.last_try_at is not None and stale.launched_at is not None
    times = {"created_at": stale.created_at, "last_try_at": stale.last_try_at, "launched_at": stale.launched_at}
    _rewrite("dead", **{field: time - hour for field, time in times.items()})

    first = _by_job(spot_watch(SpotWatchRequest(buckets=[BUCKET])).jobs)

    # kept: its end recorded; within the grace its instance is left to the agent.
    assert first["kept"].act == "record-end → nothing" and "ended just now" in first["kept"].reason
    assert _record(cloud, "kept").status == JobStatus.SUCCEEDED
    assert _instance(cloud, kept.instance_id)["State"]["Name"] == "running"
    # dead: past its lease, the instance its launch key finds is terminated and the attempt recorded failed.
    assert first["dead"].act == "abandon-launch"
    assert cloud.wait_for(lambda: _gone(cloud, dead), 10, 0.2) and _live_instances(cloud, "dead") == []
    record = _record(cloud, "dead")
    assert (record.attempt, record.status) == (1, JobStatus.FAILED) and "stopped moving" in (record.message or "")
    assert cloud.wait_for(lambda: _volume(cloud, dead_volume.id)["State"] == "available", 10, 0.2)  # kept
    # last: interrupted with no attempt left: gave up, nothing launched.
    assert first["last"].act == "record-interruption → give-up"
    record = _record(cloud, "last")
    assert record.status == JobStatus.GAVE_UP and [(a.number, a.status) for a in record.attempts] == [
        (1, JobStatus.INTERRUPTED)
    ]
    assert _live_instances(cloud, "last") == []
    gave_up = [e for e in emitted if e["event"] == "trainctl.job.gave-up"]
    assert [e["resource"]["prefect.resource.id"] for e in gave_up] == ["trainctl.job.last"]
    assert "all 1 attempts used" in gave_up[0]["payload"]["reason"]
    failed = {e["payload"]["job"]: e for e in emitted if e["event"] == "trainctl.job.failed"}
    assert {r["prefect.resource.id"] for r in failed["dead"]["related"]} >= {
        f"aws.ec2.instance.{dead}",
        f"aws.ec2.volume.{dead_volume.id}",
    }
    [finished_event] = [e for e in emitted if e["event"] == "trainctl.job.finished"]
    assert finished_event["resource"] == {"prefect.resource.id": "trainctl.job.kept", "prefect.resource.name": "kept"}
    assert {(r["prefect.resource.role"], r["prefect.resource.id"]) for r in finished_event["related"]} == {
        ("instance", f"aws.ec2.instance.{kept.instance_id}"),
        ("volume", f"aws.ec2.volume.{kept_volume.id}"),
        ("bucket", f"aws.s3.bucket.{BUCKET}"),
    }

    # kept, past the grace: its instance is ended; its data volume survives the termination.
    finished = _record(cloud, "kept").current.finished_at
    assert finished is not None
    _rewrite("kept", finished_at=finished - INSTANCE_END_GRACE - timedelta(minutes=1))
    second = _by_job(spot_watch(SpotWatchRequest(buckets=[BUCKET])).jobs)

    assert second["kept"].act == "end-instance"
    assert cloud.wait_for(lambda: _gone(cloud, kept.instance_id), 10, 0.2) and _live_instances(cloud, "kept") == []
    assert cloud.wait_for(lambda: _volume(cloud, kept_volume.id)["State"] == "available", 10, 0.2)
    assert _record(cloud, "kept").status == JobStatus.SUCCEEDED
    assert {second[name].act for name in ("dead", "last")} == {"nothing"}  # done with: left alone
    assert _live_instances(cloud, "last") == [] and _live_instances(cloud, "dead") == []
