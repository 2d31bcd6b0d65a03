"""EBS volumes and snapshots: create, list, attach, detach, delete, snapshot, restore, move.

Every function takes IDs, models and an AwsAccount block name (None = the standard AWS environment) and
returns models; clients are built inside. Checks that need no mutation (ownership, AZ, state, limits, safety
verdicts) all run before the first mutating call, so a refused request changes nothing.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from pydantic import BaseModel, Field

from blocks.aws import load_account
from core import tags as t
from core.data import dataset_filters
from core.ebs import VolumeSpec
from core.errors import InvalidInputError, NotManagedError, SafetyRefusalError, UsageError
from core.ids import validate_availability_zone, validate_id
from core.models import Instance, Snapshot, Volume
from core.names import NameKind, validate_device_name, validate_name
from core.safety import Verdict, snapshot_delete_verdict, volume_delete_verdict
from tasks.aws import WAIT, aws_task, current_task_run_id, translate
from tasks.ec2_instances import get_instance

SNAPSHOT_WAIT = {"Delay": 5, "MaxAttempts": 720}
DEVICE_CANDIDATES = [f"/dev/sd{c}" for c in "fghijklmnop"]
NOT_FOUND_CODES = {"InvalidVolume.NotFound", "InvalidSnapshot.NotFound", "InvalidInstanceID.NotFound"}


class DeleteResult(BaseModel):
    volume_id: str
    deleted: bool
    already_gone: bool = False
    snapshots_deleted: list[str] = Field(default_factory=list)
    snapshots_kept: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


def _ec2(account: str | None) -> Any:
    return load_account(account).client("ec2")


def _client_token(seed: str, key: str | None = None) -> str:
    """Stable across Prefect retries of one task run (the run ID), or across runs for one caller's idempotency
    `key` (a killed flow's re-run finds what the first run made); unique per call otherwise (64 chars max)."""
    run_id = current_task_run_id() if key is None else None  # outside a run: one token per call, still idempotent
    basis = f"{seed}|{key or run_id or uuid.uuid4()}"
    return "trainctl-" + hashlib.sha256(basis.encode()).hexdigest()[:40]


# -- reads (one call each; no per-resource fan-out) -----------------------------------------------------------


def get_volume(ec2: Any, volume_id: str) -> Volume:
    validate_id("volume", volume_id)
    with translate("DescribeVolumes"):
        found = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    return Volume.from_aws(found[0])


def get_snapshot(ec2: Any, snapshot_id: str) -> Snapshot:
    validate_id("snapshot", snapshot_id)
    with translate("DescribeSnapshots"):
        found = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    return Snapshot.from_aws(found[0])


@aws_task(name="describe-volume", task_run_name="describe {volume_id}", tags=["aws-ec2"])
def describe_volume(volume_id: str, *, account: str | None = None) -> Volume:
    """The volume as EC2 has it now (flows: a task, so a throttled call is retried)."""
    return get_volume(_ec2(account), volume_id)


def snapshots_of(ec2: Any, volume_id: str) -> list[Snapshot]:
    """Every snapshot this account owns of the volume (managed or not: the user must see them all)."""
    with translate("DescribeSnapshots"):
        pages = ec2.get_paginator("describe_snapshots").paginate(
            OwnerIds=["self"], Filters=[{"Name": "volume-id", "Values": [volume_id]}]
        )
        return [Snapshot.from_aws(s) for page in pages for s in page["Snapshots"]]


def managed_volumes_named(ec2: Any, name: str) -> list[Volume]:
    return managed_volumes_matching(ec2, [{"Name": f"tag:{t.NAME}", "Values": [name]}])


def dataset_volumes(ec2: Any, dataset_uri: str) -> list[Volume]:
    """The finished prewarms of this dataset (tagged `trainctl:dataset`), wherever they are."""
    return managed_volumes_matching(ec2, dataset_filters(dataset_uri))


def managed_volumes_matching(ec2: Any, filters: list[dict[str, Any]]) -> list[Volume]:
    """Managed volumes (not being deleted) that match `filters`, filtered server-side, every page read."""
    found: dict[str, Volume] = {}
    for managed in t.managed_filter_sets():
        with translate("DescribeVolumes"):
            pages = ec2.get_paginator("describe_volumes").paginate(Filters=[*managed, *filters])
            for page in pages:
                for data in page["Volumes"]:
                    if data.get("State") not in {"deleting", "deleted"}:
                        found[data["VolumeId"]] = Volume.from_aws(data)
    return list(found.values())


def resolve_availability_zone(
    ec2: Any,
    *,
    availability_zone: str | None = None,
    instance_id: str | None = None,
    instance_type: str | None = None,
) -> str:
    """The AZ a new volume goes to: the one given, the named instance's, or the first that offers the type."""
    with translate("DescribeAvailabilityZones"):
        zones = sorted(
            z["ZoneName"]
            for z in ec2.describe_availability_zones(Filters=[{"Name": "state", "Values": ["available"]}])[
                "AvailabilityZones"
            ]
        )
    if availability_zone:
        validate_availability_zone(availability_zone)
        if availability_zone not in zones:
            raise InvalidInputError(
                "availability_zone", availability_zone, f"an available zone of this region: {', '.join(zones)}"
            )
        return availability_zone
    if instance_id:
        zone = get_instance(ec2, instance_id).availability_zone
        if zone:
            return zone
    if instance_type:
        with translate("DescribeInstanceTypeOfferings"):
            pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
                LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": [instance_type]}]
            )
            offered = sorted({o["Location"] for page in pages for o in page["InstanceTypeOfferings"]} & set(zones))
        if not offered:
            raise InvalidInputError(
                "instance_type", instance_type, "an instance type offered in this region's availability zones"
            )
        return offered[0]
    if not zones:
        raise UsageError("this region reports no available availability zone")
    return zones[0]


def refuse_unmanaged(resource: Volume | Instance | Snapshot, *, action: str, adopt: bool) -> None:
    """The read-only half of `_require_managed`: refuse early, before any other call, unless adopting."""
    if not resource.managed and not adopt:
        raise NotManagedError(resource.id, action=action)


def _require_managed(resource: Volume | Instance | Snapshot, *, action: str, adopt: bool, ec2: Any) -> None:
    """Unmanaged resources are never modified, nor read into managed ones; with adopt they are tagged managed
    first (DESIGN.md section 2). Called last before the mutation, after every other check."""
    if resource.managed:
        return
    refuse_unmanaged(resource, action=action, adopt=adopt)
    with translate("CreateTags"):
        ec2.create_tags(Resources=[resource.id], Tags=t.to_aws({t.MANAGED: "true"}))


# -- tasks ----------------------------------------------------------------------------------------------------


@aws_task(name="adopt-volume", task_run_name="adopt {volume_id}", tags=["aws-ec2"])
def adopt_volume(volume_id: str, *, account: str | None = None) -> Volume:
    """What --adopt does: tag a volume trainctl did not create trainctl:managed=true (a no-op for its own)."""
    ec2 = _ec2(account)
    volume = get_volume(ec2, volume_id)
    _require_managed(volume, action="adopt", adopt=True, ec2=ec2)
    return volume.model_copy(update={"tags": {**volume.tags, t.MANAGED: "true"}})


@aws_task(name="create-volume", task_run_name="create-volume {spec.name}", tags=["aws-ec2"])
def create_volume(
    spec: VolumeSpec,
    *,
    availability_zone: str | None = None,
    instance_id: str | None = None,
    instance_type: str | None = None,
    job: str | None = None,
    extra_tags: dict[str, str] | None = None,
    adopt: bool = False,
    idempotency_key: str | None = None,
    account: str | None = None,
) -> Volume:
    """Create a volume (encrypted, gp3, persistent by default) and wait until it is `available`. `extra_tags`
    (e.g. a prewarm's progress tag) are set at creation too; they never override the schema's own keys.

    Refuses a name that a managed volume already has, and a source snapshot trainctl does not own (unless
    `adopt`: tagged managed first). The AZ is the one given, the instance's, or the first AZ offering
    `instance_type`. A retried call (Prefect task retry), or any call with the same `idempotency_key` and
    request, returns the volume the first one made.
    """
    ec2 = _ec2(account)
    source = get_snapshot(ec2, spec.snapshot_id) if spec.snapshot_id else None
    if source is not None:
        refuse_unmanaged(source, action="restore a volume from", adopt=adopt)
    zone = resolve_availability_zone(
        ec2, availability_zone=availability_zone, instance_id=instance_id, instance_type=instance_type
    )
    token = _client_token(f"{spec.model_dump_json()}|{zone}|{job}", idempotency_key)
    for existing in managed_volumes_named(ec2, spec.name):
        if existing.tags.get(t.CLIENT_TOKEN) == token:
            return wait_volume(ec2, existing.id, "volume_available")
        raise UsageError(
            f"a trainctl volume named {spec.name!r} already exists: {existing.id} in {existing.availability_zone}",
            fix="Choose another name, use the existing volume, or delete it first.",
        )
    request = _volume_request(spec, zone, token, job=job, extra_tags=extra_tags)
    if source is not None:
        request["SnapshotId"] = source.id
        _require_managed(source, action="restore a volume from", adopt=adopt, ec2=ec2)
    with translate("CreateVolume"):
        created = ec2.create_volume(**request)
    return wait_volume(ec2, created["VolumeId"], "volume_available")


def _volume_request(
    spec: VolumeSpec, zone: str, token: str, *, job: str | None, extra_tags: dict[str, str] | None
) -> dict[str, Any]:
    """The CreateVolume request: the spec's type and performance, tagged at creation."""
    tag_map = t.managed_tags(
        job=job,
        role=t.Role.DATA,
        name=spec.name,
        persistent=spec.persistent,
        protected=spec.protected,
        client_token=token,
        extra=extra_tags,
    )
    request: dict[str, Any] = {
        "AvailabilityZone": zone,
        "Size": spec.size_gib,
        "VolumeType": spec.volume_type,
        "Encrypted": spec.encrypted,
        "TagSpecifications": t.tag_specifications("volume", tag_map),
        "ClientToken": token,
    }
    if spec.iops is not None:
        request["Iops"] = spec.iops
    if spec.throughput is not None:
        request["Throughput"] = spec.throughput
    if spec.kms_key_id:
        request["KmsKeyId"] = spec.kms_key_id
    return request


def wait_volume(ec2: Any, volume_id: str, waiter: str) -> Volume:
    with translate(f"wait {waiter}"):
        ec2.get_waiter(waiter).wait(VolumeIds=[volume_id], WaiterConfig=WAIT)
    return get_volume(ec2, volume_id)


def _wait_attachment(ec2: Any, volume_id: str, instance_id: str) -> Volume:
    """`volume_in_use` fires on the volume state; the attachment itself may still be `attaching`."""
    deadline = datetime.now(UTC) + timedelta(seconds=WAIT["Delay"] * WAIT["MaxAttempts"])
    while True:
        volume = wait_volume(ec2, volume_id, "volume_in_use")
        if any(a.instance_id == instance_id and a.state == "attached" for a in volume.attachments):
            return volume
        if datetime.now(UTC) > deadline:
            raise UsageError(f"{volume_id} did not reach 'attached' on {instance_id} in time")
        time.sleep(WAIT["Delay"])


def free_device(instance: Instance, used: set[str], requested: str | None) -> str:
    """The device name to attach at: the requested one if free, else the first free /dev/sd[f-p]."""
    # /dev/sdf and /dev/xvdf are one device: either spelling in use makes both taken.
    taken = {u.replace("/dev/xvd", "/dev/sd") for u in used}
    if requested:
        if requested.replace("/dev/xvd", "/dev/sd") in taken:
            raise InvalidInputError(
                "device", requested, f"a device name not in use on {instance.id} (in use: {', '.join(sorted(used))})"
            )
        return requested
    for device in DEVICE_CANDIDATES:
        if device not in taken:
            return device
    raise UsageError(f"{instance.id} has no free device name among {DEVICE_CANDIDATES[0]}..{DEVICE_CANDIDATES[-1]}")


@aws_task(name="attach-volume", task_run_name="attach {volume_id} → {instance_id}", tags=["aws-ec2"])
def attach_volume(
    volume_id: str,
    instance_id: str,
    *,
    device: str | None = None,
    adopt: bool = False,
    account: str | None = None,
) -> Volume:
    """Attach and wait until `attached`. A volume in another AZ is refused before any call, naming the fix."""
    if device is not None:
        validate_device_name(device)
    ec2 = _ec2(account)
    volume = get_volume(ec2, volume_id)
    instance = get_instance(ec2, instance_id)
    if volume.attached_instance_id == instance_id:
        _require_managed(volume, action="attach", adopt=adopt, ec2=ec2)
        _require_managed(instance, action="attach to", adopt=adopt, ec2=ec2)
        return _wait_attachment(ec2, volume_id, instance_id)  # already done (a retry, or a re-run)
    if volume.attached_instance_id:
        raise UsageError(
            f"{volume_id} is in use by {volume.attached_instance_id}",
            fix=f"Detach it first: trainctl ebs detach {volume_id}",
        )
    if volume.availability_zone != instance.availability_zone:
        raise UsageError(
            f"{volume_id} is in {volume.availability_zone} but {instance_id} is in {instance.availability_zone}; "
            "EBS volumes attach only within their availability zone",
            fix=f"Move the volume: trainctl ebs move {volume_id} {instance.availability_zone} "
            f"(snapshot + restore), or launch the instance in {volume.availability_zone}.",
        )
    if instance.state not in {"running", "stopped"}:
        raise UsageError(f"{instance_id} is {instance.state}; volumes attach to running or stopped instances")
    if volume.state != "available":
        raise UsageError(f"{volume_id} is {volume.state}, not available")
    with translate("DescribeInstances"):
        data = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    used = {b["DeviceName"] for b in data.get("BlockDeviceMappings", [])} | {data.get("RootDeviceName", "")}
    chosen = free_device(instance, used, device)
    _require_managed(volume, action="attach", adopt=adopt, ec2=ec2)
    _require_managed(instance, action="attach to", adopt=adopt, ec2=ec2)
    with translate("AttachVolume"):
        ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device=chosen)
    return _wait_attachment(ec2, volume_id, instance_id)


@aws_task(name="detach-volume", task_run_name="detach {volume_id}", tags=["aws-ec2"])
def detach_volume(volume_id: str, *, force: bool = False, adopt: bool = False, account: str | None = None) -> Volume:
    """Detach and wait until `available`. Detaching an already detached volume is a no-op (idempotent)."""
    ec2 = _ec2(account)
    volume = get_volume(ec2, volume_id)
    if not volume.attached and volume.state == "available":
        return volume
    _require_managed(volume, action="detach", adopt=adopt, ec2=ec2)
    if force and volume.attached_instance_id:
        # A forced detach skips the OS's flush: on a running instance it can tear a training job's writes. It is
        # for attachments stuck on a stopped or dead instance; a running one is stopped (or torn down) first.
        state = get_instance(ec2, volume.attached_instance_id).state
        if state in {"pending", "running"}:
            raise SafetyRefusalError(
                f"refusing a forced detach of {volume_id}: {volume.attached_instance_id} is {state}",
                fix="Detach without --force (the OS flushes first), or stop the instance, or use trainctl teardown.",
            )
    with translate("DetachVolume"):
        try:
            ec2.detach_volume(VolumeId=volume_id, InstanceId=volume.attached_instance_id, Force=force)
        except Exception as exc:
            if _code(exc) != "IncorrectState":  # detached in the meantime: the goal is reached
                raise
    return wait_volume(ec2, volume_id, "volume_available")


@dataclass(frozen=True)
class VolumeDeletePlan:
    """What deleting a volume would do now: the volume, every snapshot of it, and core.safety's verdict."""

    volume: Volume
    snapshots: list[Snapshot]
    verdict: Verdict
    now: datetime


def plan_volume_delete(
    volume_id: str,
    *,
    min_age: timedelta,
    now: datetime | None = None,
    force: bool = False,
    adopt: bool = False,
    delete_snapshots: bool = False,
    account: str | None = None,
) -> VolumeDeletePlan | None:
    """The verdict `delete_volume` acts on, read-only (also shown to a user before asking); None when the volume
    does not exist (already deleted)."""
    ec2 = _ec2(account)
    validate_id("volume", volume_id)
    try:
        volume = get_volume(ec2, volume_id)
    except Exception as exc:
        if _code(exc) == "InvalidVolume.NotFound":
            return None
        raise
    snapshots = snapshots_of(ec2, volume_id)
    at = now or datetime.now(UTC)
    verdict = volume_delete_verdict(
        volume,
        snapshots=snapshots,
        now=at,
        min_age=min_age,
        force=force,
        adopt=adopt,
        delete_snapshots=delete_snapshots,
    )
    return VolumeDeletePlan(volume=volume, snapshots=snapshots, verdict=verdict, now=at)


@aws_task(name="delete-volume", task_run_name="delete {volume_id}", tags=["aws-ec2"])
def delete_volume(
    volume_id: str,
    *,
    force: bool = False,
    delete_snapshots: bool = False,
    adopt: bool = False,
    min_age: timedelta = timedelta(minutes=5),
    now: datetime | None = None,
    account: str | None = None,
) -> DeleteResult:
    """Delete a volume under every rule of DESIGN.md section 3 (attached: refused; persistent, protected or
    young: needs force; snapshots: listed, deleted only with delete_snapshots). Already gone = done."""
    plan = plan_volume_delete(
        volume_id,
        now=now,
        min_age=min_age,
        force=force,
        adopt=adopt,
        delete_snapshots=delete_snapshots,
        account=account,
    )
    if plan is None:
        return DeleteResult(volume_id=volume_id, deleted=False, already_gone=True)
    volume, snapshots, verdict = plan.volume, plan.snapshots, plan.verdict
    verdict.raise_if_refused()
    ec2 = _ec2(account)
    _require_managed(volume, action="delete", adopt=adopt, ec2=ec2)
    deleted_snapshots: list[str] = []
    if delete_snapshots:
        for snapshot_id in [s.id for s in snapshots]:
            _tolerate_not_found(partial(ec2.delete_snapshot, SnapshotId=snapshot_id), "DeleteSnapshot")
            deleted_snapshots.append(snapshot_id)
    _tolerate_not_found(lambda: ec2.delete_volume(VolumeId=volume_id), "DeleteVolume")
    return DeleteResult(
        volume_id=volume_id,
        deleted=True,
        snapshots_deleted=deleted_snapshots,
        snapshots_kept=[s.id for s in snapshots if s.id not in deleted_snapshots],
        notes=list(verdict.notes),
    )


@aws_task(name="create-snapshot", task_run_name="snapshot {volume_id}", tags=["aws-ec2"])
def create_snapshot(
    volume_id: str,
    *,
    description: str = "",
    wait: bool = True,
    adopt: bool = False,
    idempotency_key: str | None = None,
    extra_tags: dict[str, str] | None = None,
    account: str | None = None,
) -> Snapshot:
    """Snapshot a volume (tags follow the volume's job and name, plus `extra_tags`) and, by default, wait until
    `completed`. A retried call, or any call with the same `idempotency_key`, volume and description, returns the
    first one's."""
    ec2 = _ec2(account)
    volume = get_volume(ec2, volume_id)
    _require_managed(volume, action="snapshot", adopt=adopt, ec2=ec2)
    # CreateSnapshot takes no ClientToken: the token tag lets a retried task find the snapshot it already made.
    token = _client_token(f"snapshot|{volume_id}|{description}", idempotency_key)
    with translate("DescribeSnapshots"):
        earlier = ec2.describe_snapshots(
            OwnerIds=["self"], Filters=[{"Name": f"tag:{t.CLIENT_TOKEN}", "Values": [token]}]
        )["Snapshots"]
    if earlier:
        snapshot_id = earlier[0]["SnapshotId"]
    else:
        tag_map = t.managed_tags(
            job=volume.job,
            role=t.Role(volume.role) if volume.role in set(t.Role) else t.Role.DATA,
            name=f"{volume.name or volume_id}@{datetime.now(UTC):%Y%m%dT%H%M%SZ}",
            client_token=token,
            extra=extra_tags,
        )
        with translate("CreateSnapshot"):
            created = ec2.create_snapshot(
                VolumeId=volume_id,
                Description=description or f"trainctl snapshot of {volume.name or volume_id}",
                TagSpecifications=t.tag_specifications("snapshot", tag_map),
            )
        snapshot_id = created["SnapshotId"]
    if wait:
        with translate("wait snapshot_completed"):
            ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snapshot_id], WaiterConfig=SNAPSHOT_WAIT)
    with translate("DescribeSnapshots"):
        return Snapshot.from_aws(ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0])


@aws_task(name="list-snapshots", tags=["aws-ec2"])
def list_snapshots(volume_id: str | None = None, *, account: str | None = None) -> list[Snapshot]:
    """Managed snapshots, optionally only those of one volume (paginated, filtered server-side)."""
    ec2 = _ec2(account)
    found: dict[str, Snapshot] = {}
    extra = [{"Name": "volume-id", "Values": [validate_id("volume", volume_id)]}] if volume_id else []
    for filters in t.managed_filter_sets():
        with translate("DescribeSnapshots"):
            pages = ec2.get_paginator("describe_snapshots").paginate(OwnerIds=["self"], Filters=[*filters, *extra])
            for page in pages:
                for data in page["Snapshots"]:
                    found[data["SnapshotId"]] = Snapshot.from_aws(data)
    return sorted(found.values(), key=lambda s: s.created_at)


@aws_task(name="delete-snapshot", task_run_name="delete {snapshot_id}", tags=["aws-ec2"])
def delete_snapshot(
    snapshot_id: str,
    *,
    force: bool = False,
    adopt: bool = False,
    min_age: timedelta = timedelta(minutes=5),
    now: datetime | None = None,
    account: str | None = None,
) -> bool:
    """Delete a snapshot under the ownership/protection/age rules. False when it was already gone."""
    ec2 = _ec2(account)
    validate_id("snapshot", snapshot_id)
    try:
        with translate("DescribeSnapshots"):
            data = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    except Exception as exc:
        if _code(exc) == "InvalidSnapshot.NotFound":
            return False
        raise
    snapshot = Snapshot.from_aws(data)
    snapshot_delete_verdict(
        snapshot, now=now or datetime.now(UTC), min_age=min_age, force=force, adopt=adopt
    ).raise_if_refused()
    _tolerate_not_found(lambda: ec2.delete_snapshot(SnapshotId=snapshot_id), "DeleteSnapshot")
    return True


@aws_task(name="restore-snapshot", task_run_name="restore {snapshot_id} → {availability_zone}", tags=["aws-ec2"])
def restore_snapshot(
    snapshot_id: str,
    availability_zone: str,
    *,
    name: str,
    volume_type: str = "gp3",
    size_gib: int | None = None,
    persistent: bool = True,
    protected: bool = False,
    iops: int | None = None,
    throughput: int | None = None,
    job: str | None = None,
    adopt: bool = False,
    idempotency_key: str | None = None,
    account: str | None = None,
) -> Volume:
    """A new volume in any AZ from a snapshot (at least the snapshot's size). A snapshot trainctl does not own
    is refused unless `adopt` (then it is tagged managed, right before the volume is created)."""
    ec2 = _ec2(account)
    snap = get_snapshot(ec2, snapshot_id)
    refuse_unmanaged(snap, action="restore a volume from", adopt=adopt)
    if snap.state != "completed":
        raise UsageError(f"{snapshot_id} is {snap.state}; wait until it is completed")
    size = size_gib or snap.size_gib
    if size < snap.size_gib:
        raise InvalidInputError("size_gib", size, f"at least the snapshot's size, {snap.size_gib} GiB")
    spec = VolumeSpec(
        name=name,
        size_gib=size,
        volume_type=volume_type,
        persistent=persistent,
        protected=protected,
        iops=iops,
        throughput=throughput,
        snapshot_id=snapshot_id,
    )
    return create_volume.fn(
        spec,
        availability_zone=availability_zone,
        job=job or snap.job,
        adopt=adopt,
        idempotency_key=idempotency_key,
        account=account,
    )


@aws_task(name="move-volume", task_run_name="move {volume_id} → {availability_zone}", tags=["aws-ec2"], retries=0)
def move_volume(
    volume_id: str,
    availability_zone: str,
    *,
    adopt: bool = False,
    idempotency_key: str | None = None,
    account: str | None = None,
) -> Volume:
    """Move a detached volume to another AZ: snapshot, restore there under the same name, keep the original.

    The original is renamed `<name>@<old-az>` (and keeps its data and protection); delete it yourself once the
    new volume is verified. The snapshot remains as a restore point. A volume trainctl does not own is refused
    unless `adopt` (then it is tagged managed, after every other check). With an `idempotency_key` a second call
    (the first one's flow killed half-way) continues the first: same snapshot, same new volume, nothing doubled.
    """
    ec2 = _ec2(account)
    volume = get_volume(ec2, volume_id)
    refuse_unmanaged(volume, action="move", adopt=adopt)
    zone = resolve_availability_zone(ec2, availability_zone=availability_zone)
    if zone == volume.availability_zone:
        return volume
    if volume.attached:
        raise UsageError(
            f"{volume_id} is attached to {volume.attached_instance_id}; a move snapshots it, so detach it first "
            "for a consistent copy",
            fix=f"trainctl ebs detach {volume_id}",
        )
    name = volume.name or volume_id
    suffix = f"@{volume.availability_zone}"
    if idempotency_key and name.endswith(suffix):
        name = name[: -len(suffix)]  # renamed by an earlier call of this move: the copy takes the name it had
    # The copy is created under this name: an unusable one is refused now, not after the snapshot was taken.
    validate_name(NameKind.RESOURCE, name, field=f"the Name tag of {volume_id}")
    _require_managed(volume, action="move", adopt=adopt, ec2=ec2)
    snapshot = create_snapshot.fn(
        volume_id, description=f"trainctl move of {name} to {zone}", idempotency_key=idempotency_key, account=account
    )
    with translate("CreateTags"):
        ec2.create_tags(Resources=[volume_id], Tags=t.to_aws({t.NAME: f"{name}@{volume.availability_zone}"}))
    try:
        return restore_snapshot.fn(
            snapshot.id,
            zone,
            name=name,
            volume_type=volume.volume_type,
            size_gib=volume.size_gib,
            persistent=volume.persistent,
            protected=volume.protected,  # the moved volume keeps its protection, not only the original
            # Provisioned performance moves too (gp3 always reports its baseline 3,000 IOPS / 125 MiB/s).
            iops=volume.iops if volume.volume_type in {"gp3", "io1", "io2"} else None,
            throughput=volume.throughput if volume.volume_type == "gp3" else None,
            job=volume.job,
            idempotency_key=idempotency_key,
            account=account,
        )
    except Exception:
        with translate("CreateTags"):  # give the original its name back: the move did not happen
            ec2.create_tags(Resources=[volume_id], Tags=t.to_aws({t.NAME: name}))
        raise


def _code(exc: BaseException) -> str | None:
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None


def _tolerate_not_found(call: Callable[[], Any], operation: str) -> None:
    """Deletes are idempotent: NotFound means it is already done."""
    try:
        with translate(operation):
            call()
    except Exception as exc:
        if _code(exc) not in NOT_FOUND_CODES:
            raise


@aws_task(name="mark-prewarmed", task_run_name="mark-prewarmed {volume_id}", tags=["aws-ec2"])
def mark_prewarmed(volume_id: str, *, digest: str | None = None, account: str | None = None) -> None:
    """The prewarm of this managed volume finished (data verified, volume detached): its progress tag says so, and
    the sweep no longer reports it as left by an unfinished prewarm; a volume of a dataset (`trainctl:dataset`)
    gets the `digest` of what it now holds. A volume without the progress tag is left as it is."""
    ec2 = _ec2(account)
    volume = get_volume(ec2, volume_id)
    if not volume.managed or volume.tags.get(t.PREWARM) != t.PREWARM_PENDING:
        return
    tags = {t.PREWARM: t.PREWARM_DONE}
    if digest is not None and t.DATASET in volume.tags:
        tags[t.DATASET_DIGEST] = digest
    with translate("CreateTags"):
        ec2.create_tags(Resources=[volume_id], Tags=t.to_aws(tags))


@aws_task(name="reopen-prewarm", tags=["aws-ec2"])
def reopen_prewarm(volume_id: str, *, account: str | None = None) -> None:
    """A prewarmed volume is being synced again: `pending` until `mark_prewarmed`, so a sync that does not finish
    leaves a volume nobody reuses (and the sweep reports)."""
    ec2 = _ec2(account)
    volume = get_volume(ec2, volume_id)
    refuse_unmanaged(volume, action="prewarm", adopt=False)
    with translate("CreateTags"):
        ec2.create_tags(Resources=[volume_id], Tags=t.to_aws({t.PREWARM: t.PREWARM_PENDING}))


@aws_task(name="find-dataset-volumes", tags=["aws-ec2"])
def find_dataset_volumes(source: str, *, account: str | None = None) -> list[Volume]:
    """The managed volumes whose finished prewarm holds the dataset `source` (by `trainctl:dataset`; filtered
    server-side, paginated), attached or not."""
    return dataset_volumes(_ec2(account), source)
