"""kill -9 of `train launch` after each of its steps, then a re-run of the same command (issue 14): exactly one
attempt runs afterwards, on exactly one instance, and nothing is leaked — the killed attempt's instance is ended
by the re-run (its data volume released and kept), or, once its trainer started, the re-run is refused.

A kill is a BaseException raised right after the step's real work: no cleanup of the launch runs, as with a
SIGKILL (the flow's `except` only catches Exception and KeyboardInterrupt)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.ebs import VolumeSpec
from core.errors import UsageError
from core.jobs import JobStatus
from flows.train_launch import train_launch
from sandbox import Sandbox
from tasks.ebs import create_volume
from tests.flows.test_launch_attempt import Killed, _job_instances
from tests.flows.test_spot_watch_kills import walked
from tests.flows.test_train_launch import BUCKET, _code_dir, _job_record, _spec

pytestmark = pytest.mark.sandbox

# The step after which the launch dies, and the function (module, name) whose return marks it.
KILL_POINTS = {
    "claim": ("flows.train_launch", "_stage"),  # attempt 1 claimed in job.json; nothing uploaded or launched
    "run-instances": ("flows.launch_attempt", "launch_instance"),  # the instance runs; job.json does not name it
    "ssm-online": ("flows.launch_attempt", "wait_online"),
    "mount": ("flows.launch_attempt", "_attach_and_mount"),  # the data volume attached and mounted
    "ship": ("flows.launch_attempt", "_ship"),
}


def _kill_after(monkeypatch: pytest.MonkeyPatch, module: str, name: str, *, before: bool = False) -> None:
    real: Callable[..., Any] = getattr(__import__(module, fromlist=[name]), name)

    def killed(*args: Any, **kwargs: Any) -> Any:
        if not before:
            real(*args, **kwargs)
        raise Killed(f"kill -9 after {name}")

    monkeypatch.setattr(f"{module}.{name}", killed)


@pytest.mark.parametrize("point", walked(KILL_POINTS, {"run-instances"}))
def test_a_rerun_after_a_kill_leaves_one_attempt_running_and_nothing_leaked(
    point: str, cloud: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    job = f"kill-{point}"
    volume = create_volume.fn(VolumeSpec(name=job, size_gib=10), availability_zone="us-east-1a")
    spec = _spec(_code_dir(tmp_path), name=job, steps=200, data_volume_id=volume.id)
    module, name = KILL_POINTS[point]
    with monkeypatch.context() as patched:
        _kill_after(patched, module, name, before=point == "claim")
        with pytest.raises(Killed):
            train_launch(spec)
    killed_instances = _job_instances(cloud, job)
    assert len(killed_instances) == (0 if point == "claim" else 1)  # what the kill left behind

    report = train_launch(spec)  # the user runs the same command again

    assert _job_instances(cloud, job) == [report.instance_id]  # exactly one: the killed attempt's is gone
    assert report.attempt == 2 and report.instance_id not in killed_instances
    record = _job_record(cloud, job)
    assert (record.status, record.attempt, record.instance_id) == (JobStatus.RUNNING, 2, report.instance_id)
    first = record.attempt_record(1)
    assert (
        first is not None and first.status == JobStatus.FAILED and "before the trainer started" in (first.message or "")
    )
    data = cloud.client("ec2").describe_volumes(VolumeIds=[volume.id])["Volumes"][0]
    assert [a["InstanceId"] for a in data["Attachments"]] == [report.instance_id]  # the data volume followed


def test_a_rerun_after_a_kill_once_the_trainer_started_is_refused(
    cloud: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    spec = _spec(_code_dir(tmp_path), name="kill-start", steps=200)
    with monkeypatch.context() as patched:
        _kill_after(patched, "flows.launch_attempt", "_start")
        with pytest.raises(Killed):
            train_launch(spec)
    [running] = _job_instances(cloud, "kill-start")
    assert _job_record(cloud, "kill-start").status == JobStatus.PENDING  # the kill came before `running`

    with pytest.raises(UsageError, match=f"attempt 1 is still pending on {running}") as refused:
        train_launch(spec)
    assert "trainctl train stop kill-start" in str(refused.value.fix)
    assert _job_instances(cloud, "kill-start") == [running]  # the trainer that runs was left alone
    record = _job_record(cloud, "kill-start")
    assert (record.attempt, len(record.attempts)) == (1, 1)
