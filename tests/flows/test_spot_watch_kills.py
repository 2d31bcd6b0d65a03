"""kill -9 of a spot-watch pass after each step of a resume (issue 14): the next pass continues what the killed one
left and converges to exactly one running attempt — on one instance, its trainer resumed from the checkpoint, the
data volume attached to it — with no leaked instance, volume or snapshot (a move keeps the original volume,
renamed, and its one snapshot: DESIGN.md section 3).

A kill is a BaseException raised right after the step's real work (tests/flows/test_launch_kills.py): neither the
launch's cleanup nor the pass's own error handling runs, as with a SIGKILL. The launch's lease is run out by
moving the record's times back, not by waiting.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from core import tags as t
from core.ebs import VolumeSpec
from core.jobs import JobStatus, RecoveryStrategy, ResumePolicy
from flows.spot_watch import SpotWatchRequest, spot_watch
from flows.train_launch import train_launch
from sandbox import Sandbox
from tasks.ebs import create_volume
from tasks.jobs import read_record, write_record
from tests.flows.test_launch_attempt import Killed
from tests.flows.test_spot_watch import (
    BUCKET,
    _code_dir,
    _has_checkpoint,
    _instance,
    _job_log,
    _live_instances,
    _record,
    _spec,
    _volume,
)

pytestmark = pytest.mark.sandbox
AZ = "us-east-1a"


@dataclass(frozen=True)
class _Point:
    module: str
    name: str
    before: bool = False  # killed before the call (the step before it was the last one done)
    in_task: bool = False  # called as `name.fn(...)` inside a task
    moves: bool = False  # the resume moves the volume (same-az-then-move, no capacity in its AZ)


KILL_POINTS = {
    # attempt 2 claimed (`resuming`) in job.json; nothing launched
    "claim": _Point(module="flows.spot_watch", name="launch_attempt", before=True),
    # the instance runs under attempt 2's launch key; job.json does not name it
    "run-instances": _Point(module="flows.launch_attempt", name="launch_instance"),
    "ssm-online": _Point(module="flows.launch_attempt", name="wait_online"),
    # the data volume attached to the new instance and mounted
    "mount": _Point(module="flows.launch_attempt", name="_attach_and_mount"),
    "ship": _Point(module="flows.launch_attempt", name="_ship"),
    # the agent (and its trainer) runs; job.json still says `resuming`
    "agent-start": _Point(module="flows.launch_attempt", name="_start"),
}
# The same for a resume that moves the volume (tests/flows/test_spot_watch_move_kills.py: a file of its own, so
# that the two halves run on two workers).
MOVE_KILL_POINTS = {
    # the move's snapshot completed; the original volume not renamed yet, no copy
    "move-snapshot": _Point(module="tasks.ebs", name="create_snapshot", in_task=True, moves=True),
    # the copy restored in the other AZ (the original renamed); the attempt does not record it yet
    "move-restore": _Point(module="flows.launch_attempt", name="move_volume_task", moves=True),
}


def _kill_after(patched: pytest.MonkeyPatch, point: _Point) -> None:
    module = importlib.import_module(point.module)
    real = getattr(module, point.name)

    def killed(*args: Any, **kwargs: Any) -> Any:
        if not point.before:
            (real.fn if point.in_task else real)(*args, **kwargs)
        raise Killed(f"kill -9 after {point.name}")

    patched.setattr(module, point.name, SimpleNamespace(fn=killed) if point.in_task else killed)


def _lease_run_out(job: str) -> None:
    """The killed launch's times an hour back: to the next pass it stopped moving long ago."""
    stored, etag = read_record.fn(BUCKET, job)
    assert stored is not None
    current, hour = stored.current, timedelta(hours=1)
    fields = ("created_at", "last_try_at", "launched_at", "capacity_refused_at")
    earlier = {f: getattr(current, f) - hour for f in fields if getattr(current, f) is not None}
    write_record.fn(stored.with_attempt(**earlier), expected_etag=etag)


def _job_volumes(cloud: Sandbox, job: str) -> dict[str, str]:
    """Every volume named after the job's data volume (the original, renamed or not, and any copy): id → Name."""
    found = cloud.client("ec2").describe_volumes()["Volumes"]
    names = {v["VolumeId"]: t.from_aws(v.get("Tags", [])).get(t.NAME, "") for v in found}
    return {vid: name for vid, name in names.items() if name == job or name.startswith(f"{job}@")}


def _job_instances_ever(cloud: Sandbox, job: str) -> set[str]:
    found = cloud.client("ec2").describe_instances(Filters=[{"Name": f"tag:{t.JOB}", "Values": [job]}])
    return {i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]}


def _pass() -> None:
    spot_watch(SpotWatchRequest(buckets=[BUCKET]))


def walked(points: Iterable[str], every_run: set[str]) -> list[Any]:
    """The kill points as test parameters: those in `every_run` in `make test`, the rest marked `exhaustive`
    (`make test-exhaustive`, which CI runs after it): every point is walked in CI, the suite stays short."""
    return [pytest.param(point, marks=() if point in every_run else pytest.mark.exhaustive) for point in points]


@pytest.mark.parametrize("point", walked(KILL_POINTS, {"agent-start"}))
def test_a_pass_killed_after_a_step_is_continued_to_one_running_attempt_with_nothing_leaked(
    point: str, cloud: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    killed_then_continued(point, KILL_POINTS[point], cloud, tmp_path, monkeypatch)


def killed_then_continued(
    point: str, kill: _Point, cloud: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's attempt 1 interrupted; a pass resuming it killed at `kill`; the next pass, past the launch's lease;
    then what AWS and job.json hold (module docstring)."""
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    job = f"kill-{point}"
    volume = create_volume.fn(VolumeSpec(name=job, size_gib=10), availability_zone=AZ)
    strategy = RecoveryStrategy.SAME_AZ_THEN_MOVE if kill.moves else RecoveryStrategy.SAME_AZ
    policy = ResumePolicy(strategy=strategy, capacity_wait_minutes=0)
    first = train_launch(_spec(_code_dir(tmp_path), job, data_volume_id=volume.id, resume=policy))
    assert cloud.wait_for(lambda: _has_checkpoint(cloud, job), 30, 0.2)
    if kill.moves:
        cloud.set_capacity(AZ, "t3.micro", available=False, spot_only=True)
    cloud.interrupt_spot(first.instance_id, delay_seconds=4)
    assert cloud.wait_for(lambda: _instance(cloud, first.instance_id)["State"]["Name"] == "terminated", 20, 0.2)
    if kill.moves:  # a first pass records the interruption; the resume in the volume's AZ is refused
        _pass()
        assert _record(cloud, job).current.capacity_refused_at is not None

    with monkeypatch.context() as patched:
        _kill_after(patched, kill)
        with pytest.raises(Killed):
            _pass()
    left = _record(cloud, job)
    assert (left.attempt, left.status) == (2, JobStatus.RESUMING)  # what the kill left: attempt 2 half-launched
    _lease_run_out(job)

    _pass()  # the next pass continues attempt 2

    record = _record(cloud, job)
    old, new = record.attempts
    assert (old.number, old.status, old.instance_id) == (1, JobStatus.INTERRUPTED, first.instance_id)
    assert (new.number, new.status, new.launched_by) == (2, JobStatus.RUNNING, "spot-watch")
    assert record.status == JobStatus.RUNNING and new.resumed_from_seq is not None
    [live] = _live_instances(cloud, job)
    assert live["InstanceId"] == new.instance_id and t.from_aws(live["Tags"])[t.ATTEMPT] == "2"
    assert live["Placement"]["AvailabilityZone"] == new.availability_zone
    assert _job_instances_ever(cloud, job) == {first.instance_id, new.instance_id}  # none launched and ended
    data = _volume(cloud, new.volume_id or "")
    assert [(a["InstanceId"], a["State"]) for a in data["Attachments"]] == [(new.instance_id, "attached")]
    snapshots = cloud.client("ec2").describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "volume-id", "Values": [volume.id]}]
    )["Snapshots"]
    if kill.moves:  # the original kept (renamed, detached), its one snapshot, one copy: the move made once
        assert new.availability_zone != AZ and new.volume_id != volume.id
        assert _job_volumes(cloud, job) == {volume.id: f"{job}@{AZ}", new.volume_id: job}
        assert _volume(cloud, volume.id)["State"] == "available" and len(snapshots) == 1
    else:
        assert (new.availability_zone, new.volume_id) == (AZ, volume.id)
        assert _job_volumes(cloud, job) == {volume.id: job} and snapshots == []
    # The trainer of attempt 2 resumed from the checkpoint attempt 1 saved.
    instance_id = new.instance_id or ""
    assert cloud.wait_for(lambda: "resuming from step" in _job_log(cloud, instance_id, job), 20, 0.2)
    resumed = re.search(r"resuming from step (\d+)", _job_log(cloud, instance_id, job))
    assert resumed and int(resumed.group(1)) > 0
