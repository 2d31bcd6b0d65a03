"""Inventory against moto: only managed resources, relations resolved, AWS calls independent of resource count."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from moto import mock_aws

from blocks.aws import AwsAccount, clear_client_cache
from core import tags as t
from tasks.inventory import collect_inventory, inventory

AZ = "us-east-1a"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsAccount]:
    # moto parses its whole AMI catalogue for every fresh backend (~1 s); these tests need none of it.
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    clear_client_cache()
    with mock_aws():
        yield AwsAccount(region="us-east-1", max_attempts=1)
    clear_client_cache()


def _ami(ec2: Any) -> str:
    # One of moto's built-in images; DescribeImages would cost ~1.5 s per test.
    return "ami-03cf127a"


def _spec(kind: str, tags: dict[str, str]) -> list[dict[str, Any]]:
    return t.tag_specifications(kind, tags) if tags else []


def populate(ec2: Any, n: int) -> dict[str, set[str]]:
    """About `n` resources of each family, plus decoys. Returns the IDs that must (and must not) be listed."""
    ami = _ami(ec2)
    managed: set[str] = set()
    decoys: set[str] = set()
    kinds = [
        ("managed", t.managed_tags(job="llm", role=t.Role.TRAIN)),
        ("legacy", {"CreatedBy": "runctl", "runctl:protected": "true"}),
        ("untagged", {}),
        ("opted-out", {t.MANAGED: "false", "Name": "not-ours"}),
        ("foreign", {"Owner": "someone-else"}),
    ]
    for i in range(n):
        label, tags = kinds[i % len(kinds)]
        target = managed if label in {"managed", "legacy"} else decoys
        if i % 3 == 0:
            run = ec2.run_instances(
                ImageId=ami,
                MinCount=1,
                MaxCount=1,
                InstanceType="t3.micro",
                Placement={"AvailabilityZone": AZ},
                TagSpecifications=_spec("instance", tags),
            )
            target.add(run["Instances"][0]["InstanceId"])
        elif i % 3 == 1:
            vol = ec2.create_volume(AvailabilityZone=AZ, Size=1, TagSpecifications=_spec("volume", tags))
            target.add(vol["VolumeId"])
        else:
            vol = ec2.create_volume(AvailabilityZone=AZ, Size=1)  # the snapshot's source is itself untagged
            decoys.add(vol["VolumeId"])
            snap = ec2.create_snapshot(VolumeId=vol["VolumeId"], TagSpecifications=_spec("snapshot", tags))
            target.add(snap["SnapshotId"])
    return {"managed": managed, "decoys": decoys}


def count_calls(client: Any) -> list[str]:
    calls: list[str] = []
    client.meta.events.register("before-call.*.*", lambda model, **_: calls.append(model.name))
    return calls


def test_only_managed_resources_listed(aws: AwsAccount) -> None:
    ec2 = aws.client("ec2")
    ids = populate(ec2, 60)
    inv = collect_inventory(aws)
    listed = {r.id for r in inv.resources()}
    # The run_instances root volumes are untagged (no "volume" TagSpecification), so they are not listed either.
    assert listed == ids["managed"]
    assert not listed & ids["decoys"]
    assert len(listed) == 24
    assert all(r.managed for r in inv.resources())
    assert inv.region == "us-east-1"


@pytest.mark.parametrize("include_terminated", [False, True])
def test_terminated_instances_on_request(aws: AwsAccount, include_terminated: bool) -> None:
    ec2 = aws.client("ec2")
    run = ec2.run_instances(
        ImageId=_ami(ec2), MinCount=2, MaxCount=2, TagSpecifications=_spec("instance", t.managed_tags(job="j"))
    )
    gone, alive = (i["InstanceId"] for i in run["Instances"])
    ec2.terminate_instances(InstanceIds=[gone])
    listed = {i.id for i in collect_inventory(aws, include_terminated=include_terminated).instances}
    assert listed == ({gone, alive} if include_terminated else {alive})


def test_relations_resolved(aws: AwsAccount) -> None:
    ec2 = aws.client("ec2")
    tags = t.managed_tags(job="llm", role=t.Role.DATA, persistent=True)
    instance = ec2.run_instances(
        ImageId=_ami(ec2),
        MinCount=1,
        MaxCount=1,
        Placement={"AvailabilityZone": AZ},
        TagSpecifications=_spec("instance", t.managed_tags(job="llm", role=t.Role.TRAIN, attempt=2)),
    )["Instances"][0]["InstanceId"]
    data = ec2.create_volume(AvailabilityZone=AZ, Size=10, TagSpecifications=_spec("volume", tags))["VolumeId"]
    ec2.attach_volume(VolumeId=data, InstanceId=instance, Device="/dev/sdf")
    snaps = [
        ec2.create_snapshot(VolumeId=data, TagSpecifications=_spec("snapshot", t.managed_tags(job="llm")))["SnapshotId"]
        for _ in range(2)
    ]
    # A legacy (runctl) snapshot of the same volume counts too; an untagged one does not.
    legacy = ec2.create_snapshot(VolumeId=data, TagSpecifications=_spec("snapshot", {"CreatedBy": "runctl"}))
    ec2.create_snapshot(VolumeId=data)

    now = datetime.now(UTC)
    inv = collect_inventory(aws, now=now)
    assert inv.taken_at == now
    (volume,) = inv.volumes
    assert volume.id == data and volume.attached_instance_id == instance and volume.persistent
    assert volume.snapshot_ids == sorted([*snaps, legacy["SnapshotId"]])
    (inst,) = inv.instances
    assert data in inst.volume_ids and inst.attempt == 2 and inst.job == "llm"
    assert inv.volumes_of(instance) == [volume]
    assert {s.volume_id for s in inv.snapshots} == {data}
    assert {r.id for r in inv.of_job("llm")} == {instance, data, *snaps}


def test_resource_carrying_both_markers_listed_once(aws: AwsAccount) -> None:
    ec2 = aws.client("ec2")
    both = {**t.managed_tags(job="x"), "CreatedBy": "runctl"}
    vol = ec2.create_volume(AvailabilityZone=AZ, Size=1, TagSpecifications=_spec("volume", both))["VolumeId"]
    assert [v.id for v in collect_inventory(aws).volumes] == [vol]


def test_aws_calls_independent_of_resource_count(aws: AwsAccount) -> None:
    ec2 = aws.client("ec2")
    populate(ec2, 10)
    calls = count_calls(ec2)  # the inventory gets this same cached client, so it sees every call made
    small = collect_inventory(aws)
    small_calls = list(calls)
    populate(ec2, 60)
    calls.clear()
    large = collect_inventory(aws)
    assert len(large.resources()) > 3 * len(small.resources())
    # One query per resource type per filter set (trainctl:managed, CreatedBy=runctl), one page each.
    expected = ["DescribeInstances"] * 2 + ["DescribeVolumes"] * 2 + ["DescribeSnapshots"] * 2
    assert small_calls == expected
    assert calls == expected


def test_inventory_task_takes_a_block_name(aws: AwsAccount, monkeypatch: pytest.MonkeyPatch) -> None:
    ec2 = aws.client("ec2")
    vol = ec2.create_volume(AvailabilityZone=AZ, Size=1, TagSpecifications=_spec("volume", t.managed_tags()))
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    # .fn() runs the body without the Prefect engine; None means the standard AWS environment (conftest's).
    inv = inventory.fn(None)
    assert [v.id for v in inv.volumes] == [vol["VolumeId"]]
    assert inventory.name == "inventory" and inventory.tags == {"aws-ec2"}
