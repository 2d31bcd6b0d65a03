"""bench/recovery.py runs end to end in the sandbox, at a small size: the job really resumes, and the figures it
prints come from that run's records. ~40 s (a launch, a resume, a teardown): `slow`, run with `pytest -m slow`."""

from __future__ import annotations

from typing import Any

import pytest

from bench import recovery
from core import tags as t
from tests.conftest import exported_sandbox

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


def _instance(ec2: Any, instance_id: str) -> dict[str, Any]:
    return dict(ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0])


def test_the_recovery_bench_resumes_the_job_measures_each_stage_and_ends_the_job(prefect_harness: None) -> None:
    options = recovery.Options(ckpt_mb=1, window=2, period=1, boot=0.2, step_seconds=0.2, timeout=60)
    with exported_sandbox(boot_delay=options.boot) as cloud:
        watcher = recovery.Watcher(cloud)
        watcher.start()
        try:
            run = recovery.measure(cloud, options)
        finally:
            watcher.done.set()
        ec2 = cloud.client("ec2")
        # What happened in AWS: the old instance went, attempt 2 runs on a new one with the data volume.
        assert _instance(ec2, run.old_id)["State"]["Name"] == "terminated"
        new = _instance(ec2, run.new_id)
        assert new["State"]["Name"] == "running" and t.from_aws(new["Tags"])[t.ATTEMPT] == "2"
        attached = ec2.describe_volumes(VolumeIds=[run.volume_id])["Volumes"][0]["Attachments"]
        assert [(a["InstanceId"], a["State"]) for a in attached] == [(run.new_id, "attached")]
        assert run.resumed["resumed_from_step"] == run.saved["step"] and run.saved["step"] >= 2
        assert run.interruption["verified"] is True

        found = recovery.figures(run, watcher)
        at = dict(found.timeline)
        assert None not in at.values(), at
        assert 0 < at[recovery.SIGTERM] <= at[recovery.VERIFIED]  # type: ignore[operator]
        assert at[recovery.TERMINATED] >= options.window - recovery.POLL_S  # type: ignore[operator]
        assert at[recovery.TERMINATED] < at[recovery.RESUMED]  # type: ignore[operator]
        stages = dict(found.stages)
        assert stages["notice → first resumed step"] == at[recovery.RESUMED]
        assert [value is not None for _, value, _ in found.targets] == [True, True, True]

        recovery.teardown_job(cloud)
        left = ec2.describe_instances(
            Filters=[
                {"Name": f"tag:{t.JOB}", "Values": [recovery.JOB]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]},
            ]
        )["Reservations"]
        assert left == []
