"""The resources trainctl owns, as plain pydantic models built from AWS describe output.

No boto3 here: tasks turn AWS responses into these models (`from_aws` constructors take the response dicts),
and the pure decisions in core/ work on them with an explicit `now`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from core import tags as t


class ResourceKind(StrEnum):
    INSTANCE = "instance"
    VOLUME = "volume"
    SNAPSHOT = "snapshot"
    STAGING_OBJECT = "staging-object"


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class ManagedResource(BaseModel):
    """What every managed resource has: an ID, its tags, where it lives, and when it was made."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: ResourceKind
    tags: dict[str, str] = Field(default_factory=dict)
    created_at: datetime
    state: str
    availability_zone: str | None = None

    @property
    def name(self) -> str | None:
        return self.tags.get(t.NAME)

    @property
    def job(self) -> str | None:
        return self.tags.get(t.JOB)

    @property
    def role(self) -> str | None:
        return self.tags.get(t.ROLE)

    @property
    def managed(self) -> bool:
        return t.is_managed(self.tags)

    @property
    def persistent(self) -> bool:
        return t.is_persistent(self.tags)

    @property
    def protected(self) -> bool:
        return t.is_protected(self.tags)

    def age(self, now: datetime) -> timedelta:
        """How long ago the resource was created (never negative, whatever the clocks say)."""
        return max(timedelta(0), _aware(now) - _aware(self.created_at))


class VolumeAttachment(BaseModel):
    model_config = ConfigDict(frozen=True)

    instance_id: str
    device: str
    state: str
    delete_on_termination: bool = False


class Instance(ManagedResource):
    kind: ResourceKind = ResourceKind.INSTANCE
    instance_type: str
    lifecycle: str = "on-demand"  # "spot" or "on-demand": the capacity type obtained
    spot_request_id: str | None = None
    state_reason_code: str | None = None
    # The spot request's Status.Code (DescribeSpotInstanceRequests), filled by observe_training_instances.
    spot_request_status: str | None = None
    private_ip: str | None = None
    # Filled by the inventory from the volumes' attachments; no extra call per instance.
    volume_ids: list[str] = Field(default_factory=list)

    @property
    def attempt(self) -> int | None:
        value = self.tags.get(t.ATTEMPT)
        return int(value) if value and value.isdigit() else None

    @classmethod
    def from_aws(cls, data: Mapping[str, Any]) -> Instance:
        """Build from one element of DescribeInstances `Reservations[].Instances[]`."""
        block_devices = data.get("BlockDeviceMappings") or []
        return cls(
            id=data["InstanceId"],
            tags=t.from_aws(data.get("Tags")),
            created_at=data["LaunchTime"],
            state=data.get("State", {}).get("Name", "unknown"),
            availability_zone=data.get("Placement", {}).get("AvailabilityZone"),
            instance_type=data.get("InstanceType", "unknown"),
            lifecycle="spot" if data.get("InstanceLifecycle") == "spot" else "on-demand",
            spot_request_id=data.get("SpotInstanceRequestId"),
            state_reason_code=(data.get("StateReason") or {}).get("Code"),
            private_ip=data.get("PrivateIpAddress"),
            volume_ids=[b["Ebs"]["VolumeId"] for b in block_devices if "Ebs" in b],
        )


class Volume(ManagedResource):
    kind: ResourceKind = ResourceKind.VOLUME
    size_gib: int
    volume_type: str
    iops: int | None = None
    throughput: int | None = None
    encrypted: bool = False
    source_snapshot_id: str | None = None
    attachments: list[VolumeAttachment] = Field(default_factory=list)
    # IDs of managed snapshots taken from this volume; filled by the inventory.
    snapshot_ids: list[str] = Field(default_factory=list)

    @property
    def attached_instance_id(self) -> str | None:
        live = [a for a in self.attachments if a.state in {"attaching", "attached", "busy"}]
        return live[0].instance_id if live else None

    @property
    def attached(self) -> bool:
        return self.attached_instance_id is not None

    @classmethod
    def from_aws(cls, data: Mapping[str, Any]) -> Volume:
        """Build from one element of DescribeVolumes `Volumes[]`."""
        return cls(
            id=data["VolumeId"],
            tags=t.from_aws(data.get("Tags")),
            created_at=data["CreateTime"],
            state=data.get("State", "unknown"),
            availability_zone=data.get("AvailabilityZone"),
            size_gib=int(data.get("Size", 0)),
            volume_type=data.get("VolumeType", "unknown"),
            iops=data.get("Iops"),
            throughput=data.get("Throughput"),
            encrypted=bool(data.get("Encrypted", False)),
            source_snapshot_id=data.get("SnapshotId") or None,
            attachments=[
                VolumeAttachment(
                    instance_id=a["InstanceId"],
                    device=a.get("Device", ""),
                    state=a.get("State", "unknown"),
                    delete_on_termination=bool(a.get("DeleteOnTermination", False)),
                )
                for a in data.get("Attachments") or []
            ],
        )


class Snapshot(ManagedResource):
    kind: ResourceKind = ResourceKind.SNAPSHOT
    volume_id: str | None = None
    size_gib: int = 0
    progress: str | None = None
    description: str = ""

    @classmethod
    def from_aws(cls, data: Mapping[str, Any]) -> Snapshot:
        """Build from one element of DescribeSnapshots `Snapshots[]`."""
        return cls(
            id=data["SnapshotId"],
            tags=t.from_aws(data.get("Tags")),
            created_at=data["StartTime"],
            state=data.get("State", "unknown"),
            volume_id=data.get("VolumeId") or None,
            size_gib=int(data.get("VolumeSize", 0)),
            progress=data.get("Progress"),
            description=data.get("Description", ""),
        )


class StoredObject(BaseModel):
    """One S3 object as a listing gives it."""

    model_config = ConfigDict(frozen=True)

    key: str
    size: int
    last_modified: datetime


class Inventory(BaseModel):
    """Every managed instance, volume and snapshot of one region, with their relations resolved."""

    region: str
    taken_at: datetime
    instances: list[Instance] = Field(default_factory=list)
    volumes: list[Volume] = Field(default_factory=list)
    snapshots: list[Snapshot] = Field(default_factory=list)

    def resources(self) -> list[ManagedResource]:
        return [*self.instances, *self.volumes, *self.snapshots]

    def get(self, resource_id: str) -> ManagedResource | None:
        return next((r for r in self.resources() if r.id == resource_id), None)

    # Indexes built on first use: planners ask per instance/volume, and a scan each time is quadratic.
    _volumes_by_instance: dict[str, list[Volume]] | None = PrivateAttr(default=None)
    _snapshots_by_volume: dict[str, list[Snapshot]] | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:
        # The lazily built indexes are a cache, not state: two inventories of the same resources are equal.
        return isinstance(other, Inventory) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable model, as pydantic's default

    def volumes_of(self, instance_id: str) -> list[Volume]:
        if self._volumes_by_instance is None:
            index: dict[str, list[Volume]] = {}
            for volume in self.volumes:
                if volume.attached_instance_id:
                    index.setdefault(volume.attached_instance_id, []).append(volume)
            self._volumes_by_instance = index
        return list(self._volumes_by_instance.get(instance_id, []))

    def snapshots_of(self, volume_id: str) -> list[Snapshot]:
        if self._snapshots_by_volume is None:
            index: dict[str, list[Snapshot]] = {}
            for snapshot in self.snapshots:
                if snapshot.volume_id:
                    index.setdefault(snapshot.volume_id, []).append(snapshot)
            self._snapshots_by_volume = index
        return list(self._snapshots_by_volume.get(volume_id, []))

    def of_job(self, job: str) -> list[ManagedResource]:
        return [r for r in self.resources() if r.job == job]

    @classmethod
    def assemble(
        cls,
        *,
        region: str,
        taken_at: datetime,
        instances: list[Instance],
        volumes: list[Volume],
        snapshots: list[Snapshot],
    ) -> Inventory:
        """Link the three listings: each instance gets its attached volumes, each volume its snapshots.

        Attachment is read from the volume side (authoritative, includes volumes attached after launch); a
        managed instance's unmanaged volume still shows in `Instance.volume_ids` from its block devices.
        """
        attached: dict[str, list[str]] = {}
        for volume in volumes:
            if volume.attached_instance_id:
                attached.setdefault(volume.attached_instance_id, []).append(volume.id)
        by_volume: dict[str, list[str]] = {}
        for snapshot in snapshots:
            if snapshot.volume_id:
                by_volume.setdefault(snapshot.volume_id, []).append(snapshot.id)
        linked_instances = [
            i.model_copy(update={"volume_ids": sorted(set(i.volume_ids) | set(attached.get(i.id, [])))})
            for i in instances
        ]
        linked_volumes = [v.model_copy(update={"snapshot_ids": sorted(by_volume.get(v.id, []))}) for v in volumes]
        return cls(
            region=region,
            taken_at=taken_at,
            instances=sorted(linked_instances, key=lambda r: r.id),
            volumes=sorted(linked_volumes, key=lambda r: r.id),
            snapshots=sorted(snapshots, key=lambda r: r.id),
        )
