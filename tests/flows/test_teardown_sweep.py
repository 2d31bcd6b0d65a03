"""The sweep finds what killed flows leave: train-launch and prewarm are killed (kill -9: nothing after the kill
point runs, no cleanup) after each of their steps, then one `teardown --sweep --yes` leaves nothing billing and
loses nothing persistent.

Each kill point runs the flow's own tasks (`.fn()`, in the flow's order) up to its step and abandons the rest.
The kill points share one sandbox and one sweep (a flow run costs ~1 s; an instance a few): in make test one of
each kind (EVERY_RUN), in make test-exhaustive the rest. "The clock past the
age rules" is a policy with every age at zero (configuration, set through the request's overrides): EC2 create
times and S3 LastModified cannot be set back in the sandbox.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from core import jobs
from core import tags as t
from core.ebs import VolumeSpec
from core.jobs import AttemptRecord, JobRecord, JobSpec, TemplateSpec
from core.launch import (
    AGENT_SPEC,
    AGENT_TARBALL,
    CODE_TARBALL,
    agent_spec,
    data_mount_script,
    launch_key,
    ship_script,
    start_agent_script,
)
from core.prewarm import mount_script, sync_manifest, sync_script
from core.teardown import Action
from flows.teardown import TeardownReport, TeardownRequest, safe_teardown
from sandbox import Sandbox
from tasks.code import package_agent, package_code
from tasks.ebs import attach_volume, create_volume
from tasks.ec2_instances import LaunchRequest, launch_instance
from tasks.s3 import put_json, staging_uri, upload_file
from tasks.ssm import run_command, wait_online
from tests.conftest import exported_sandbox

pytestmark = pytest.mark.sandbox
BUCKET = "sweep-jobs"
DATA = "sweep-data"
ZONE = "us-east-1a"
LAUNCH_KILLS = ["run-instances", "record", "ssm-online", "attach", "code-upload", "agent-start"]
PREWARM_KILLS = ["create-volume", "run-instance", "attach", "sync"]
# make test sweeps after one kill of each rule and state: an instance its record does not name, one whose agent
# never started with the data volume attached, one whose agent ran its job; a pending persistent volume alone,
# a non-persistent one with its prewarm instance, one mid-sync with its staging. make test-exhaustive sweeps
# after the rest (the same rules from the steps between).
EVERY_RUN = ({"run-instances", "attach", "agent-start"}, {"create-volume", "run-instance", "sync"})
# The rule each killed launch's instance is found by.
LAUNCH_RULE = {
    "run-instances": "attempt not in the job record",
    "record": "agent never started",
    "ssm-online": "agent never started",
    "attach": "agent never started",
    "code-upload": "agent never started",
    "agent-start": "agent heartbeat stopped",
}
# The rule each killed launch's staging is found by: the agent that started ran its job to the end, and the job
# record follows the agent's final status (core.jobs.reconcile), so that job has ended.
STAGING_RULE = {kill: "staging no instance uses" for kill in LAUNCH_KILLS} | {"agent-start": "job ended"}


@pytest.fixture(scope="module")
def cloud(prefect_harness: None) -> Iterator[Sandbox]:
    with exported_sandbox(boot_delay=0.2) as sandbox:
        yield sandbox


def _staging_root(job: str) -> str:
    """The job's staging (every attempt's, and its transfers'): one entry in the plan."""
    return str(jobs.job_prefix(BUCKET, job).join("staging")) + "/"


def _launch_until(kill: str, workdir: Path) -> dict[str, Any]:
    """train-launch's steps (flows/train_launch.py `_launch`) for job `k-<kill>`, abandoned after `kill`."""
    job = f"k-{kill}"
    data = create_volume.fn(VolumeSpec(name=f"data-{job}", size_gib=10), availability_zone=ZONE, job=job)
    code_dir = workdir / job
    code_dir.mkdir()
    (code_dir / "train.py").write_text("print('trained')\n")
    spec = JobSpec(
        name=job,
        bucket=BUCKET,
        template=TemplateSpec(instance_type="t3.micro"),
        code_dir=str(code_dir),
        command=["python3", "train.py"],
        data_volume_id=data.id,
        # Kept after its job, so that the sweep's heartbeat rule is what ends it (without keep_instance the agent
        # shuts it down itself: tests/flows/test_train_launch.py).
        keep_instance=True,
    )
    staging = jobs.staging_prefix(BUCKET, job, 1)
    record = JobRecord.first(spec, now=datetime.now(UTC))
    put_json.fn(jobs.job_record_uri(BUCKET, job), record.model_dump(mode="json"))
    code = package_code(spec.code_dir, str(workdir / f"{job}-{CODE_TARBALL}"), limit_bytes=spec.code_limit_bytes)
    agent = package_agent(str(workdir / f"{job}-{AGENT_TARBALL}"))
    upload_file.fn(code.path, staging + CODE_TARBALL)
    upload_file.fn(agent.path, staging + AGENT_TARBALL)
    request = LaunchRequest(
        name=f"trainctl-{job}",
        role=t.Role.TRAIN,
        idempotency_key=launch_key(job, 1),
        instance_type="t3.micro",
        job=job,
        attempt=1,
        availability_zone=ZONE,
    )
    instance = launch_instance.fn(request)
    left = {"job": job, "instance": instance.id, "data": data.id, "staging": _staging_root(job)}
    if kill == "run-instances":
        return left
    record = record.with_attempt(instance_id=instance.id)
    put_json.fn(jobs.job_record_uri(BUCKET, job), record.model_dump(mode="json"))
    if kill == "record":
        return left
    wait_online.fn(instance.id)
    if kill == "ssm-online":
        return left
    attached = attach_volume.fn(data.id, instance.id)
    if kill == "attach":
        return left
    device = next(a.device for a in attached.attachments if a.instance_id == instance.id)
    run_command.fn(instance.id, data_mount_script(data.id, device, spec.filesystem, spec.resolved_mount_point))
    spec_path = workdir / f"{job}-{AGENT_SPEC}"
    spec_path.write_text(json.dumps(agent_spec(spec, attempt=1, instance_id=instance.id)))
    upload_file.fn(str(spec_path), staging + AGENT_SPEC)
    run_command.fn(instance.id, ship_script(job, staging))
    if kill == "code-upload":
        return left
    run_command.fn(instance.id, start_agent_script(job))
    return left


def _prewarm_until(kill: str, cloud: Sandbox) -> dict[str, Any]:
    """prewarm's steps (flows/prewarm.py) for a new volume, abandoned after `kill` ("sync": while it runs)."""
    persistent = kill != "run-instance"  # one non-persistent volume: the sweep deletes it
    volume = create_volume.fn(
        VolumeSpec(name=f"pw-{kill}", size_gib=10, persistent=persistent),
        availability_zone=ZONE,
        extra_tags={t.PREWARM: t.PREWARM_PENDING},
    )
    left: dict[str, Any] = {"volume": volume.id, "persistent": persistent}
    if kill == "create-volume":
        return left
    request = LaunchRequest(
        name=f"trainctl-prewarm-{volume.id}",
        role=t.Role.PREWARM,
        idempotency_key=f"prewarm:killed:{volume.id}",
        instance_type="t3.micro",
        availability_zone=ZONE,
    )
    instance = launch_instance.fn(request)
    left["instance"] = instance.id
    if kill == "run-instance":
        return left
    wait_online.fn(instance.id)
    attached = attach_volume.fn(volume.id, instance.id)
    if kill == "attach":
        return left
    device = next(a.device for a in attached.attachments if a.instance_id == instance.id)
    run_command.fn(instance.id, mount_script(volume.id, device, "xfs"))
    # The sync is sent and never waited for: the flow dies while it runs.
    manifest_uri = staging_uri(BUCKET, f"prewarm-{kill}", "manifest.json")
    put_json.fn(manifest_uri, sync_manifest({"f000.bin": 4096, "f001.bin": 4096}))
    left["staging"] = manifest_uri.rsplit("/", 1)[0] + "/"
    script = ["sleep 2", *sync_script(f"s3://{DATA}/set/", volume.id, "", manifest_uri, kill)]
    cloud.client("ssm").send_command(
        InstanceIds=[instance.id], DocumentName="AWS-RunShellScript", Parameters={"commands": script}
    )
    return left


def _killed_copies(cloud: Sandbox) -> dict[str, Any]:
    """What a killed code upload and a killed transfer leave: an unfinished multipart upload (parts billed,
    invisible to listings) in a job's staging, and a transfer's staging folder with one of its own."""
    s3 = cloud.client("s3")
    put_json.fn(
        jobs.job_record_uri(BUCKET, "k-upload"),
        JobRecord(
            name="k-upload",
            bucket=BUCKET,
            attempts=[AttemptRecord(number=1, created_at=datetime.now(UTC))],
            created_at=datetime.now(UTC),
        ).model_dump(mode="json"),
    )
    staging = jobs.staging_prefix(BUCKET, "k-upload", 1)
    key = staging.removeprefix(f"s3://{BUCKET}/") + CODE_TARBALL
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=b"c" * (5 * 1024 * 1024))
    s3.put_object(Bucket=BUCKET, Key=staging.removeprefix(f"s3://{BUCKET}/") + AGENT_TARBALL, Body=b"agent")
    transfer = "trainctl/staging/transfer-killed/"
    s3.put_object(Bucket=BUCKET, Key=transfer + "part-0001", Body=b"x" * 100)
    s3.create_multipart_upload(Bucket=BUCKET, Key=transfer + "big.bin")
    return {"staging": _staging_root("k-upload"), "transfer": f"s3://{BUCKET}/{transfer}"}


def _world(cloud: Sandbox) -> dict[str, Any]:
    ec2, s3 = cloud.client("ec2"), cloud.client("s3")
    instances = {
        i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
    }
    volumes = {
        v["VolumeId"]: (v["State"], t.from_aws(v.get("Tags")).get(t.PERSISTENT) == "true")
        for v in ec2.describe_volumes()["Volumes"]
    }
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    uploads = {(u["Key"], u["UploadId"]) for u in s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])}
    return {"instances": instances, "volumes": volumes, "keys": keys, "uploads": uploads}


def _sweep(*, dry_run: bool) -> TeardownReport:
    return safe_teardown(
        TeardownRequest(
            sweep=True,
            bucket=BUCKET,
            dry_run=dry_run,
            min_age_minutes=0,
            prewarm_max_age_hours=0,
            orphan_volume_age_hours=0,
            orphan_instance_age_minutes=0,
            heartbeat_timeout_minutes=0,
            stale_staging_age_hours=0,
            upload_max_age_hours=0,
        )
    )


def _prefix_keys(world: dict[str, Any], uri: str) -> set[str]:
    prefix = uri.removeprefix(f"s3://{BUCKET}/")
    return {k for k in world["keys"] if k.startswith(prefix)}


def _rules(report: TeardownReport, resource_id: str) -> set[str]:
    entry = report.plan.entry(resource_id)
    assert entry is not None, resource_id
    return {r.reason for r in entry.reasons}


@pytest.mark.parametrize(
    ("launch_kills", "prewarm_kills"),
    [
        pytest.param(*EVERY_RUN, id="one-of-each"),
        pytest.param(
            set(LAUNCH_KILLS) - EVERY_RUN[0],
            set(PREWARM_KILLS) - EVERY_RUN[1],
            id="the-rest",
            marks=pytest.mark.exhaustive,
        ),
    ],
)
def test_one_sweep_after_launches_and_prewarms_killed_after_a_step(
    cloud: Sandbox, tmp_path: Path, launch_kills: set[str], prewarm_kills: set[str]
) -> None:
    cloud.reset()
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.create_bucket(Bucket=DATA)
    for n in range(20):
        s3.put_object(Bucket=DATA, Key=f"set/f{n:03d}.bin", Body=bytes([n]) * 4096)
    launches = {kill: _launch_until(kill, tmp_path) for kill in LAUNCH_KILLS if kill in launch_kills}
    prewarms = {kill: _prewarm_until(kill, cloud) for kill in PREWARM_KILLS if kill in prewarm_kills}
    copies = _killed_copies(cloud)
    if "agent-start" in launches:  # that agent runs its (short) job to the end: its heartbeat then stops
        status_key = jobs.status_uri(BUCKET, "k-agent-start", 1).removeprefix(f"s3://{BUCKET}/")
        assert cloud.wait_for(lambda: status_key in _world(cloud)["keys"] and _final(s3, status_key), timeout=30)

    before = _world(cloud)
    live = {s for s in before["instances"].values() if s in {"pending", "running"}}
    assert live and len(before["uploads"]) == 2
    for left in launches.values():
        assert before["instances"][left["instance"]] == "running" and _prefix_keys(before, left["staging"])

    plan = _sweep(dry_run=True)
    assert _world(cloud) == before  # a dry run changes nothing
    for kill, left in launches.items():
        assert LAUNCH_RULE[kill] in _rules(plan, left["instance"]), kill
        assert plan.plan.entry(left["instance"]).action is Action.TERMINATE, kill  # type: ignore[union-attr]
        assert STAGING_RULE[kill] in _rules(plan, left["staging"]), kill
    for kill, left in prewarms.items():
        assert "left by an unfinished prewarm" in _rules(plan, left["volume"]), kill
        if "instance" in left:
            assert "prewarm instance left running" in _rules(plan, left["instance"]), kill
    assert "old staging" in _rules(plan, copies["transfer"])
    assert any(e.kind == "upload" and e.action is Action.DELETE for e in plan.plan.entries)

    report = _sweep(dry_run=False)
    assert not report.failed, report.failed
    after = _world(cloud)
    # Nothing bills: no instance left running or stopped, no ephemeral volume, no unfinished upload, no staging.
    assert not {i: s for i, s in after["instances"].items() if s not in {"terminated", "shutting-down"}}
    assert all(persistent and state == "available" for state, persistent in after["volumes"].values())
    assert after["uploads"] == set()
    for kill, left in launches.items():
        assert _prefix_keys(after, left["staging"]) == set(), kill
        assert jobs.job_record_uri(BUCKET, left["job"]).removeprefix(f"s3://{BUCKET}/") in after["keys"]  # kept
    assert "staging no instance uses" in _rules(plan, copies["staging"])
    assert _prefix_keys(after, copies["staging"]) == set() and _prefix_keys(after, copies["transfer"]) == set()
    if "sync" in prewarms:
        assert _prefix_keys(after, prewarms["sync"]["staging"]) == set()  # the killed prewarm's list of keys
    # Nothing persistent is lost: every data volume, and every persistent volume of a killed prewarm, is there.
    for kill, left in launches.items():
        assert after["volumes"].get(left["data"]) == ("available", True), kill
    for kill, left in prewarms.items():
        assert (left["volume"] in after["volumes"]) is left["persistent"], kill


def _final(s3: Any, key: str) -> bool:
    try:
        doc = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return False
    return bool(doc.get("status") in {"succeeded", "failed"})
