"""`trainctl ebs ...` through typer's CliRunner against one module-scoped sandbox (the local cloud).

Outcomes are asserted on the cloud itself (boto3 against the sandbox), not only on exit codes. The sandbox runs
moto's global backends in this process: no `mock_aws` may run while it is up.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from cli.ebs import VolumeTypeChoice
from cli.main import app
from core import tags as t
from core.ebs import LIMITS
from sandbox import Sandbox
from tests.conftest import raw_instance

JOB = "bert-pretrain"


@pytest.fixture(scope="module")
def cloud() -> Iterator[Sandbox]:
    with Sandbox(boot_delay=0.1) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def ec2(cloud: Sandbox) -> Any:
    return cloud.client("ec2")


@pytest.fixture
def run(cloud: Sandbox) -> Any:
    """Invoke the CLI in-process with the sandbox's environment (and no stray profile from the host)."""
    runner = CliRunner()
    env: dict[str, str | None] = {"AWS_PROFILE": None, **cloud.env}

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(app, list(args), env=env, input=input)

    return invoke


def run_json(run: Any, *args: str) -> Any:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # stdout is exactly one JSON document


def launch(cloud: Sandbox, ec2: Any, zone: str) -> str:
    instance = raw_instance(ec2, t.managed_tags(job=JOB, role=t.Role.TRAIN), zone)

    def running() -> bool:
        data = ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]
        return bool(data["State"]["Name"] == "running")

    assert cloud.wait_for(running, timeout=10)
    return instance


def volume_ids(ec2: Any) -> set[str]:
    return {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}


def exists(ec2: Any, volume_id: str) -> bool:
    return bool(ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [volume_id]}])["Volumes"])


def create(run: Any, name: str, *extra: str) -> dict[str, Any]:
    volume: dict[str, Any] = run_json(run, "ebs", "create", name, "--size", "10", *extra)
    return volume


def test_create_then_list(run: Any, ec2: Any) -> None:
    made = create(run, "ds-list", "--az", "us-east-1b", "--job", JOB, "--protected")
    assert made["name"] == "ds-list" and made["availability_zone"] == "us-east-1b" and made["state"] == "available"
    assert made["persistent"] and made["protected"] and made["encrypted"] and made["volume_type"] == "gp3"

    listing = run_json(run, "ebs", "list")
    assert listing["region"] == "us-east-1"
    volumes = {v["id"]: v for v in listing["volumes"]}
    shown = volumes[made["id"]]
    assert shown["name"] == "ds-list" and shown["job"] == JOB and shown["snapshot_count"] == 0
    assert shown["persistent"] and shown["protected"] and shown["attached_instance_id"] is None
    assert isinstance(shown["age_seconds"], int)
    tags = t.from_aws(ec2.describe_volumes(VolumeIds=[made["id"]])["Volumes"][0]["Tags"])
    assert tags[t.MANAGED] == "true" and tags[t.JOB] == JOB


def test_create_ephemeral_in_the_zone_of_a_type(run: Any) -> None:
    made = create(run, "ds-scratch", "--ephemeral", "--for-type", "p3dn.24xlarge", "--no-encrypt")
    assert made["availability_zone"] == "us-east-1c" and not made["persistent"] and not made["encrypted"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--size", "0"), "size_gib: 0 is not valid"),
        (("--size", "20000"), "size_gib: 20000 is not valid"),
        (("--size", "10", "--iops", "100"), "iops: 100 is not valid"),
        (("--size", "10", "--throughput", "2000"), "throughput: 2000 is not valid"),
        (("--size", "10", "--az", "us-east-1z"), "availability_zone: 'us-east-1z' is not valid"),
        (("--size", "10", "--az", "us-east-1a", "--for-type", "t3.micro"), "at most one of"),
        (("--size", "10", "--type", "gp9"), None),  # typer's own choice check
    ],
)
def test_create_bad_input_exit_2_and_nothing_created(
    run: Any, ec2: Any, args: tuple[str, ...], message: str | None
) -> None:
    before = volume_ids(ec2)
    result = run("ebs", "create", "bad-input", *args)
    assert result.exit_code == 2, result.output
    if message:
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert message in result.stderr
    assert volume_ids(ec2) == before


def test_duplicate_name_refused(run: Any, ec2: Any) -> None:
    made = create(run, "ds-dup")
    result = run("ebs", "create", "ds-dup", "--size", "5")
    assert result.exit_code == 2 and f"already exists: {made['id']}" in result.stderr
    assert len(ec2.describe_volumes(Filters=[{"Name": "tag:Name", "Values": ["ds-dup"]}])["Volumes"]) == 1


def test_attach_cross_zone_is_one_line_exit_2(run: Any, cloud: Sandbox, ec2: Any) -> None:
    made = create(run, "ds-cross", "--az", "us-east-1a")
    instance = launch(cloud, ec2, "us-east-1b")
    result = run("ebs", "attach", made["id"], instance)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "us-east-1a" in result.stderr and "us-east-1b" in result.stderr
    assert f"trainctl ebs move {made['id']} us-east-1b" in result.stderr
    assert ec2.describe_volumes(VolumeIds=[made["id"]])["Volumes"][0]["Attachments"] == []


def test_attach_list_detach(run: Any, cloud: Sandbox, ec2: Any) -> None:
    made = create(run, "ds-attach", "--az", "us-east-1a")
    instance = launch(cloud, ec2, "us-east-1a")
    result = run("ebs", "attach", made["id"], instance)
    assert result.exit_code == 0, result.output
    assert f"attached {made['id']} to {instance} at /dev/sdf" in result.stdout
    table = run("ebs", "list")
    assert table.exit_code == 0, table.output
    [row] = [line for line in table.stdout.splitlines() if made["id"] in line]
    assert f"→ {instance}" in row and "🔒" in row and "ds-attach" in row

    # Attached volumes are never deleted, not even with --force.
    refused = run("ebs", "delete", made["id"], "--force", "--yes")
    assert refused.exit_code == 2 and "detach it first" in refused.stderr
    assert exists(ec2, made["id"])

    detached = run_json(run, "ebs", "detach", made["id"])
    assert detached["state"] == "available" and detached["attached_instance_id"] is None
    assert ec2.describe_volumes(VolumeIds=[made["id"]])["Volumes"][0]["Attachments"] == []


def test_delete_persistent_needs_force(run: Any, ec2: Any) -> None:
    made = create(run, "ds-delete")
    refused = run("ebs", "delete", made["id"], "--yes")
    assert refused.exit_code == 2
    assert "persistent" in refused.stderr and "force" in refused.stderr
    assert "blocked" in refused.stdout  # the plan is shown before the refusal
    assert exists(ec2, made["id"])

    as_json = run("ebs", "delete", made["id"], "--force", "--json")  # --json never prompts: --yes is required
    assert as_json.exit_code == 2 and json.loads(as_json.stderr)["code"] == "UsageError"
    assert exists(ec2, made["id"])

    declined = run("ebs", "delete", made["id"], "--force", input="n\n")
    assert declined.exit_code == 1 and "Delete " in declined.stdout
    assert exists(ec2, made["id"])

    deleted = run_json(run, "ebs", "delete", made["id"], "--force", "--yes")
    assert deleted["deleted"] and deleted["volume_id"] == made["id"]
    assert not exists(ec2, made["id"])
    again = run_json(run, "ebs", "delete", made["id"], "--yes")
    assert again["already_gone"]


def test_snapshot_snapshots_restore_move(run: Any, ec2: Any) -> None:
    made = create(run, "ds-move", "--az", "us-east-1a", "--job", JOB)
    snapshot = run_json(run, "ebs", "snapshot", made["id"], "--description", "before the run")
    assert snapshot["state"] == "completed" and snapshot["volume_id"] == made["id"] and snapshot["job"] == JOB

    listing = run_json(run, "ebs", "snapshots", "--volume", made["id"])
    assert [s["id"] for s in listing["snapshots"]] == [snapshot["id"]]
    assert listing["filters"] == {"volume": made["id"]}
    table = run("ebs", "snapshots")
    assert table.exit_code == 0 and snapshot["id"] in table.stdout

    restored = run_json(run, "ebs", "restore", snapshot["id"], "--az", "us-east-1d", "--name", "ds-move-copy")
    assert restored["availability_zone"] == "us-east-1d" and restored["source_snapshot_id"] == snapshot["id"]

    moved = run_json(run, "ebs", "move", made["id"], "us-east-1c")
    assert moved["moved"] and moved["original_volume_id"] == made["id"]
    new = ec2.describe_volumes(VolumeIds=[moved["volume"]["id"]])["Volumes"][0]
    assert new["AvailabilityZone"] == "us-east-1c" and t.from_aws(new["Tags"])["Name"] == "ds-move"
    original = ec2.describe_volumes(VolumeIds=[made["id"]])["Volumes"][0]
    assert t.from_aws(original["Tags"])["Name"] == "ds-move@us-east-1a"  # kept, renamed
    kept = ec2.describe_snapshots(SnapshotIds=[moved["snapshot_id"]])["Snapshots"]
    assert kept and kept[0]["VolumeId"] == made["id"]

    after = {v["id"]: v for v in run_json(run, "ebs", "list")["volumes"]}
    assert after[made["id"]]["snapshot_count"] == 2  # the manual one and the move's


def test_global_region_option_reaches_the_tasks(run: Any) -> None:
    result = run("--region", "us-west-2", "ebs", "create", "ds-west", "--size", "5", "--json")
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert made["availability_zone"].startswith("us-west-2")
    listing = run_json(run, "--region", "us-west-2", "ebs", "snapshots")
    assert listing["region"] == "us-west-2" and listing["snapshots"] == []
    assert made["id"] not in {v["id"] for v in run_json(run, "ebs", "list")["volumes"]}  # not in us-east-1
    assert made["id"] in {v["id"] for v in run_json(run, "--region", "us-west-2", "ebs", "list")["volumes"]}
    # After the command, the environment is as it was: the next command runs in the sandbox's us-east-1 again.
    assert run_json(run, "ebs", "snapshots")["region"] == "us-east-1"


@pytest.mark.parametrize(
    "args",
    [
        ("not-an-s3-uri", "--volume", "vol-0123456789abcdef0"),
        ("s3://bucket/prefix",),  # neither --volume nor --new
        ("s3://bucket/prefix", "--volume", "vol-0123456789abcdef0", "--new", "x", "--size", "5"),
        ("s3://bucket/prefix", "--new", "x"),  # no --size
        ("s3://bucket/prefix", "--new", "x", "--size", "0"),
        ("s3://bucket/prefix", "--volume", "vol-12"),
        ("s3://bucket/prefix", "--volume", "vol-0123456789abcdef0", "--target-dir", "../etc"),
        ("s3://bucket/prefix", "--volume", "vol-0123456789abcdef0", "--filesystem", "ntfs"),
    ],
)
def test_prewarm_bad_input_exit_2_before_any_call(run: Any, args: tuple[str, ...]) -> None:
    # An unreachable endpoint: any AWS call (or Prefect's start-up reaching one) would end in exit 1, not 2.
    result = run("--endpoint-url", "http://127.0.0.1:9", "ebs", "prewarm", *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_volume_type_choices_match_the_limits_table() -> None:
    assert {c.value for c in VolumeTypeChoice} == set(LIMITS)
