"""Prewarm: the spec, the on-instance scripts (built with core.shell, every value quoted), and verification.

Verification compares what landed on the volume with the S3 listing: file count, bytes, and a digest of the
sorted `path<TAB>size` lines, computed the same way on both sides, so one short line of output proves every
path and size matched — whatever the number of files.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from core import tags as t
from core.data import PREWARM_HEADROOM, needed_gib, size_text
from core.ebs import VolumeSpec, device_by_id_path, mount_point
from core.errors import InvalidInputError, NotManagedError, UsageError
from core.ids import validate_availability_zone, validate_id, validate_instance_type
from core.models import Instance, Volume
from core.names import NameKind, validate_name
from core.paths import PathEscapeError
from core.s3uri import parse_s3_uri
from core.shell import on_instance, quote
from core.transfer import PARTIAL_PREFIX, check_all_safe, receive_script

MANIFEST_DIR = ".trainctl"
MANIFEST_NAME = "prewarm-manifest.json"
LISTING_NAME = "prewarm-listing.json"
# Names at the volume root that are not data (the manifest folder, ext4's lost+found).
NOT_DATA = (MANIFEST_DIR, "lost+found")
SYNC_PART_MIB = 50  # s5cmd's default part size
_RELATIVE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


class PrewarmSpec(BaseModel):
    """Put `s3://bucket/prefix` onto an EBS volume: a new one (`volume`) or an existing one (`volume_id`)."""

    source: str = Field(description="s3://bucket/prefix to copy onto the volume")
    volume: VolumeSpec | None = Field(default=None, description="a new volume to create (or give volume_id)")
    volume_id: str | None = Field(default=None, description="an existing volume (vol-…) to fill (or give volume)")
    availability_zone: str | None = Field(
        default=None, description="AZ of a new volume; default: the given instance's, else one offering instance_type"
    )
    instance_id: str | None = Field(default=None, description="an existing instance in the volume's AZ to use")
    instance_type: str = Field(default="m5.large", description="type of the temporary instance that copies")
    image_id: str | None = Field(default=None, description="AMI of the temporary instance; default: Amazon Linux 2023")
    instance_profile: str | None = Field(default=None, description="IAM instance profile: SSM + S3 read")
    subnet_id: str | None = Field(
        default=None, description="subnet of the temporary instance; default: the AZ's default subnet"
    )
    security_group_ids: list[str] = Field(
        default_factory=list, description="security groups of the temporary instance; default: the VPC's default group"
    )
    target_dir: str = Field(default="", description="folder inside the volume; empty = the volume root")
    filesystem: Literal["xfs", "ext4"] = Field(default="xfs", description="filesystem made on a blank volume")
    snapshot: bool = Field(default=False, description="snapshot the volume once it is filled")
    reuse: bool = Field(
        default=True,
        description="a new volume (`volume`) of a dataset already prewarmed at a volume's root reuses that volume: "
        "in the AZ (re-synced incrementally if the dataset changed), or a copy restored from its snapshot in another "
        "AZ; False: always a new prewarm",
    )
    job: str | None = Field(default=None, description="the training job the volume and instance belong to (tagged)")
    adopt: bool = Field(default=False, description="tag an existing volume trainctl did not create as managed")
    sync_timeout_minutes: int = Field(default=240, ge=1, le=24 * 60, description="longest the copy may take")
    online_timeout_s: int = Field(
        default=600, ge=10, description="longest to wait for the temporary instance to answer over SSM"
    )
    account: str | None = Field(default=None, description="AwsAccount block name; default: the AWS environment")

    @field_validator("source")
    @classmethod
    def _source_is_s3(cls, value: str) -> str:
        parse_s3_uri(value, field="source")
        return value

    @field_validator("target_dir")
    @classmethod
    def _target_inside_volume(cls, value: str) -> str:
        value = value.strip("/")
        if value and (not _RELATIVE.fullmatch(value) or ".." in value.split("/")):
            raise InvalidInputError(
                "target_dir", value, "a relative folder of letters, digits, '.', '_', '-' (no '..')"
            )
        if value.split("/")[0] in NOT_DATA:
            raise InvalidInputError("target_dir", value, f"a folder other than {' or '.join(NOT_DATA)}")
        return value

    @model_validator(mode="after")
    def _one_volume(self) -> PrewarmSpec:
        if (self.volume is None) == (self.volume_id is None):
            raise InvalidInputError(
                "volume", None, "exactly one of `volume` (create a new volume) or `volume_id` (use an existing one)"
            )
        if self.volume_id:
            validate_id("volume", self.volume_id)
        if self.instance_id:
            validate_id("instance", self.instance_id)
        if self.availability_zone:
            validate_availability_zone(self.availability_zone)
        validate_instance_type(self.instance_type)
        if self.job is not None:
            validate_name(NameKind.JOB, self.job, field="job")
        return self

    @property
    def scope(self) -> str:
        """What the prewarm is for, in its reports' keys: the job, else the volume (its name, or its ID)."""
        return self.job or (self.volume.name if self.volume else str(self.volume_id))


def check_existing_volume(volume: Volume, spec: PrewarmSpec) -> None:
    """An existing volume prewarm may fill: trainctl's own (or adopted), and free or on the given instance."""
    if not volume.managed and not spec.adopt:
        raise NotManagedError(volume.id, action="prewarm")
    if volume.attached_instance_id and volume.attached_instance_id != spec.instance_id:
        raise UsageError(
            f"{volume.id} is in use by {volume.attached_instance_id}",
            fix=f"Detach it first (trainctl ebs detach {volume.id}) or pass --instance {volume.attached_instance_id}.",
        )


def check_given_instance(instance: Instance, volume_zone: str | None) -> None:
    """An instance prewarm may use: trainctl's own (commands, mkfs and mounts run there), running, in the AZ."""
    if not instance.managed:
        raise NotManagedError(instance.id, action="run prewarm commands on")
    if instance.state != "running":
        raise UsageError(f"{instance.id} is {instance.state}; prewarm needs a running instance")
    if volume_zone and instance.availability_zone != volume_zone:
        raise UsageError(
            f"{instance.id} is in {instance.availability_zone} but the volume is in {volume_zone}",
            fix="Omit the instance (a temporary one is launched in the volume's AZ) or move the volume.",
        )


def dataset_digest(objects: Mapping[str, int], etags: Mapping[str, str]) -> str:
    """The digest of a dataset's manifest (`trainctl:dataset-digest`): sha256 of the sorted `key<TAB>size<TAB>etag`
    lines of its listing. Equal digests: the same objects, so a volume holding one holds the other."""
    h = hashlib.sha256()
    for path in sorted(objects):
        h.update(f"{path}\t{objects[path]}\t{etags.get(path, '')}\n".encode())
    return h.hexdigest()


def listing_path(volume_id: str, target_dir: str) -> str:
    """Where the volume records what its folder holds (key → size, ETag) after a complete sync: the next sync of
    that folder copies only what changed (one file per folder, so two target folders never mix)."""
    name = (
        LISTING_NAME
        if not target_dir
        else f"prewarm-listing-{hashlib.sha256(target_dir.encode()).hexdigest()[:16]}.json"
    )
    return f"{mount_point(volume_id)}/{MANIFEST_DIR}/{name}"


ReusePath = Literal["new", "reuse", "restore"]


@dataclass(frozen=True)
class ReuseChoice:
    """What a prewarm of a new volume does with the prewarmed volumes of its dataset: `new` (a new volume),
    `reuse` (`volume`, in the AZ asked for), `restore` (a copy of `volume`'s snapshot in `zone`); and why."""

    path: ReusePath
    why: str
    volume: Volume | None = None
    zone: str | None = None


def choose_reuse(candidates: Sequence[Volume], zone: str | None, digest: str) -> ReuseChoice:
    """Among the managed, prewarm-done volumes tagged with the dataset: a free one in `zone` (any zone when None) is
    reused, else a free one elsewhere is copied into `zone` from its snapshot; one attached to an instance is not
    touched (its trainer may be writing). Volumes holding the current digest go first."""
    live = [v for v in candidates if v.state in {"available", "in-use"}]
    free = sorted(
        (v for v in live if v.state == "available" and not v.attached_instance_id),
        key=lambda v: (v.tags.get(t.DATASET_DIGEST) != digest, v.id),
    )
    busy = ", ".join(f"{v.id} (attached to {v.attached_instance_id})" for v in live if v not in free)
    here = [v for v in free if zone is None or v.availability_zone == zone]
    if here:
        volume = here[0]
        same = volume.tags.get(t.DATASET_DIGEST) == digest
        state = "unchanged" if same else "changed since: re-synced incrementally"
        return ReuseChoice("reuse", f"{volume.id} in {volume.availability_zone} holds this dataset ({state})", volume)
    if free:
        volume = free[0]
        return ReuseChoice(
            "restore",
            f"{volume.id} holds this dataset in {volume.availability_zone}, not in {zone}: a copy restored from its "
            "snapshot",
            volume,
            zone,
        )
    if busy:
        return ReuseChoice("new", f"the volumes holding this dataset are in use, so not reused: {busy}")
    return ReuseChoice("new", "no prewarmed volume holds this dataset")


def check_fits(spec: PrewarmSpec, dataset_bytes: int, existing: Volume | None, choice: ReuseChoice) -> None:
    """Refuse, before any mutation, a prewarm whose volume cannot take the dataset: the volume given, the one asked
    for, a copy restored here (the larger of the two), or a reused one whose dataset grew since.

    A reused volume that is too small is not grown (ModifyVolume): a volume can be modified once in six hours and
    never shrunk back, and its filesystem must be grown on an instance afterwards; a bigger bill for good is the
    user's call, so the refusal names the numbers and both ways out."""
    need = needed_gib(dataset_bytes)
    data = f"{spec.source} ({size_text(dataset_bytes)}; with {PREWARM_HEADROOM - 1:.0%} headroom {need} GiB)"
    if existing is not None:
        if existing.size_gib < need:
            raise InvalidInputError(
                "volume_id",
                existing.id,
                f"a volume that holds {data}; {existing.id} has {existing.size_gib} GiB",
                fix=f"Prewarm into a new volume of at least {need} GiB (--new NAME --size {need})",
            )
        return
    if choice.path == "reuse" and choice.volume is not None:
        volume = choice.volume
        if volume.size_gib < need:
            raise UsageError(
                f"{volume.id} ({volume.size_gib} GiB, {volume.availability_zone}) holds an older version of {data}, "
                "which no longer fits it",
                fix=f"Prewarm it anew into a volume of at least {need} GiB (reuse off: --no-reuse --size {need}), or "
                f"grow {volume.id} to {need} GiB (aws ec2 modify-volume, then grow its filesystem) and prewarm again",
            )
        return
    assert spec.volume is not None
    size = spec.volume.size_gib
    if choice.path == "restore" and choice.volume is not None:
        size = max(size, choice.volume.size_gib)  # the copy is at least its snapshot's size
    if size < need:
        raise InvalidInputError(
            "volume.size_gib",
            spec.volume.size_gib,
            f"a volume that holds {data}",
            fix=f"Ask for --size {need} or more",
        )


def reusable(spec: PrewarmSpec) -> str | None:
    """Why a prewarm does not look for a volume to reuse, or None when it does."""
    if not spec.reuse:
        return "reuse is off (reuse=False)"
    if spec.volume_id is not None:
        return f"the volume to fill was given ({spec.volume_id})"
    if spec.target_dir:
        return "only datasets prewarmed at a volume's root are reused (target_dir is set)"
    return None


def initialise_script(volume_id: str, device: str) -> list[str]:
    """Read every block of a volume restored from a snapshot, so no read by the trainer waits for EBS to fetch a
    block from S3 (lazy loading: the first read of each block is slow); prints dd's summary."""
    return [
        *_device_lines(volume_id, device),
        'dd if="$dev" of=/dev/null bs=1M 2>&1 | tail -n 1',
    ]


def listing_digest(objects: Mapping[str, int]) -> str:
    """sha256 of the sorted `path<TAB>size` lines: the same function runs on the instance (VERIFY_PY)."""
    h = hashlib.sha256()
    for path in sorted(objects):
        h.update(f"{path}\t{objects[path]}\n".encode())
    return h.hexdigest()


def _device_lines(volume_id: str, device: str) -> list[str]:
    """Set `$dev` to the attached volume's device (waiting for it to appear)."""
    return [
        "set -eu",
        f"dev={on_instance(device_by_id_path(volume_id))}",
        f"alt={on_instance(device)}",
        "alt2=$(printf %s \"$alt\" | sed 's#/dev/sd#/dev/xvd#')",
        # Nitro shows the volume under its ID; Xen instances under the requested name (sd* or xvd*).
        "i=0",
        'while [ ! -e "$dev" ] && [ ! -e "$alt" ] && [ ! -e "$alt2" ] && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done',
        'if [ ! -e "$dev" ]; then if [ -e "$alt" ]; then dev="$alt"; elif [ -e "$alt2" ]; then dev="$alt2"; fi; fi',
        '[ -e "$dev" ] || { echo "the volume\'s device did not appear on the instance" >&2; exit 20; }',
    ]


def mount_script(volume_id: str, device: str, filesystem: str) -> list[str]:
    """Find the device by the volume's ID, make a filesystem only if it has none, mount (all idempotent)."""
    mkfs = {"xfs": 'mkfs.xfs -q "$dev"', "ext4": 'mkfs.ext4 -q -F "$dev"'}.get(filesystem)
    if mkfs is None:  # the value also lands in the script: only the known names may
        raise InvalidInputError("filesystem", filesystem, "xfs or ext4")
    return [
        *_device_lines(volume_id, device),
        f'if ! blkid "$dev" >/dev/null 2>&1; then echo "no filesystem: creating {filesystem}"; {mkfs}; fi',
        f"mnt={on_instance(mount_point(volume_id))}",
        'mkdir -p "$mnt"',
        'mountpoint -q "$mnt" || mount "$dev" "$mnt"',
        'echo "mounted $dev at $mnt"',
    ]


def check_keys(source: str, objects: Mapping[str, int], target_dir: str) -> None:
    """Every listed key can become a path under the destination (core.paths' rule, checked before any volume or
    instance exists), and none lands on the manifest folder or lost+found at the volume root."""
    uri = parse_s3_uri(source, field="source")
    shown = f"s3://{uri.bucket}/{uri.prefix}"
    check_all_safe(objects, what="S3 object", shown=shown)
    if not target_dir:
        for rel in objects:
            if rel.split("/")[0] in NOT_DATA:
                raise PathEscapeError(
                    f"S3 object {shown + rel!r} would land in the volume's {rel.split('/')[0]}/ (not data)",
                    fix="Prewarm into a folder of the volume (--target-dir), or rename the object",
                )


def sync_manifest(objects: Mapping[str, int], etags: Mapping[str, str] | None = None) -> dict[str, object]:
    """What the instance copies: exactly these keys (relative to the source prefix), each placed once its size is
    the listed one (the count, bytes and names are verified afterwards, `verify_script`); the ETags let the next
    sync of the volume copy only what changed (`listing_path`)."""
    files = {rel: {"size": size, "etag": (etags or {}).get(rel, "")} for rel, size in objects.items()}
    return {"files": files, "delete": [], "verify": False}


def sync_script(source: str, volume_id: str, target_dir: str, manifest_uri: str, run_id: str) -> list[str]:
    """Copy the keys in the manifest (`sync_manifest`, put at `manifest_uri`) that the volume does not hold yet
    (by its listing, `listing_path`; deleting the listed keys no longer in the source): the transfer's receive on
    the instance — one `cp --raw` per key in an s5cmd run file (the aws CLI file by file without s5cmd), every
    name checked again there before the first copy, files landing in a partial folder on the volume and moved
    into place. Never a wildcard: s5cmd would list the prefix again and copy keys nobody checked."""
    uri = parse_s3_uri(source, field="source")
    dest = mount_point(volume_id) + (f"/{target_dir}" if target_dir else "")
    return receive_script(
        dest,
        f"{PARTIAL_PREFIX}{run_id}",
        manifest_uri,
        files_prefix=f"s3://{uri.bucket}/{uri.prefix}",
        archive_uri=None,
        part_mib=SYNC_PART_MIB,
        listing=listing_path(volume_id, target_dir),
    )


VERIFY_PY = r"""
import hashlib, json, os, sys
root, skip_root = sys.argv[1], sys.argv[2] == "1"
found = {}
for folder, dirs, files in os.walk(root):
    if skip_root and folder == root:
        dirs[:] = [d for d in dirs if d not in (".trainctl", "lost+found")]
    for name in files:
        path = os.path.join(folder, name)
        found[os.path.relpath(path, root).replace(os.sep, "/")] = os.path.getsize(path)
h = hashlib.sha256()
for rel in sorted(found):
    h.update(f"{rel}\t{found[rel]}\n".encode())
print(json.dumps({"files": len(found), "bytes": sum(found.values()), "digest": h.hexdigest()}))
"""


def verify_script(volume_id: str, target_dir: str) -> list[str]:
    dest = mount_point(volume_id) + (f"/{target_dir}" if target_dir else "")
    return [
        "set -eu",
        f"python3 - {on_instance(dest)} {'0' if target_dir else '1'} <<'TRAINCTL_VERIFY'",
        *VERIFY_PY.strip().splitlines(),
        "TRAINCTL_VERIFY",
    ]


def finish_script(volume_id: str, manifest: Mapping[str, object]) -> list[str]:
    """Write the manifest on the volume, flush, unmount."""
    mnt = on_instance(mount_point(volume_id))
    return [
        "set -eu",
        f"mnt={mnt}",
        f'mkdir -p "$mnt"/{MANIFEST_DIR}',
        f'printf %s {quote(json.dumps(manifest, sort_keys=True))} > "$mnt"/{MANIFEST_DIR}/{MANIFEST_NAME}',
        "sync",
        'if mountpoint -q "$mnt"; then umount "$mnt"; fi',
        'echo "unmounted $mnt"',
    ]


def unmount_script(volume_id: str) -> list[str]:
    """Best-effort unmount for cleanup after a failure (never fails the cleanup itself)."""
    return [
        f"mnt={on_instance(mount_point(volume_id))}",
        'if mountpoint -q "$mnt"; then sync; umount "$mnt" || true; fi',
    ]


class VerifyResult(BaseModel):
    files: int
    bytes: int
    digest: str


def compare(expected: Mapping[str, int], found: VerifyResult) -> list[str]:
    """Differences between the S3 listing and the volume, as sentences; empty = byte counts and paths match."""
    problems: list[str] = []
    if found.files != len(expected):
        problems.append(f"{found.files} files on the volume, {len(expected)} in S3")
    if found.bytes != sum(expected.values()):
        problems.append(f"{found.bytes} bytes on the volume, {sum(expected.values())} in S3")
    if not problems and found.digest != listing_digest(expected):
        problems.append("file names or sizes differ between the volume and S3")
    return problems
