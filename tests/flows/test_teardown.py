"""safe-teardown end to end in the sandbox: real instances, a live "training" pid checked over SSM, volumes,
snapshots, checkpoints and staging in S3, untagged decoys made directly with boto3.

Time: EC2 create times and S3 LastModified cannot be set back in the sandbox (moto), so the main scenario uses a
SafetyPolicy with short windows (min age and checkpoint recency of POLICY_S seconds, set through the request's
overrides): "old" things are made first, then the test waits until they are older than the window, then makes
the young volume and the recent checkpoint. The kill-at-every-step test needs no young things and moves the
clock forward instead (through `flows.teardown.planning_time`; `as_of`, the rehearsal, is for dry runs only).
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import flows.teardown
from core import jobs
from core import tags as t
from core.ebs import VolumeSpec
from core.teardown import Action, Step
from flows.teardown import TeardownRequest, safe_teardown
from sandbox import Sandbox
from tasks.ebs import attach_volume, create_snapshot, create_volume
from tasks.ec2_instances import LaunchRequest, launch_instance
from tasks.ssm import run_command, wait_online
from tests.conftest import start_agent_job

pytestmark = pytest.mark.sandbox
BUCKET = "trainctl-jobs"
AGENT_BUCKET = "trainctl-agents"
POLICY_S = 15


def _job_instance(cloud: Sandbox, job: str, key: str) -> str:
    return launch_instance.fn(
        LaunchRequest(
            name=job,
            role=t.Role.TRAIN,
            idempotency_key=key,
            job=job,
            instance_type="t3.micro",
            availability_zone="us-east-1a",
        )
    ).id


def _volume(
    name: str, job: str | None, *, persistent: bool = False, protected: bool = False, on: str | None = None
) -> str:
    vol = create_volume.fn(
        VolumeSpec(name=name, size_gib=10, persistent=persistent, protected=protected),
        availability_zone="us-east-1a",
        job=job,
    )
    if on:
        attach_volume.fn(vol.id, on)
    return vol.id


def _start_training(cloud: Sandbox, instance_id: str, job: str) -> None:
    """A long-running "trainer" run by the real agent (teardown asks it whether the job runs, and stops it)."""
    wait_online.fn(instance_id)
    s3 = cloud.client("s3")
    if AGENT_BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=AGENT_BUCKET)  # the agent's status and logs stay out of the scene's bucket
    start_agent_job(cloud.runtime.instance_root(instance_id), instance_id, job, AGENT_BUCKET, ["sleep", "600"])


def _stop_training(instance_id: str, job: str) -> None:
    """The trainer ends on its own (its agent then records the end and exits)."""
    job_dir = f'"${{TRAINCTL_ROOT:-}}"{jobs.instance_job_dir(job)}'
    run_command.fn(instance_id, [f"kill $(cat {job_dir}/{jobs.PID_FILE})"])


def _job_record(cloud: Sandbox, job: str, status: str) -> None:
    record = {"name": job, "bucket": BUCKET, "status": status, "created_at": datetime.now(UTC).isoformat()}
    cloud.client("s3").put_object(Bucket=BUCKET, Key=f"{jobs.JOBS_ROOT}/{job}/job.json", Body=json.dumps(record))


def _checkpoint(cloud: Sandbox, job: str, seq: int, *, complete: bool = True) -> str:
    s3 = cloud.client("s3")
    prefix = f"{jobs.JOBS_ROOT}/{job}/checkpoints/{jobs.checkpoint_folder(seq)}"
    s3.put_object(Bucket=BUCKET, Key=prefix + "model.pt", Body=b"w" * 1000)
    if complete:
        s3.put_object(Bucket=BUCKET, Key=prefix + jobs.MANIFEST_NAME, Body=b"{}")
        s3.put_object(
            Bucket=BUCKET,
            Key=f"{jobs.JOBS_ROOT}/{job}/checkpoints/{jobs.LATEST_NAME}",
            Body=json.dumps({"seq": seq, "prefix": jobs.checkpoint_folder(seq)}),
        )
    return prefix


def _staging(cloud: Sandbox, job: str) -> str:
    key = f"{jobs.JOBS_ROOT}/{job}/staging/attempt-1/code.tar.gz"
    cloud.client("s3").put_object(Bucket=BUCKET, Key=key, Body=b"code")
    return key


def world(cloud: Sandbox) -> dict[str, Any]:
    """Everything that exists: instance states, volumes (state, attached to), snapshots, S3 keys."""
    ec2 = cloud.client("ec2")
    instances = {
        i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
    }
    volumes = {
        v["VolumeId"]: (v["State"], tuple(a["InstanceId"] for a in v["Attachments"]))
        for v in ec2.describe_volumes()["Volumes"]
    }
    snapshots = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    keys = {o["Key"] for o in cloud.client("s3").list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    return {"instances": instances, "volumes": volumes, "snapshots": snapshots, "keys": keys}


def test_teardown_keeps_what_must_survive_and_converges(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    # -- "old" things -------------------------------------------------------------------------------------------
    _job_record(cloud, "run-a", "running")
    _job_record(cloud, "done-b", "succeeded")
    staging_a, staging_b = _staging(cloud, "run-a"), _staging(cloud, "done-b")
    ckpt1, ckpt2 = _checkpoint(cloud, "run-a", 1), _checkpoint(cloud, "run-a", 2)
    running = _job_instance(cloud, "run-a", "a-1")
    finished = _job_instance(cloud, "done-b", "b-1")
    data = _volume("data-a", "run-a", persistent=True, on=running)
    scratch = _volume("scratch-a", "run-a", on=running)
    protected = _volume("keep-me", None, protected=True)
    snapshot = create_snapshot.fn(protected).id
    _start_training(cloud, running, "run-a")
    decoy_instance = ec2.run_instances(ImageId="ami-12c6146b", InstanceType="t3.micro", MinCount=1, MaxCount=1)[
        "Instances"
    ][0]["InstanceId"]
    decoy_volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=5)["VolumeId"]
    old_done = time.monotonic()
    # -- wait until all that is older than the policy window, then the young things ----------------------------
    time.sleep(max(0.0, POLICY_S + 1 - (time.monotonic() - old_done)))
    young = _volume("young", None)
    ckpt3 = _checkpoint(cloud, "run-a", 3, complete=False)

    request = TeardownRequest(
        all_managed=True,
        ids=[decoy_instance, decoy_volume, "vol-0123456789abcdef0"],
        sweep=True,
        bucket=BUCKET,
        dry_run=False,
        min_age_minutes=POLICY_S / 60,
        checkpoint_recency_minutes=POLICY_S / 60,
    )
    report = safe_teardown(request)
    after = world(cloud)

    # Gone: the finished job's instance (and its root volume), the superseded old checkpoint, done-b's staging.
    assert after["instances"][finished] == "terminated"
    assert not any(k.startswith(ckpt1) for k in after["keys"])
    assert staging_b not in after["keys"]
    # Kept: the running job untouched, decoys, persistent/protected/young volumes, snapshot, recent checkpoints.
    assert after["instances"][running] == "running"
    assert after["volumes"][data] == ("in-use", (running,)) and after["volumes"][scratch] == ("in-use", (running,))
    assert after["instances"][decoy_instance] == "running" and decoy_volume in after["volumes"]
    assert protected in after["volumes"] and young in after["volumes"] and snapshot in after["snapshots"]
    assert {ckpt2 + "model.pt", ckpt2 + jobs.MANIFEST_NAME, ckpt3 + "model.pt", staging_a} <= after["keys"]
    assert not report.failed, report.failed

    # The plan names every reason.
    reasons = {r.reason for e in report.plan.entries for r in e.reasons}
    assert {
        "training running",
        "persistent",
        "protected",
        "younger than the minimum age",
        "attached",
        "not managed",
        "not found",
        "latest complete checkpoint",
        "recent checkpoint",
        "job unfinished",
        "has snapshots",
    } <= reasons
    assert report.plan.entry(running).action is Action.KEEP  # type: ignore[union-attr]
    table = _artifact_rows("teardown-plan")
    assert {row["resource"] for row in table} >= {running, data, scratch, protected, young, decoy_volume}
    assert any("training running" in row["reasons"] for row in table)

    # Re-running changes nothing. Its windows are longer: by now the young things may be older than POLICY_S (the
    # first run alone can take that long on a loaded machine), and the claim is about what was done, not the clock.
    again = safe_teardown(request.model_copy(update={"min_age_minutes": 10, "checkpoint_recency_minutes": 10}))
    assert world(cloud) == after
    assert not again.failed and all(r.status == "already-done" for r in again.results)

    # The running job, waited for: its instance goes, the data volume is detached and kept, the scratch is gone.
    threading.Timer(2.0, _stop_training, args=(running, "run-a")).start()
    waited = safe_teardown(
        request.model_copy(
            update={
                "all_managed": False,
                "ids": [],
                "sweep": False,
                "job": "run-a",
                "wait_for_training": True,
                "training_wait_timeout_minutes": 1,
            }
        )
    )
    final = world(cloud)
    assert not waited.failed, waited.failed
    assert final["instances"][running] == "terminated"
    assert final["volumes"][data] == ("available", ())
    assert scratch not in final["volumes"]
    assert staging_a in final["keys"]  # the job record still says running: a resume would need its code


def _artifact_rows(prefix: str) -> list[dict[str, Any]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=prefix)),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    data = artifacts[0].data
    return json.loads(data) if isinstance(data, str) else list(data)  # type: ignore[arg-type]


def _kill_scenario(cloud: Sandbox) -> dict[str, str]:
    cloud.reset()
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    _job_record(cloud, "kill-c", "succeeded")
    staging = _staging(cloud, "kill-c")
    instance = _job_instance(cloud, "kill-c", "c-1")
    data = _volume("data-c", "kill-c", persistent=True, on=instance)
    scratch = _volume("scratch-c", "kill-c", on=instance)
    snapshot = create_snapshot.fn(data).id
    _start_training(cloud, instance, "kill-c")
    return {"instance": instance, "data": data, "scratch": scratch, "snapshot": snapshot, "staging": staging}


# make test kills a run after the persistent volume's detach (the instance still runs) and one after the terminate
# (the instance going, its volumes left); make test-exhaustive chains kills after every other step.
EVERY_RUN_KILLS = [Step.DETACH_PERSISTENT, Step.TERMINATE]


@pytest.mark.parametrize(
    "kill_points",
    [
        pytest.param(EVERY_RUN_KILLS, id="detach-terminate"),
        pytest.param(
            [s for s in list(Step)[:-1] if s not in EVERY_RUN_KILLS], id="the-rest", marks=pytest.mark.exhaustive
        ),
    ],
)
def test_killed_after_steps_in_turn_the_reruns_converge(
    cloud: Sandbox, monkeypatch: pytest.MonkeyPatch, kill_points: list[Step]
) -> None:
    """Run 1 dies after the first kill point's step, run 2 (starting from what run 1 left) after the second's, ...
    the last run completes. Every run re-plans from AWS as it is; the end state is the one an uninterrupted run
    reaches. (One chain rather than one fresh scenario per step: the latter costs ~18 s a step in the sandbox.)"""
    ids = _kill_scenario(cloud)
    request = TeardownRequest(
        job="kill-c",
        sweep=True,
        snapshot_retention=0,
        bucket=BUCKET,
        dry_run=False,
        force_training=True,
    )
    # Everything is old: nothing here is meant to be young (the clock moves through the flow's own seam).
    monkeypatch.setattr(flows.teardown, "planning_time", lambda _r, inv: inv.taken_at + timedelta(hours=2))
    for step in kill_points:  # never the last step (a run killed after it has completed)
        # Killed right after `step`: this run acts through that step only (each run re-plans from AWS as it is).
        steps = list(Step)[: list(Step).index(step) + 1]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(flows.teardown, "STEPS", steps)
            safe_teardown(request)
        done_steps = [s.value for s in steps]
        state = world(cloud)
        # Whatever the kill point: the persistent volume exists, and is never gone while its instance lives.
        assert ids["data"] in state["volumes"], done_steps
        # A run killed before its terminate step left the instance running (the kill really cut the run short).
        if Step.TERMINATE.value not in done_steps:
            assert state["instances"][ids["instance"]] == "running", done_steps
    report = safe_teardown(request)
    end = world(cloud)
    assert not report.failed, report.failed
    assert end["instances"][ids["instance"]] == "terminated"
    assert end["volumes"].get(ids["data"]) == ("available", ())  # persistent: detached and kept
    assert ids["scratch"] not in end["volumes"]
    assert ids["snapshot"] not in end["snapshots"]
    assert ids["staging"] not in end["keys"]


def test_training_started_after_the_plan_blocks_the_terminate(cloud: Sandbox) -> None:
    """The plan saw an idle instance; by the time the terminate step runs, a job has started there."""
    from prefect import flow

    from blocks.aws import load_account
    from core.teardown import Scope, TeardownPolicy, TrainingState, plan_teardown
    from flows.teardown import execute_plan
    from tasks.inventory import collect_inventory

    instance = _job_instance(cloud, "late-job", "late-1")
    wait_online.fn(instance)
    inventory = collect_inventory(load_account(None))
    policy = TeardownPolicy(min_age=timedelta(0))
    idle = {instance: TrainingState(instance_id=instance, status="idle")}
    plan = plan_teardown(inventory, scope=Scope(job="late-job"), now=datetime.now(UTC), policy=policy, training=idle)
    assert any(e.id == instance and e.action is Action.TERMINATE for e in plan.entries)

    _start_training(cloud, instance, "late-job")  # between the plan and the act

    @flow
    def act() -> list[Any]:
        return execute_plan(plan, TeardownRequest(job="late-job", dry_run=False), policy, timeout_s=30)

    results = {r.id: r for r in act()}
    terminate = next(r for r in results.values() if r.step is Step.TERMINATE)
    assert terminate.status == "failed" and "training started" in terminate.detail
    state = cloud.client("ec2").describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]
    assert state["State"]["Name"] == "running"  # untouched
