"""Models built from AWS describe shapes, ages with an explicit `now`, and Inventory.assemble's links."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.models import Instance, Inventory, Snapshot, Volume

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
MANAGED = [{"Key": "trainctl:managed", "Value": "true"}, {"Key": "trainctl:job", "Value": "llm"}]


def instance() -> Instance:
    return Instance.from_aws(
        {
            "InstanceId": "i-0123456789abcdef0",
            "InstanceType": "g5.xlarge",
            "LaunchTime": NOW - timedelta(minutes=30),
            "State": {"Code": 16, "Name": "running"},
            "Placement": {"AvailabilityZone": "us-east-1a"},
            "InstanceLifecycle": "spot",
            "SpotInstanceRequestId": "sir-abc",
            "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeId": "vol-0000000000000root"}}],
            "Tags": [*MANAGED, {"Key": "trainctl:attempt", "Value": "2"}],
        }
    )


def volume() -> Volume:
    return Volume.from_aws(
        {
            "VolumeId": "vol-0123456789abcdef0",
            "Size": 100,
            "VolumeType": "gp3",
            "Iops": 3000,
            "CreateTime": datetime(2026, 5, 1, 11, 0),  # naive: treated as UTC
            "State": "in-use",
            "AvailabilityZone": "us-east-1a",
            "Attachments": [
                {
                    "InstanceId": "i-0123456789abcdef0",
                    "Device": "/dev/sdf",
                    "State": "attached",
                    "DeleteOnTermination": False,
                }
            ],
            "Tags": [*MANAGED, {"Key": "runctl:persistent", "Value": "true"}],
        }
    )


def snapshot() -> Snapshot:
    return Snapshot.from_aws(
        {
            "SnapshotId": "snap-0123456789abcdef0",
            "VolumeId": "vol-0123456789abcdef0",
            "VolumeSize": 100,
            "StartTime": NOW + timedelta(minutes=1),  # clock skew: age never negative
            "State": "completed",
            "Progress": "100%",
            "Tags": [{"Key": "CreatedBy", "Value": "runctl"}, {"Key": "trainctl:important", "Value": "true"}],
        }
    )


def test_from_aws() -> None:
    i, v, s = instance(), volume(), snapshot()
    assert (i.lifecycle, i.spot_request_id, i.attempt, i.job, i.state) == ("spot", "sir-abc", 2, "llm", "running")
    assert i.age(NOW) == timedelta(minutes=30)
    assert v.attached_instance_id == "i-0123456789abcdef0" and v.persistent and v.managed
    assert v.age(NOW) == timedelta(hours=1)
    assert s.managed and s.protected and s.age(NOW) == timedelta(0)


def test_assemble_links() -> None:
    inv = Inventory.assemble(
        region="us-east-1", taken_at=NOW, instances=[instance()], volumes=[volume()], snapshots=[snapshot()]
    )
    assert inv.instances[0].volume_ids == ["vol-0000000000000root", "vol-0123456789abcdef0"]
    assert inv.volumes[0].snapshot_ids == ["snap-0123456789abcdef0"]
    assert inv.volumes_of("i-0123456789abcdef0") == inv.volumes
    assert inv.snapshots_of("vol-0123456789abcdef0") == inv.snapshots
    assert inv.get("snap-0123456789abcdef0") is not None and inv.get("vol-missing") is None
    assert {r.id for r in inv.of_job("llm")} == {"i-0123456789abcdef0", "vol-0123456789abcdef0"}
    assert Inventory.model_validate_json(inv.model_dump_json()) == inv
