"""The generated policies, enforced: every flow runs in a sandbox with IAM enforcement on (sandbox/iam.py), as an
IAM user holding only `trainctl iam policy --for caller`, its instances running as roles holding only the instance
and prewarm policies. Then each statement of the three policies is shown to be needed: without it, the cheapest
call that uses it fails with an error naming the IAM action (for the SSM agent's statement: the instance never
comes Online), and nothing changed; with it back, the same call succeeds.

What the sandbox enforces (sandbox/iam.py): S3 by action and resource (prefix scoping is real); EC2, SSM and IAM
by action only, plus the implied ec2:CreateTags (tags at creation) and iam:PassRole (instance profiles). It
evaluates no conditions: the trainctl:managed tag conditions, ec2:CreateAction, s3:prefix and iam:PassedToService
are not checked here. So statements that grant the same action on different resource types (RunInstances on
instances vs. on AMIs and subnets, say) cannot be told apart: they are removed together, and
`test_statements_the_sandbox_cannot_tell_apart` lists them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core import iam, jobs
from core import tags as t
from core.ebs import VolumeSpec
from core.errors import TrainctlError
from core.jobs import JobSpec, TemplateSpec
from core.launch import LaunchOptions
from core.prewarm import PrewarmSpec
from core.transfer import TransferRequest
from flows.prewarm import prewarm
from flows.teardown import TeardownRequest, safe_teardown
from flows.train_launch import train_launch
from flows.transfer import transfer
from sandbox import Sandbox
from tasks.ebs import (
    create_snapshot,
    create_volume,
    delete_snapshot,
    delete_volume,
    describe_volume,
)
from tasks.ec2_instances import LaunchRequest, keep_on_termination, launch_instance, resolve_image
from tasks.pricing import get_products, pricing_client
from tasks.s3 import delete_prefix, list_prefix, put_json
from tasks.ssm import run_command, wait_online

pytestmark = pytest.mark.sandbox
BUCKET = "ml-jobs"
DATA = "s3://datasets/imagenet/"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train.py"
SCOPE = iam.Scope.of([BUCKET], data=[DATA])
CALLER = iam.caller_policy(SCOPE)
USER = "trainctl-runner"
AZ = "us-east-1a"


_CLIENTS: dict[tuple[str, str], Any] = {}


def _root(cloud: Sandbox, service: str) -> Any:
    """The sandbox's root client, made once (building a boto3 client costs ~0.3 s)."""
    key = (cloud.endpoint_url, service)
    if key not in _CLIENTS:
        _CLIENTS[key] = cloud.client(service)
    return _CLIENTS[key]


def _put_caller_policy(cloud: Sandbox, policy: iam.Policy) -> None:
    _root(cloud, "iam").put_user_policy(
        UserName=USER, PolicyName=policy.name, PolicyDocument=json.dumps(policy.document())
    )


def _put_policy(cloud: Sandbox, policy: iam.Policy) -> None:
    """The caller's policy on the user, an instance policy on its role (effective at once, also for sessions)."""
    role = iam.profile_role(policy.role, SCOPE)
    if role is None:
        _put_caller_policy(cloud, policy)
        return
    document = json.dumps(policy.document())
    _root(cloud, "iam").put_role_policy(RoleName=role, PolicyName=policy.name, PolicyDocument=document)


def _make_roles(cloud: Sandbox) -> None:
    """The two instance roles and profiles, made the way `trainctl iam policy --for instance|prewarm` says."""
    client = cloud.client("iam")
    for policy in (iam.instance_policy(SCOPE), iam.prewarm_policy(SCOPE)):
        name = iam.profile_role(policy.role, SCOPE)
        assert name is not None
        client.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(iam.EC2_TRUST_POLICY))
        client.put_role_policy(RoleName=name, PolicyName=policy.name, PolicyDocument=json.dumps(policy.document()))
        client.create_instance_profile(InstanceProfileName=name)
        client.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)


@pytest.fixture(scope="module")
def cloud(prefect_harness: None) -> Iterator[Sandbox]:
    """A sandbox with IAM enforced; the product code runs with the IAM user's keys (the sandbox's own keys, which
    `cloud.client` uses to set things up and look, are the account's root)."""
    from blocks.aws import clear_client_cache

    names = (
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
    )
    saved = {k: os.environ.get(k) for k in names}
    with Sandbox(boot_delay=0.2, iam=True) as sandbox:
        client = sandbox.client("iam")
        client.create_user(UserName=USER)
        _put_caller_policy(sandbox, CALLER)
        key = client.create_access_key(UserName=USER)["AccessKey"]
        _make_roles(sandbox)
        for bucket in (BUCKET, "datasets"):
            sandbox.client("s3").create_bucket(Bucket=bucket)
        os.environ.update(sandbox.env)
        os.environ.update(AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"])
        for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):  # tests/conftest.py sets dummy ones
            os.environ.pop(name, None)
        clear_client_cache()
        try:
            yield sandbox
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            clear_client_cache()


def _keys(cloud: Sandbox, bucket: str, prefix: str = "") -> set[str]:
    pages = _root(cloud, "s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def _instances(cloud: Sandbox, *states: str) -> dict[str, str]:
    found = _root(cloud, "ec2").describe_instances()["Reservations"]
    return {i["InstanceId"]: i["State"]["Name"] for r in found for i in r["Instances"] if i["State"]["Name"] in states}


def _code_dir(tmp_path: Path) -> str:
    code = tmp_path / "code"
    code.mkdir()
    shutil.copy(EXAMPLE, code / "train.py")
    return str(code)


def test_every_flow_runs_with_only_the_generated_policies(cloud: Sandbox, tmp_path: Path) -> None:
    # The caller's keys really are restricted: a call outside the policy is refused, naming the action.
    with pytest.raises(TrainctlError, match="s3:PutObject"):
        put_json.fn(f"s3://{BUCKET}/elsewhere/x.json", {})
    s3 = cloud.client("s3")
    for i in range(20):
        s3.put_object(Bucket="datasets", Key=f"imagenet/train/img-{i:03d}.jpg", Body=os.urandom(100 + i))

    # prewarm: the temporary instance (prewarm role) reads the source onto a new persistent volume.
    warmed = prewarm(
        PrewarmSpec(
            source=DATA,
            volume=VolumeSpec(name="imagenet", size_gib=10),
            job="demo",
            availability_zone=AZ,
            instance_profile=iam.profile_role("prewarm", SCOPE),
        )
    )
    assert warmed.files == 20 and warmed.temporary_instance_terminated
    assert _instances(cloud, "pending", "running") == {}

    # train-launch: the agent (instance role) restores, checkpoints and uploads its log and status.
    report = train_launch(
        JobSpec(
            name="demo",
            bucket=BUCKET,
            template=TemplateSpec(instance_type="t3.micro", instance_profile=iam.profile_role("instance", SCOPE)),
            code_dir=_code_dir(tmp_path),
            command=["python3", "train.py", "--steps", "2", "--step-seconds", "0.2"],
            data_volume_id=warmed.volume_id,
            mount_point="/data",
            sync_interval_s=1,
        ),
        LaunchOptions(wait=True),
    )
    assert report.status == "succeeded" and report.exit_code == 0 and report.instance_terminated
    keys = _keys(cloud, BUCKET, f"{jobs.JOBS_ROOT}/demo/")
    assert f"{jobs.JOBS_ROOT}/demo/checkpoints/{jobs.LATEST_NAME}" in keys
    assert (
        f"{jobs.JOBS_ROOT}/demo/logs/attempt-1.log" in keys and f"{jobs.JOBS_ROOT}/demo/status/attempt-1.json" in keys
    )

    # transfer: local → instance through the job's staging prefix (the caller uploads, the instance downloads).
    worker = launch_instance.fn(
        LaunchRequest(
            name="worker",
            role=t.Role.TRAIN,
            idempotency_key="iam-worker",
            instance_type="t3.micro",
            job="demo",
            availability_zone=AZ,
            instance_profile=iam.profile_role("instance", SCOPE),
        )
    )
    wait_online.fn(worker.id)
    src = tmp_path / "src"
    for i in range(5):
        (src / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 2}" / f"f{i}.bin").write_bytes(os.urandom(1000 * (i + 1)))
    moved = transfer(TransferRequest(src=str(src), dst="job:demo:/data/in", staging=f"s3://{BUCKET}"))
    assert (moved.files_copied, moved.verified, moved.mismatches) == (5, True, [])
    landed = Path(cloud.runtime.instance_root(worker.id)) / "data" / "in"
    assert sorted(p.name for p in landed.rglob("*.bin")) == [f"f{i}.bin" for i in range(5)]
    assert not any("/staging/transfer-" in k for k in _keys(cloud, BUCKET))

    # The instance's keys are its role's: it may write the job's prefix, not elsewhere in the bucket.
    put = 's5() { s5cmd --endpoint-url "$AWS_ENDPOINT_URL" "$@"; }; echo x > /tmp/x; '
    ok = run_command.fn(worker.id, [put + f"s5 cp /tmp/x s3://{BUCKET}/{jobs.JOBS_ROOT}/demo/probe.txt"])
    refused = run_command.fn(worker.id, [put + f"s5 cp /tmp/x s3://{BUCKET}/outside.txt"], check=False)
    assert ok.ok and not refused.ok and "AccessDenied" in refused.stdout + refused.stderr
    assert f"{jobs.JOBS_ROOT}/demo/probe.txt" in _keys(cloud, BUCKET) and "outside.txt" not in _keys(cloud, BUCKET)

    # teardown: the job's instance goes (after a training check over SSM), its persistent data volume stays.
    done = safe_teardown(TeardownRequest(job="demo", bucket=BUCKET, dry_run=False, min_age_minutes=0))
    assert not done.failed, done.failed
    assert _instances(cloud, "terminated").get(worker.id) == "terminated"
    volume = cloud.client("ec2").describe_volumes(VolumeIds=[warmed.volume_id])["Volumes"][0]
    assert volume["State"] == "available"


# -- each caller statement is needed ---------------------------------------------------------------------------------


@dataclass
class Case:
    """Without `sids` of `policy`, `probe` fails naming `action` (the cheapest call that needs them)."""

    sids: tuple[str, ...]
    action: str
    probe: Callable[[dict[str, Any]], object]
    policy: iam.Policy = CALLER


def _state(cloud: Sandbox) -> dict[str, Any]:
    """What exists: instances and their states, volume and snapshot IDs, S3 keys of both buckets."""
    ec2 = _root(cloud, "ec2")
    return {
        "instances": _instances(cloud, "pending", "running", "stopping", "stopped", "shutting-down", "terminated"),
        "volumes": {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]},
        "snapshots": {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]},
        "keys": _keys(cloud, BUCKET) | _keys(cloud, "datasets"),
    }


def _next(world: dict[str, Any]) -> int:
    """A new number per probe call (names and idempotency keys must not repeat)."""
    world["n"] = world.get("n", 0) + 1
    return int(world["n"])


def _launch(profile: str | None) -> Callable[[dict[str, Any]], object]:
    def probe(world: dict[str, Any]) -> object:
        return launch_instance.fn(
            LaunchRequest(
                name="probe",
                role=t.Role.TRAIN,
                idempotency_key=f"probe-{_next(world)}",
                instance_type="t3.micro",
                availability_zone=AZ,
                instance_profile=profile,
            )
        )

    return probe


def _make_volume(world: dict[str, Any]) -> object:
    return create_volume.fn(VolumeSpec(name=f"probe-{_next(world)}", size_gib=1), availability_zone=AZ)


def _any_image(world: dict[str, Any]) -> object:
    return resolve_image(LaunchRequest(name="x", role=t.Role.TRAIN, idempotency_key="x", instance_type="t3.micro"))


def _ask_prices(world: dict[str, Any]) -> object:
    # A type never asked before: the answer cannot come from the day's price cache.
    return get_products(pricing_client(), "AmazonEC2", {"instanceType": f"probe{_next(world)}.large"})


CASES: list[Case] = [
    Case(("DescribeEc2",), "ec2:DescribeVolumes", lambda w: describe_volume.fn(w["volume"])),
    Case(("ReadPrices",), "pricing:GetProducts", _ask_prices),
    Case(("LaunchTaggedInstances", "LaunchFromImagesAndSubnets"), "ec2:RunInstances", _launch(None)),
    Case(("CreateTaggedVolumes", "RestoreManagedSnapshots"), "ec2:CreateVolume", _make_volume),
    Case(
        ("SnapshotManagedVolumes", "CreateTaggedSnapshots"),
        "ec2:CreateSnapshot",
        lambda w: create_snapshot.fn(w["volume"], wait=False),
    ),
    Case(("TagOnCreate", "RetagManagedVolumes"), "ec2:CreateTags", _make_volume),
    Case(
        ("ChangeManagedInstances",),
        "ec2:ModifyInstanceAttribute",
        lambda w: keep_on_termination.fn(w["instance"], w["root_volume"]),
    ),
    Case(("ChangeManagedVolumes",), "ec2:DeleteVolume", lambda w: delete_volume.fn(w["doomed"], force=True)),
    Case(("DeleteManagedSnapshots",), "ec2:DeleteSnapshot", lambda w: delete_snapshot.fn(w["doomed_snap"], force=True)),
    Case(("PassInstanceRoles",), "iam:PassRole", _launch("trainctl-instance")),
    Case(
        ("RunShellOnManagedInstances", "RunShellDocument"),
        "ssm:SendCommand",
        lambda w: run_command.fn(w["instance"], ["echo hi"]),
    ),
    Case(("FollowCommands",), "ssm:DescribeInstanceInformation", lambda w: wait_online.fn(w["instance"])),
    Case(("ReadPublicAmiParameters",), "ssm:GetParameter", _any_image),
    Case(
        ("ListTrainctlPrefixes1",),
        "s3:ListBucket",
        lambda w: list_prefix.fn(f"s3://{BUCKET}/{jobs.JOBS_ROOT}/", require_objects=False),
    ),
    Case(("ListTrainctlPrefixes2",), "s3:ListBucket", lambda w: list_prefix.fn(DATA, require_objects=False)),
    Case(
        ("ReadWriteTrainctlObjects",),
        "s3:PutObject",
        lambda w: put_json.fn(f"s3://{BUCKET}/{jobs.JOBS_ROOT}/probe/job.json", {"probe": True}),
    ),
    Case(
        ("ListUnfinishedUploads",),
        "s3:ListBucketMultipartUploads",
        lambda w: delete_prefix.fn(f"s3://{BUCKET}/trainctl/staging/probe/"),
    ),
]


INSTANCE = iam.instance_policy(SCOPE)
PREWARM = iam.prewarm_policy(SCOPE)
S5 = 's5() { s5cmd --endpoint-url "$AWS_ENDPOINT_URL" "$@"; }; '


def _on(instance: str, script: str) -> Callable[[dict[str, Any]], object]:
    """A probe that runs `script` on the world's instance (`instance` or `prewarmer`): s5cmd with its role's keys."""
    return lambda w: run_command.fn(w[instance], [S5 + script], what=script)


def _comes_online(instance: str) -> Callable[[dict[str, Any]], object]:
    return lambda w: wait_online.fn(w[instance], timeout_s=1)


INSTANCE_CASES: list[Case] = [
    Case(("SsmAgent",), "did not come Online", _comes_online("instance"), INSTANCE),
    Case(("ListJobPrefixes1",), "s3:ListBucket", _on("instance", f"s5 ls s3://{BUCKET}/trainctl/jobs/"), INSTANCE),
    Case(("ListJobPrefixes2",), "s3:ListBucket", _on("instance", f"s5 ls {DATA}"), INSTANCE),
    Case(
        ("ReadWriteJobObjects",),
        "s3:PutObject",
        _on("instance", f"echo x > /tmp/x && s5 cp /tmp/x s3://{BUCKET}/trainctl/jobs/probe/x"),
        INSTANCE,
    ),
    Case(
        ("ReadDatasets",),
        "s3:GetObject",
        _on("instance", "aws s3api get-object --bucket datasets --key imagenet/probe.bin /tmp/probe.bin"),
        INSTANCE,
    ),
    Case(("SsmAgent",), "did not come Online", _comes_online("prewarmer"), PREWARM),
    Case(("ListSource",), "s3:ListBucket", _on("prewarmer", f"s5 ls {DATA}"), PREWARM),
    # s5cmd reads with a HEAD first, whose 403 has no body to name the action: the aws CLI's GetObject has one.
    Case(
        ("ReadSource",),
        "s3:GetObject",
        _on("prewarmer", "aws s3api get-object --bucket datasets --key imagenet/probe.bin /tmp/probe.bin"),
        PREWARM,
    ),
]


@pytest.fixture(scope="module")
def world(cloud: Sandbox) -> dict[str, Any]:
    """What the probes act on, made with the full policy: a managed instance, volumes and snapshots."""
    for policy in (CALLER, INSTANCE, PREWARM):
        _put_policy(cloud, policy)
    _root(cloud, "s3").put_object(Bucket="datasets", Key="imagenet/probe.bin", Body=b"probe")
    instance, prewarmer = (
        launch_instance.fn(
            LaunchRequest(
                name=role,
                role=t.Role.TRAIN,
                idempotency_key=f"iam-world-{role}",
                instance_type="t3.micro",
                availability_zone=AZ,
                instance_profile=iam.profile_role(role, SCOPE),
            )
        )
        for role in ("instance", "prewarm")
    )
    wait_online.fn(instance.id)
    wait_online.fn(prewarmer.id)
    volume = create_volume.fn(VolumeSpec(name="kept", size_gib=1), availability_zone=AZ).id
    doomed = create_volume.fn(VolumeSpec(name="doomed", size_gib=1, persistent=False), availability_zone=AZ).id
    return {
        "instance": instance.id,
        "prewarmer": prewarmer.id,
        "root_volume": instance.volume_ids[0],
        "volume": volume,
        "doomed": doomed,
        "doomed_snap": create_snapshot.fn(volume).id,
    }


@pytest.mark.parametrize("policy", [CALLER, INSTANCE, PREWARM], ids=lambda p: p.role)
def test_cases_cover_every_statement(policy: iam.Policy) -> None:
    covered = [sid for case in [*CASES, *INSTANCE_CASES] if case.policy is policy for sid in case.sids]
    assert sorted(covered) == sorted(policy.sids())


@pytest.mark.parametrize("case", [*CASES, *INSTANCE_CASES], ids=lambda c: f"{c.policy.role}:{'+'.join(c.sids)}")
def test_each_statement_is_needed(cloud: Sandbox, world: dict[str, Any], case: Case) -> None:
    before = _state(cloud)
    _put_policy(cloud, case.policy.without(*case.sids))
    try:
        with pytest.raises(TrainctlError) as refused:
            case.probe(world)
        assert case.action in str(refused.value)
        assert _state(cloud) == before  # refused before anything changed
    finally:
        _put_policy(cloud, case.policy)
    case.probe(world)  # the same call, with the statement back: the refusal was the statement's


def test_the_instance_reads_the_dataset_but_cannot_write_or_delete_it(cloud: Sandbox, world: dict[str, Any]) -> None:
    before = _keys(cloud, "datasets")
    read = run_command.fn(world["instance"], [S5 + f"s5 cat {DATA}probe.bin"])
    assert read.stdout.strip() == "probe"
    for script in (f"echo x > /tmp/x && s5 cp /tmp/x {DATA}written.txt", f"s5 rm {DATA}probe.bin"):
        refused = run_command.fn(world["instance"], [S5 + script], check=False)
        assert not refused.ok and "AccessDenied" in (refused.stdout + refused.stderr).replace(" ", ""), script
    assert _keys(cloud, "datasets") == before and "imagenet/probe.bin" in before


def test_statements_the_sandbox_cannot_tell_apart() -> None:
    """Removed together above: each grants its action on other resource types than its partner, which only AWS
    tells apart (the sandbox matches every Resource outside S3). Listed so the report says what is not enforced."""
    grouped = {case.action: case.sids for case in CASES if len(case.sids) > 1}
    for action, sids in grouped.items():
        assert sorted(CALLER.granting(action)) == sorted(sids), action
        # Different resource types or conditions: only AWS's evaluation needs each of them.
        scopes = {
            (frozenset(s.resources), json.dumps(s.condition, sort_keys=True))
            for s in CALLER.statements
            if s.sid in sids
        }
        assert len(scopes) == len(sids), action
    assert set(grouped) == {
        "ec2:RunInstances",
        "ec2:CreateVolume",
        "ec2:CreateSnapshot",
        "ec2:CreateTags",
        "ssm:SendCommand",
    }
