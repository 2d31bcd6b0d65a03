"""EBS tasks against moto: every safety rule, asserted on the AWS state after the call, not only on the error.

The tasks build their client through `load_account(None)` (the cached client of the environment), so counting
calls on that same client sees every request a task makes: a refusal must leave no mutating call behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from moto import mock_aws

from blocks.aws import clear_client_cache, load_account
from core import tags as t
from core.ebs import VolumeSpec
from core.errors import AwsError, InvalidInputError, SafetyRefusalError, UsageError
from tasks.ebs import (
    attach_volume,
    create_snapshot,
    create_volume,
    delete_volume,
    describe_volume,
    detach_volume,
    list_snapshots,
    move_volume,
    plan_volume_delete,
    restore_snapshot,
)
from tasks.ec2_instances import describe_instance

AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
MUTATIONS = {"CreateVolume", "AttachVolume", "DetachVolume", "DeleteVolume", "CreateTags", "CreateSnapshot"}
LATER = timedelta(hours=1)  # `now` this far ahead makes every resource older than the 5-minute minimum age


@pytest.fixture(scope="module")
def ami() -> str:
    """moto's default Amazon Linux AMI, looked up once (the SSM parameter store costs ~1.5 s to load)."""
    clear_client_cache()
    with mock_aws():
        value = str(load_account(None).client("ssm").get_parameter(Name=AMI_PARAMETER)["Parameter"]["Value"])
    clear_client_cache()
    return value


@pytest.fixture
def ec2(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # moto parses its whole AMI catalogue for every fresh backend (~1 s); RunInstances does not need it.
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    clear_client_cache()  # a fresh client per test: call counters never leak into the next test
    with mock_aws():
        yield load_account(None).client("ec2")
    clear_client_cache()


@pytest.fixture
def calls(ec2: Any) -> list[str]:
    """Names of the EC2 operations the tasks call from now on (botocore event hook on the cached client)."""
    seen: list[str] = []
    ec2.meta.events.register("before-call.ec2.*", lambda model, **_: seen.append(model.name))
    return seen


def mutations(calls: list[str]) -> list[str]:
    return [c for c in calls if c in MUTATIONS]


def launch(ec2: Any, ami: str, zone: str = "us-east-1a", tags: dict[str, str] | None = None) -> str:
    tags = t.managed_tags(job="llm", role=t.Role.TRAIN) if tags is None else tags
    made = ec2.run_instances(
        ImageId=ami,
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        Placement={"AvailabilityZone": zone},
        TagSpecifications=t.tag_specifications("instance", tags) if tags else [],
    )
    return str(made["Instances"][0]["InstanceId"])


def raw_volume(ec2: Any, tags: dict[str, str], zone: str = "us-east-1a") -> str:
    """A volume made behind trainctl's back (by runctl, by hand): only the given tags."""
    specs = t.tag_specifications("volume", tags) if tags else []
    return str(ec2.create_volume(AvailabilityZone=zone, Size=5, TagSpecifications=specs)["VolumeId"])


def describe(ec2: Any, volume_id: str) -> dict[str, Any]:
    return dict(ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0])


def tags_of(ec2: Any, volume_id: str) -> dict[str, str]:
    return t.from_aws(describe(ec2, volume_id).get("Tags"))


def exists(ec2: Any, volume_id: str) -> bool:
    return bool(ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [volume_id]}])["Volumes"])


def snapshot_exists(ec2: Any, snapshot_id: str) -> bool:
    found = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": "snapshot-id", "Values": [snapshot_id]}])
    return bool(found["Snapshots"])


def named(ec2: Any, name: str) -> list[dict[str, Any]]:
    return list(ec2.describe_volumes(Filters=[{"Name": "tag:Name", "Values": [name]}])["Volumes"])


def new(name: str = "data", **fields: Any) -> VolumeSpec:
    return VolumeSpec(name=name, size_gib=fields.pop("size_gib", 10), **fields)


# -- create ---------------------------------------------------------------------------------------------------


def test_create_tags_at_creation_encrypted_gp3(ec2: Any, calls: list[str]) -> None:
    volume = create_volume.fn(new(), availability_zone="us-east-1b", job="llm")
    data = describe(ec2, volume.id)
    tags = t.from_aws(data["Tags"])
    assert tags[t.MANAGED] == "true" and tags[t.PERSISTENT] == "true" and tags[t.NAME] == "data"
    assert tags[t.ROLE] == "data" and tags[t.JOB] == "llm"
    assert t.PROTECTED not in tags
    assert data["Encrypted"] and data["VolumeType"] == "gp3" and data["Size"] == 10
    assert data["AvailabilityZone"] == "us-east-1b" and data["State"] == "available"
    # Tagged by the create call itself (TagSpecifications), never by a later CreateTags.
    assert mutations(calls) == ["CreateVolume"]


def test_create_ephemeral_protected_with_options(ec2: Any) -> None:
    spec = new("scratch", persistent=False, protected=True, iops=4000, throughput=250, encrypted=False)
    volume = create_volume.fn(spec, availability_zone="us-east-1a")
    data = describe(ec2, volume.id)
    tags = t.from_aws(data["Tags"])
    assert t.PERSISTENT not in tags and tags[t.PROTECTED] == "true" and tags[t.MANAGED] == "true"
    assert data["Iops"] == 4000 and data["Throughput"] == 250 and not data["Encrypted"]


def test_create_zone_from_an_instance(ec2: Any, ami: str) -> None:
    instance = launch(ec2, ami, "us-east-1c")
    assert create_volume.fn(new(), instance_id=instance).availability_zone == "us-east-1c"


@pytest.mark.parametrize(
    ("instance_type", "zone"),
    [("p3dn.24xlarge", "us-east-1c"), ("trn1.2xlarge", "us-east-1c"), ("t3.micro", "us-east-1a"), (None, "us-east-1a")],
)
def test_create_zone_from_instance_type_offerings(ec2: Any, instance_type: str | None, zone: str) -> None:
    assert create_volume.fn(new(), instance_type=instance_type).availability_zone == zone


def test_create_duplicate_name_refused_and_nothing_created(ec2: Any, calls: list[str]) -> None:
    first = create_volume.fn(new())
    with pytest.raises(UsageError, match=f"named 'data' already exists: {first.id}"):
        create_volume.fn(new(size_gib=20), availability_zone="us-east-1b")
    assert mutations(calls) == ["CreateVolume"]  # the first one only
    assert [v["VolumeId"] for v in named(ec2, "data")] == [first.id]


def test_create_duplicate_of_a_legacy_name_refused_unmanaged_name_ignored(ec2: Any) -> None:
    legacy = raw_volume(ec2, {"CreatedBy": "runctl", "Name": "old"})
    with pytest.raises(UsageError, match=legacy):
        create_volume.fn(new("old"))
    assert len(named(ec2, "old")) == 1
    raw_volume(ec2, {"Name": "someone-elses"})  # names are unique among managed volumes only
    assert create_volume.fn(new("someone-elses")).name == "someone-elses"
    assert len(named(ec2, "someone-elses")) == 2


@pytest.mark.parametrize(
    ("fields", "zone", "field"),
    [
        ({"size_gib": 0}, None, "size_gib"),
        ({"size_gib": -5}, None, "size_gib"),
        ({"size_gib": 16_385}, None, "size_gib"),
        ({"iops": 2_000}, None, "iops"),
        ({"iops": 20_000}, None, "iops"),
        ({"size_gib": 5, "iops": 3_000}, None, None),  # valid: the zone is the bad part
        ({"throughput": 1_001}, None, "throughput"),
        ({"iops": 3_000, "throughput": 1_000}, None, "throughput"),  # above 0.25 MiB/s per IOPS
        ({"volume_type": "io1"}, None, "iops"),  # io1 needs provisioned IOPS
        ({"volume_type": "gp2", "throughput": 200}, None, "throughput"),
    ],
)
def test_create_bad_input_makes_no_call(
    ec2: Any, calls: list[str], fields: dict[str, Any], zone: str | None, field: str | None
) -> None:
    with pytest.raises(InvalidInputError) as err:
        create_volume.fn(new(**fields), availability_zone=zone or "us-east-9z")
    if field:
        assert err.value.field == field
    assert "CreateVolume" not in calls
    assert ec2.describe_volumes()["Volumes"] == []


@pytest.mark.parametrize("zone", ["us-east-1z", "us-west-2a", "mars"])
def test_create_unknown_zone_refused_without_create(ec2: Any, calls: list[str], zone: str) -> None:
    with pytest.raises(InvalidInputError, match="availability_zone"):
        create_volume.fn(new(), availability_zone=zone)
    assert "CreateVolume" not in calls and ec2.describe_volumes()["Volumes"] == []


def test_create_unknown_instance_type_refused_without_create(ec2: Any, calls: list[str]) -> None:
    with pytest.raises(InvalidInputError, match="instance_type"):
        create_volume.fn(new(), instance_type="zz9.plural")
    assert "CreateVolume" not in calls


# -- attach / detach ------------------------------------------------------------------------------------------


def test_attach_cross_zone_refused_before_any_call(ec2: Any, ami: str, calls: list[str]) -> None:
    volume = create_volume.fn(new(), availability_zone="us-east-1a")
    instance = launch(ec2, ami, "us-east-1b")
    calls.clear()
    with pytest.raises(UsageError) as err:
        attach_volume.fn(volume.id, instance)
    message = str(err.value)
    assert "us-east-1a" in message and "us-east-1b" in message
    assert f"trainctl ebs move {volume.id} us-east-1b" in message
    assert mutations(calls) == []
    data = describe(ec2, volume.id)
    assert data["State"] == "available" and data["Attachments"] == []


def test_attach_waits_attached_and_is_idempotent(ec2: Any, ami: str, calls: list[str]) -> None:
    volume = create_volume.fn(new())
    instance = launch(ec2, ami)
    attached = attach_volume.fn(volume.id, instance)
    assert attached.attached_instance_id == instance and attached.attachments[0].device == "/dev/sdf"
    again = attach_volume.fn(volume.id, instance)  # a retry or a re-run: already done
    assert again.attached_instance_id == instance
    assert calls.count("AttachVolume") == 1
    [attachment] = describe(ec2, volume.id)["Attachments"]
    assert attachment["InstanceId"] == instance and attachment["State"] == "attached"


def test_attach_picks_a_free_device_and_refuses_a_used_one(ec2: Any, ami: str) -> None:
    instance = launch(ec2, ami)
    first = create_volume.fn(new("a"))
    second = create_volume.fn(new("b"))
    third = create_volume.fn(new("c"))
    attach_volume.fn(first.id, instance)
    assert attach_volume.fn(second.id, instance).attachments[0].device == "/dev/sdg"
    with pytest.raises(InvalidInputError, match="device"):
        attach_volume.fn(third.id, instance, device="/dev/sdf")
    assert describe(ec2, third.id)["Attachments"] == []


def test_attach_in_use_by_another_instance_refused(ec2: Any, ami: str, calls: list[str]) -> None:
    volume = create_volume.fn(new())
    first, second = launch(ec2, ami), launch(ec2, ami)
    attach_volume.fn(volume.id, first)
    with pytest.raises(UsageError, match=f"in use by {first}"):
        attach_volume.fn(volume.id, second)
    assert calls.count("AttachVolume") == 1
    assert [a["InstanceId"] for a in describe(ec2, volume.id)["Attachments"]] == [first]


def test_attach_unmanaged_volume_refused_unless_adopted(ec2: Any, ami: str, calls: list[str]) -> None:
    volume = raw_volume(ec2, {"Name": "hand-made"})
    instance = launch(ec2, ami)
    calls.clear()
    with pytest.raises(UsageError, match="not created by trainctl"):
        attach_volume.fn(volume, instance)
    assert mutations(calls) == []
    assert describe(ec2, volume)["Attachments"] == [] and t.MANAGED not in tags_of(ec2, volume)

    attach_volume.fn(volume, instance, adopt=True)
    assert tags_of(ec2, volume)[t.MANAGED] == "true"  # tagged first, then attached
    assert describe(ec2, volume)["Attachments"][0]["InstanceId"] == instance


def test_attach_to_unmanaged_instance_refused_unless_adopted(ec2: Any, ami: str) -> None:
    volume = create_volume.fn(new())
    instance = launch(ec2, ami, tags={"Name": "someone-elses"})
    with pytest.raises(UsageError, match=f"{instance} was not created by trainctl"):
        attach_volume.fn(volume.id, instance)
    assert describe(ec2, volume.id)["Attachments"] == []


def test_legacy_runctl_volume_counts_as_managed(ec2: Any, ami: str, calls: list[str]) -> None:
    volume = raw_volume(ec2, {"CreatedBy": "runctl", "Name": "legacy"})
    instance = launch(ec2, ami)
    calls.clear()
    attach_volume.fn(volume, instance)  # no adopt needed, and it is not re-tagged
    assert "CreateTags" not in calls and t.MANAGED not in tags_of(ec2, volume)
    detach_volume.fn(volume)
    assert delete_volume.fn(volume, now=datetime.now(UTC) + LATER).deleted
    assert not exists(ec2, volume)


def test_detach_waits_available_and_is_idempotent(ec2: Any, ami: str, calls: list[str]) -> None:
    volume = create_volume.fn(new())
    instance = launch(ec2, ami)
    attach_volume.fn(volume.id, instance)
    detached = detach_volume.fn(volume.id)
    assert detached.state == "available" and not detached.attached
    assert detach_volume.fn(volume.id).state == "available"
    assert calls.count("DetachVolume") == 1
    assert describe(ec2, volume.id)["Attachments"] == []


def test_forced_detach_from_a_running_instance_refused(ec2: Any, ami: str, calls: list[str]) -> None:
    volume = create_volume.fn(new())
    instance = launch(ec2, ami)
    attach_volume.fn(volume.id, instance)
    with pytest.raises(SafetyRefusalError, match="forced detach"):
        detach_volume.fn(volume.id, force=True)
    assert "DetachVolume" not in calls
    assert describe(ec2, volume.id)["Attachments"][0]["InstanceId"] == instance
    ec2.stop_instances(InstanceIds=[instance])  # stuck on a stopped instance: what force is for
    assert detach_volume.fn(volume.id, force=True).state == "available"


def test_detach_unmanaged_refused(ec2: Any, ami: str) -> None:
    volume = raw_volume(ec2, {})
    instance = launch(ec2, ami, tags={})
    ec2.attach_volume(VolumeId=volume, InstanceId=instance, Device="/dev/sdf")
    with pytest.raises(UsageError, match="not created by trainctl"):
        detach_volume.fn(volume)
    assert describe(ec2, volume)["Attachments"][0]["InstanceId"] == instance


# -- delete ---------------------------------------------------------------------------------------------------


def test_delete_attached_refused_even_with_force(ec2: Any, ami: str, calls: list[str]) -> None:
    volume = create_volume.fn(new(persistent=False))
    instance = launch(ec2, ami)
    attach_volume.fn(volume.id, instance)
    with pytest.raises(SafetyRefusalError, match=f"attached to {instance}; detach it first"):
        delete_volume.fn(volume.id, force=True, now=datetime.now(UTC) + LATER)
    assert "DeleteVolume" not in calls
    assert describe(ec2, volume.id)["Attachments"][0]["InstanceId"] == instance


def test_delete_persistent_needs_force(ec2: Any, calls: list[str]) -> None:
    volume = create_volume.fn(new())  # persistent by default
    later = datetime.now(UTC) + LATER
    with pytest.raises(SafetyRefusalError, match="persistent") as err:
        delete_volume.fn(volume.id, now=later)
    assert "force" in str(err.value)
    assert "DeleteVolume" not in calls and exists(ec2, volume.id)
    result = delete_volume.fn(volume.id, force=True, now=later)
    assert result.deleted and not exists(ec2, volume.id)


@pytest.mark.parametrize(
    "tags",
    [
        {t.MANAGED: "true", t.PROTECTED: "true"},
        {t.MANAGED: "true", t.IMPORTANT: "true"},
        {t.MANAGED: "true", "runctl:protected": "true"},
        {"CreatedBy": "runctl", "runctl:important": "true"},
        {"CreatedBy": "runctl", "trainctl:protected": "True"},
    ],
)
def test_delete_protected_needs_force_either_prefix(ec2: Any, calls: list[str], tags: dict[str, str]) -> None:
    volume = raw_volume(ec2, tags)
    later = datetime.now(UTC) + LATER
    with pytest.raises(SafetyRefusalError, match="protected"):
        delete_volume.fn(volume, now=later)
    assert "DeleteVolume" not in calls and exists(ec2, volume)
    assert delete_volume.fn(volume, force=True, now=later).deleted
    assert not exists(ec2, volume)


def test_delete_young_needs_force(ec2: Any) -> None:
    volume = create_volume.fn(new(persistent=False))
    created = volume.created_at
    for age in (timedelta(0), timedelta(minutes=4, seconds=59)):
        with pytest.raises(SafetyRefusalError, match="younger than"):
            delete_volume.fn(volume.id, now=created + age)
        assert exists(ec2, volume.id)
    assert delete_volume.fn(volume.id, now=created + timedelta(minutes=5, seconds=1)).deleted
    assert not exists(ec2, volume.id)


def test_delete_young_with_force_and_custom_min_age(ec2: Any) -> None:
    first = create_volume.fn(new("a", persistent=False))
    second = create_volume.fn(new("b", persistent=False))
    assert delete_volume.fn(first.id, force=True).deleted  # young, but forced
    assert delete_volume.fn(second.id, min_age=timedelta(0)).deleted  # a policy without a minimum age
    assert not exists(ec2, first.id) and not exists(ec2, second.id)


def test_delete_lists_and_keeps_snapshots(ec2: Any) -> None:
    volume = create_volume.fn(new(persistent=False))
    snapshots = [create_snapshot.fn(volume.id).id for _ in range(2)]
    result = delete_volume.fn(volume.id, now=datetime.now(UTC) + LATER)
    assert result.deleted and sorted(result.snapshots_kept) == sorted(snapshots) and result.snapshots_deleted == []
    assert any("2 snapshot(s) that will remain" in note for note in result.notes)
    assert not exists(ec2, volume.id)
    assert all(snapshot_exists(ec2, s) for s in snapshots)


def test_delete_with_snapshots_removes_them(ec2: Any) -> None:
    volume = create_volume.fn(new(persistent=False))
    snapshots = [create_snapshot.fn(volume.id).id for _ in range(2)]
    with pytest.raises(SafetyRefusalError, match=f"{snapshots[0]} is .* younger than"):  # young snapshots block too
        delete_volume.fn(volume.id, delete_snapshots=True)
    assert exists(ec2, volume.id) and all(snapshot_exists(ec2, s) for s in snapshots)
    result = delete_volume.fn(volume.id, delete_snapshots=True, now=datetime.now(UTC) + LATER)
    assert sorted(result.snapshots_deleted) == sorted(snapshots) and result.snapshots_kept == []
    assert not exists(ec2, volume.id)
    assert not any(snapshot_exists(ec2, s) for s in snapshots)


def test_plan_volume_delete_reads_the_verdict_delete_acts_on_and_changes_nothing(ec2: Any, calls: list[str]) -> None:
    """The plan `ebs delete` shows before asking: the volume, its snapshots, core.safety's verdict; no mutation."""
    volume = create_volume.fn(new())  # persistent: deleting it needs force
    snapshot = create_snapshot.fn(volume.id).id
    made = len(calls)
    plan = plan_volume_delete(volume.id, min_age=timedelta(minutes=5), now=datetime.now(UTC) + LATER)
    assert plan is not None and plan.volume.id == volume.id and [s.id for s in plan.snapshots] == [snapshot]
    assert [b.override for b in plan.verdict.blockers] == ["force"]
    forced = plan_volume_delete(volume.id, min_age=timedelta(minutes=5), now=datetime.now(UTC) + LATER, force=True)
    assert forced is not None and forced.verdict.allowed
    assert plan_volume_delete("vol-0123456789abcdef0", min_age=timedelta(0)) is None  # already deleted
    assert mutations(calls[made:]) == []
    assert exists(ec2, volume.id) and snapshot_exists(ec2, snapshot)
    with pytest.raises(SafetyRefusalError, match="persistent"):
        delete_volume.fn(volume.id, now=datetime.now(UTC) + LATER)  # the task reaches the same verdict
    assert exists(ec2, volume.id)


def test_delete_unmanaged_refused_unless_adopted(ec2: Any, calls: list[str]) -> None:
    volume = raw_volume(ec2, {"Name": "hand-made"})
    later = datetime.now(UTC) + LATER
    calls.clear()
    with pytest.raises(SafetyRefusalError, match="not created by trainctl"):
        delete_volume.fn(volume, force=True, now=later)
    assert mutations(calls) == [] and exists(ec2, volume)
    assert delete_volume.fn(volume, adopt=True, now=later).deleted
    assert not exists(ec2, volume)


def test_delete_not_found_is_already_gone(ec2: Any, calls: list[str]) -> None:
    volume = create_volume.fn(new(persistent=False))
    later = datetime.now(UTC) + LATER
    assert delete_volume.fn(volume.id, now=later).deleted
    again = delete_volume.fn(volume.id, now=later)
    assert again.already_gone and not again.deleted
    assert calls.count("DeleteVolume") == 1
    assert delete_volume.fn("vol-0123456789abcdef0").already_gone


def test_delete_malformed_id_refused(ec2: Any, calls: list[str]) -> None:
    with pytest.raises(InvalidInputError, match="volume_id"):
        delete_volume.fn("vol-12")
    assert calls == []


# -- snapshots, restore, move ---------------------------------------------------------------------------------


def test_snapshot_tags_list_and_restore_in_another_zone(ec2: Any) -> None:
    volume = create_volume.fn(new(size_gib=8), availability_zone="us-east-1a", job="llm")
    snapshot = create_snapshot.fn(volume.id, description="before the run")
    assert snapshot.state == "completed" and snapshot.volume_id == volume.id and snapshot.size_gib == 8
    assert snapshot.managed and snapshot.job == "llm" and (snapshot.name or "").startswith("data@")
    assert snapshot.description == "before the run"
    # An unmanaged snapshot of the same volume is not listed (but delete would still show it: snapshots_of).
    ec2.create_snapshot(VolumeId=volume.id)
    assert [s.id for s in list_snapshots.fn(volume.id)] == [snapshot.id]
    assert snapshot.id in {s.id for s in list_snapshots.fn()}

    restored = restore_snapshot.fn(snapshot.id, "us-east-1c", name="data-c")
    data = describe(ec2, restored.id)
    assert data["AvailabilityZone"] == "us-east-1c" and data["SnapshotId"] == snapshot.id and data["Size"] == 8
    tags = t.from_aws(data["Tags"])
    assert tags[t.NAME] == "data-c" and tags[t.MANAGED] == "true" and tags[t.JOB] == "llm"
    assert tags[t.PERSISTENT] == "true"


def test_restore_smaller_than_snapshot_or_duplicate_name_refused(ec2: Any, calls: list[str]) -> None:
    volume = create_volume.fn(new(size_gib=8))
    snapshot = create_snapshot.fn(volume.id)
    calls.clear()
    with pytest.raises(InvalidInputError, match="size_gib"):
        restore_snapshot.fn(snapshot.id, "us-east-1b", name="small", size_gib=4)
    with pytest.raises(UsageError, match="already exists"):
        restore_snapshot.fn(snapshot.id, "us-east-1b", name="data")
    assert "CreateVolume" not in calls
    assert [v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]] == [volume.id]


def snapshot_tags(ec2: Any, snapshot_id: str) -> dict[str, str]:
    return t.from_aws(ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0].get("Tags"))


def test_restore_of_an_unmanaged_snapshot_refused_unless_adopted(ec2: Any, calls: list[str]) -> None:
    theirs = ec2.create_snapshot(VolumeId=raw_volume(ec2, {"Name": "someone-elses"}))["SnapshotId"]
    before = {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}
    calls.clear()
    with pytest.raises(UsageError, match=f"{theirs} was not created by trainctl.*--adopt.*trainctl:managed=true"):
        restore_snapshot.fn(theirs, "us-east-1b", name="stolen")
    with pytest.raises(UsageError, match="not created by trainctl"):  # nor through a spec naming the snapshot
        create_volume.fn(new("stolen", snapshot_id=theirs), availability_zone="us-east-1b")
    assert mutations(calls) == []
    assert {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]} == before and not named(ec2, "stolen")
    assert t.MANAGED not in snapshot_tags(ec2, theirs)

    adopted = restore_snapshot.fn(theirs, "us-east-1b", name="adopted", adopt=True)
    assert snapshot_tags(ec2, theirs)[t.MANAGED] == "true"  # tagged managed, then read
    data = describe(ec2, adopted.id)
    assert data["SnapshotId"] == theirs and data["AvailabilityZone"] == "us-east-1b"
    assert t.from_aws(data["Tags"])[t.MANAGED] == "true"


def test_move_of_an_unmanaged_volume_refused_unless_adopted(ec2: Any, calls: list[str]) -> None:
    theirs = raw_volume(ec2, {"Name": "theirs"})
    calls.clear()
    with pytest.raises(UsageError, match=f"{theirs} was not created by trainctl.*will not move it"):
        move_volume.fn(theirs, "us-east-1b")
    assert mutations(calls) == []
    assert ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"] == [] and len(ec2.describe_volumes()["Volumes"]) == 1

    moved = move_volume.fn(theirs, "us-east-1b", adopt=True)
    assert tags_of(ec2, theirs)[t.MANAGED] == "true" and tags_of(ec2, theirs)[t.NAME] == "theirs@us-east-1a"
    assert describe(ec2, moved.id)["AvailabilityZone"] == "us-east-1b" and tags_of(ec2, moved.id)[t.NAME] == "theirs"


def test_snapshot_of_unmanaged_volume_refused(ec2: Any) -> None:
    volume = raw_volume(ec2, {})
    with pytest.raises(UsageError, match="not created by trainctl"):
        create_snapshot.fn(volume)
    assert ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"] == []


def test_move_volume_to_another_zone(ec2: Any) -> None:
    original = create_volume.fn(new(size_gib=12, protected=True), availability_zone="us-east-1a", job="llm")
    moved = move_volume.fn(original.id, "us-east-1b")
    assert moved.id != original.id
    data = describe(ec2, moved.id)
    tags = t.from_aws(data["Tags"])
    assert data["AvailabilityZone"] == "us-east-1b" and data["Size"] == 12 and data["State"] == "available"
    assert tags[t.NAME] == "data" and tags[t.PERSISTENT] == "true" and tags[t.JOB] == "llm"
    assert tags[t.PROTECTED] == "true"  # a protected volume stays protected where it moved to
    # The original stays (renamed, still protected) and the snapshot stays as a restore point.
    kept = tags_of(ec2, original.id)
    assert kept[t.NAME] == "data@us-east-1a" and kept[t.PROTECTED] == "true" and kept[t.PERSISTENT] == "true"
    assert describe(ec2, original.id)["State"] == "available"
    assert moved.source_snapshot_id and snapshot_exists(ec2, moved.source_snapshot_id)
    assert [v["VolumeId"] for v in named(ec2, "data")] == [moved.id]


def test_a_move_repeated_with_its_key_continues_the_first_and_makes_nothing_twice(ec2: Any, calls: list[str]) -> None:
    """A flow killed mid-move runs the move again with the same key (spot-watch: the attempt's launch key)."""
    original = create_volume.fn(new(), availability_zone="us-east-1a", job="llm")
    # Killed right after the snapshot (described as move_volume describes it): the move finds it.
    create_snapshot.fn(original.id, description="trainctl move of data to us-east-1b", idempotency_key="llm-2")
    moved = move_volume.fn(original.id, "us-east-1b", idempotency_key="llm-2")
    # Killed after the restore, before the caller recorded the copy: the original is already renamed.
    calls.clear()
    again = move_volume.fn(original.id, "us-east-1b", idempotency_key="llm-2")

    assert again.id == moved.id and mutations(calls) == ["CreateTags"]  # the rename, the same again
    snapshots = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": "volume-id", "Values": [original.id]}])
    assert [s["SnapshotId"] for s in snapshots["Snapshots"]] == [moved.source_snapshot_id]
    assert [v["VolumeId"] for v in named(ec2, "data")] == [moved.id]
    assert tags_of(ec2, original.id)[t.NAME] == "data@us-east-1a"
    # Without a key a second move of the original is a move of its own (its copy named after the renamed one).
    other = move_volume.fn(original.id, "us-east-1c")
    assert other.id != moved.id and tags_of(ec2, other.id)[t.NAME] == "data@us-east-1a"


def test_move_to_own_zone_is_a_no_op(ec2: Any, calls: list[str]) -> None:
    volume = create_volume.fn(new(), availability_zone="us-east-1a")
    calls.clear()
    assert move_volume.fn(volume.id, "us-east-1a").id == volume.id
    assert mutations(calls) == []


def test_move_attached_or_to_unknown_zone_refused(ec2: Any, ami: str, calls: list[str]) -> None:
    volume = create_volume.fn(new(), availability_zone="us-east-1a")
    with pytest.raises(InvalidInputError, match="availability_zone"):
        move_volume.fn(volume.id, "us-east-1z")
    instance = launch(ec2, ami)
    attach_volume.fn(volume.id, instance)
    calls.clear()
    with pytest.raises(UsageError, match="detach it first"):
        move_volume.fn(volume.id, "us-east-1b")
    assert mutations(calls) == []
    assert tags_of(ec2, volume.id)[t.NAME] == "data"
    assert ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"] == []


def test_describe_reads_the_current_state(ec2: Any, ami: str) -> None:
    """The flows' reads of one volume or instance (tasks, so a throttled read is retried): what EC2 has now."""
    instance_id = launch(ec2, ami)
    volume = create_volume.fn(new(), availability_zone="us-east-1a")
    attach_volume.fn(volume.id, instance_id)
    seen = describe_volume.fn(volume.id)
    assert (seen.id, seen.state, seen.attached_instance_id) == (volume.id, "in-use", instance_id)
    assert describe_instance.fn(instance_id).state == "running"
    ec2.terminate_instances(InstanceIds=[instance_id])
    assert describe_instance.fn(instance_id).state in {"shutting-down", "terminated"}
    with pytest.raises(AwsError) as err:
        describe_volume.fn("vol-0123456789abcdef0")
    assert err.value.code == "InvalidVolume.NotFound"
    with pytest.raises(InvalidInputError):
        describe_instance.fn("i-nope")  # malformed: refused before any call


def test_aws_errors_are_translated(ec2: Any) -> None:
    with pytest.raises(AwsError) as err:
        attach_volume.fn("vol-0123456789abcdef0", "i-0123456789abcdef0")
    assert err.value.code == "InvalidVolume.NotFound"
