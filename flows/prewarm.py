"""prewarm: put a dataset from S3 onto a persistent EBS volume, verified, and never leak the helper instance.

Runbook: check the source (list it; every key must be able to become a path on the volume) → look for a volume
that already holds the dataset (`trainctl:dataset`, "Reuse" below) → check the dataset fits the volume (given,
asked for, restored or reused: its bytes + 15%; refused before any mutation, core.prewarm.check_fits) → get the
volume (new, existing, reused or restored) → get an instance in the volume's AZ (temporary unless one is given)
→ wait until SSM is Online → attach → initialise (a restored copy) → mount (mkfs only if blank) → sync the listed
keys (s5cmd, else the aws CLI, one copy per key; the list goes through a staging object) → verify against the S3
listing → write the manifest → unmount → detach → optional snapshot. The temporary instance is terminated in every
case, and a failure names what was cleaned up. The copy is incremental: the volume records what it holds after
each complete sync, and the next sync copies only new and changed objects and deletes the removed ones.

Reuse (a new volume asked for, `reuse` on, no target_dir): a managed, prewarm-done volume tagged with the dataset
is reused when it is free in the AZ asked for — untouched when its digest is the listing's, else re-synced —; a
free one in another AZ gives a copy restored from its snapshot (made if missing) in the AZ asked for, whose every
block is read once (a restored volume fetches each block from S3 on its first read); a volume attached to an
instance is never reused. The report says which path ran and why.

IAM: `trainctl iam policy --for prewarm --data s3://SOURCE/` (the temporary instance's profile) and `--for caller`
print what is needed (core/iam.py); tests/flows/test_iam_enforced.py runs this flow with only that.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from core import tags as t
from core.errors import TerminatedError, TrainctlError, UsageError
from core.models import Instance, Volume
from core.prewarm import (
    PrewarmSpec,
    ReuseChoice,
    VerifyResult,
    check_existing_volume,
    check_fits,
    check_given_instance,
    check_keys,
    choose_reuse,
    compare,
    dataset_digest,
    finish_script,
    initialise_script,
    listing_digest,
    mount_script,
    reusable,
    sync_manifest,
    sync_script,
    unmount_script,
    verify_script,
)
from core.s3uri import parse_s3_uri
from flows.cleanup import Failure, cleanup_on_failure
from flows.reporting import StepProgress, artifact_key, markdown_report
from tasks.ebs import (
    adopt_volume,
    attach_volume,
    create_snapshot,
    create_volume,
    describe_volume,
    detach_volume,
    find_dataset_volumes,
    list_snapshots,
    mark_prewarmed,
    reopen_prewarm,
)
from tasks.ec2_instances import LaunchRequest, describe_instance, launch_instance, terminate_instance
from tasks.s3 import PrefixListing, delete_prefix, list_prefix, put_json, staging_uri
from tasks.ssm import run_command, wait_online

STEPS = [
    "check source",
    "volume",
    "instance",
    "ssm online",
    "attach",
    "initialise",
    "mount",
    "sync",
    "verify",
    "finish",
    "detach",
]


class PrewarmReport(BaseModel):
    source: str
    volume_id: str
    availability_zone: str
    files: int
    bytes: int
    digest: str
    instance_id: str | None = Field(description="the instance that copied (None: no copy was needed)")
    temporary_instance_terminated: bool
    snapshot_id: str | None = None
    seconds: float
    path: Literal["new", "reused", "re-synced", "restored"] = "new"
    why: str = ""
    copied: int | None = Field(default=None, description="objects copied from S3 (None: no copy ran)")
    deleted: int | None = Field(default=None, description="files deleted from the volume (gone from the source)")
    reused_volume_id: str | None = Field(default=None, description="the volume the data came from, when reused")
    restored_from: str | None = Field(default=None, description="the snapshot the restored copy was made from")
    initialised: str | None = Field(default=None, description="how a restored copy was made fast to read")


class PrewarmFailedError(TrainctlError):
    """The prewarm failed; the message says at which step, why, and what was cleaned up."""


class PrewarmInterruptedError(TerminatedError):
    """A termination signal stopped the prewarm; the message says at which step and what was cleaned up."""


def _existing_volume(spec: PrewarmSpec) -> Volume:
    assert spec.volume_id is not None
    volume = describe_volume(spec.volume_id, account=spec.account)
    check_existing_volume(volume, spec)
    return volume


def _given_instance(spec: PrewarmSpec, volume_zone: str | None) -> Instance:
    assert spec.instance_id is not None
    instance = describe_instance(spec.instance_id, account=spec.account)
    check_given_instance(instance, volume_zone)
    return instance


@dataclass
class _Held:
    """What the run holds so far (the volume as last seen, the instance once there): what a failure releases."""

    volume: Volume
    instance: Instance | None
    restored: bool = False  # a copy restored from a snapshot, to initialise before use
    initialised: str | None = None
    synced: dict[str, int] | None = None


@flow(name="prewarm", flow_run_name="prewarm-{spec.source}", log_prints=True)
def prewarm(spec: PrewarmSpec) -> PrewarmReport:
    """Fill an EBS volume from S3 with a temporary instance (or a given one), verify it, and detach it ready for
    training; optionally snapshot it. Whatever fails, the temporary instance is ended and the volume kept.

    Args:
        spec: The S3 source, the volume (a new one or an existing ID), the temporary instance and the timeouts.
    """
    started = time.monotonic()
    progress = StepProgress(artifact_key("prewarm-progress", spec.scope), STEPS)
    progress.step("check source")
    listing, existing_volume, given_instance, zone = _checked(spec)
    digest = dataset_digest(listing.objects, listing.etags)
    choice = _reuse_choice(spec, listing.uri, zone, digest)
    if choice.path == "reuse" and choice.volume and choice.volume.tags.get(t.DATASET_DIGEST) == digest:
        return _unchanged(spec, listing, choice, digest, started, progress)
    check_fits(spec, listing.total_bytes, existing_volume, choice)
    progress.step("volume")
    volume, restored = _volume(spec, existing_volume, zone, choice, listing.uri)
    held = _Held(volume, given_instance, restored=restored)
    launch_key = f"prewarm:{flow_run.id or uuid.uuid4()}:{held.volume.id}"
    temporary = given_instance is None
    with cleanup_on_failure(
        "prewarm",
        lambda: progress.current,
        lambda: _cleanup(spec, held.volume, held.instance, launch_key, temporary=temporary),
        lambda failure: _report_failure(spec, held.volume.id, failure),
        failed=PrewarmFailedError,
        interrupted=PrewarmInterruptedError,
    ):
        _fill(spec, held, listing, launch_key, progress)
    volume, instance = held.volume, held.instance
    assert instance is not None
    terminated = False
    if temporary:
        terminated = terminate_instance(instance.id, idempotency_key=launch_key, account=spec.account)
    snapshot_id = None
    if spec.snapshot:
        snapshot_id = create_snapshot(volume.id, description=f"prewarm of {spec.source}", account=spec.account).id
    synced = held.synced or {}
    report = PrewarmReport(
        source=spec.source,
        volume_id=volume.id,
        availability_zone=volume.availability_zone or "",
        files=listing.count,
        bytes=listing.total_bytes,
        digest=digest,
        instance_id=instance.id,
        temporary_instance_terminated=terminated,
        snapshot_id=snapshot_id,
        seconds=round(time.monotonic() - started, 1),
        path={"new": "new", "reuse": "re-synced", "restore": "restored"}[choice.path],
        why=choice.why,
        copied=synced.get("placed"),
        deleted=synced.get("deleted"),
        reused_volume_id=choice.volume.id if choice.volume else None,
        restored_from=held.volume.source_snapshot_id if held.restored else None,
        initialised=held.initialised,
    )
    return _published(report, progress, spec.scope)


def _published(report: PrewarmReport, progress: StepProgress, scope: str) -> PrewarmReport:
    """The report as an artifact (which path ran and why first), the progress finished."""
    progress.finish(f"{report.files} files on {report.volume_id} ({report.path})")
    rows = {"path": report.path, "why": report.why, **report.model_dump(exclude={"path", "why"})}
    markdown_report(artifact_key("prewarm", scope), f"prewarm of {report.source}", rows)
    return report


def _reuse_choice(spec: PrewarmSpec, uri: str, zone: str | None, digest: str) -> ReuseChoice:
    """Whether a volume already holding the dataset serves this prewarm (core.prewarm.choose_reuse), and why."""
    off = reusable(spec)
    if off is not None:
        return ReuseChoice("new", off)
    choice = choose_reuse(find_dataset_volumes(uri, account=spec.account), zone, digest)
    get_run_logger().info("reuse: %s (%s)", choice.path, choice.why)
    return choice


def _unchanged(
    spec: PrewarmSpec,
    listing: PrefixListing,
    choice: ReuseChoice,
    digest: str,
    started: float,
    progress: StepProgress,
) -> PrewarmReport:
    """The dataset is on a free volume in the AZ and has not changed: nothing to launch or copy."""
    assert choice.volume is not None
    report = PrewarmReport(
        source=spec.source,
        volume_id=choice.volume.id,
        availability_zone=choice.volume.availability_zone or "",
        files=listing.count,
        bytes=listing.total_bytes,
        digest=digest,
        instance_id=None,
        temporary_instance_terminated=False,
        seconds=round(time.monotonic() - started, 1),
        path="reused",
        why=choice.why,
        reused_volume_id=choice.volume.id,
    )
    if spec.snapshot:
        description = f"prewarm of {spec.source}"
        report.snapshot_id = create_snapshot(choice.volume.id, description=description, account=spec.account).id
    return _published(report, progress, spec.scope)


def _checked(spec: PrewarmSpec) -> tuple[PrefixListing, Volume | None, Instance | None, str | None]:
    """Everything that can be refused, before the first mutation: the source's listing and keys, the existing
    volume and the given instance (with the AZ they fix)."""
    listing = list_prefix(spec.source, account=spec.account)
    get_run_logger().info("source %s: %d objects, %d bytes", spec.source, listing.count, listing.total_bytes)
    check_keys(spec.source, listing.objects, spec.target_dir)
    existing_volume = _existing_volume(spec) if spec.volume_id else None
    zone = existing_volume.availability_zone if existing_volume else spec.availability_zone
    given_instance = _given_instance(spec, zone) if spec.instance_id else None
    if given_instance and not zone:
        zone = given_instance.availability_zone
    return listing, existing_volume, given_instance, zone


def _volume(
    spec: PrewarmSpec, existing_volume: Volume | None, zone: str | None, choice: ReuseChoice, uri: str
) -> tuple[Volume, bool]:
    """The volume to fill, and whether it was restored from a snapshot: the existing one (adopted now, after every
    check passed), the reused one (pending again until re-synced), a copy of it restored here, or a new one."""
    restored = False
    if existing_volume is not None:
        volume = existing_volume
        if not volume.managed:  # spec.adopt (checked above)
            volume = adopt_volume(volume.id, account=spec.account)
    elif choice.path == "reuse" and choice.volume is not None:
        reopen_prewarm(choice.volume.id, account=spec.account)
        volume = choice.volume
    elif choice.path == "restore" and choice.volume is not None:
        volume, restored = _restored_copy(spec, choice.volume, choice.zone), True
    else:
        assert spec.volume is not None
        volume = create_volume(
            spec.volume,
            availability_zone=zone,
            instance_type=None if zone else spec.instance_type,
            job=spec.job,
            extra_tags=_new_volume_tags(spec, uri),
            adopt=spec.adopt,
            account=spec.account,
        )
    get_run_logger().info("volume %s in %s", volume.id, volume.availability_zone)
    return volume, restored


def _new_volume_tags(spec: PrewarmSpec, uri: str) -> dict[str, str]:
    """Pending until verified and detached (the sweep reports it); the dataset when it fills the volume's root (a
    later prewarm of the same URI reuses the volume; its digest is tagged once the data is verified)."""
    tags = {t.PREWARM: t.PREWARM_PENDING}
    if not spec.target_dir:
        tags[t.DATASET] = t.dataset_tag_value(uri)
    return tags


def _restored_copy(spec: PrewarmSpec, source: Volume, zone: str | None) -> Volume:
    """A copy of `source` in `zone`, from its snapshot of the data it holds (taken now if it has none), tagged as
    the same dataset and pending until verified."""
    assert spec.volume is not None and zone is not None
    digest = source.tags.get(t.DATASET_DIGEST, "")
    dataset_tags = {t.DATASET: source.tags[t.DATASET], t.DATASET_DIGEST: digest}
    taken = [
        s
        for s in list_snapshots(source.id, account=spec.account)
        if s.state == "completed" and s.tags.get(t.DATASET_DIGEST) == digest
    ]
    snapshot = taken[-1] if taken else None
    if snapshot is None:
        snapshot = create_snapshot(
            source.id,
            description=f"trainctl dataset {source.tags[t.DATASET]}",
            idempotency_key=f"dataset:{source.id}:{digest}",
            extra_tags=dataset_tags,
            account=spec.account,
        )
    name = spec.volume.name if spec.volume.name != source.name else f"{spec.volume.name}-{zone}"
    copy = spec.volume.model_copy(
        update={"name": name, "snapshot_id": snapshot.id, "size_gib": max(spec.volume.size_gib, snapshot.size_gib)}
    )
    return create_volume(
        copy,
        availability_zone=zone,
        job=spec.job,
        extra_tags={t.PREWARM: t.PREWARM_PENDING, t.DATASET: source.tags[t.DATASET]},
        idempotency_key=f"dataset-copy:{snapshot.id}:{zone}",
        account=spec.account,
    )


def _fill(spec: PrewarmSpec, held: _Held, listing: PrefixListing, launch_key: str, progress: StepProgress) -> None:
    """Instance → SSM online → attach → mount → sync → verify → manifest and unmount → detach."""
    log, account = get_run_logger(), spec.account
    progress.step("instance")
    if held.instance is None:
        held.instance = launch_instance(_temporary_instance(spec, held.volume, launch_key), account=account)
        log.info("temporary instance %s in %s", held.instance.id, held.instance.availability_zone)
    instance = held.instance

    progress.step("ssm online")
    wait_online(instance.id, timeout_s=spec.online_timeout_s, account=account)

    progress.step("attach")
    volume = held.volume = attach_volume(held.volume.id, instance.id, account=account)
    device = next(a.device for a in volume.attachments if a.instance_id == instance.id)

    if held.restored:
        progress.step("initialise")
        held.initialised = _initialise(spec, instance.id, volume, device)

    progress.step("mount")
    out = run_command(instance.id, mount_script(volume.id, device, spec.filesystem), what="mount", account=account)
    log.info(out.stdout.strip())

    progress.step("sync")
    held.synced = _sync(spec, instance.id, volume.id, listing)

    progress.step("verify")
    _verify(spec, instance.id, volume.id, listing)

    progress.step("finish")
    manifest = _manifest(spec, volume, listing)
    run_command(instance.id, finish_script(volume.id, manifest), what="manifest and unmount", account=account)

    progress.step("detach")
    held.volume = detach_volume(volume.id, account=account)
    mark_prewarmed(volume.id, digest=dataset_digest(listing.objects, listing.etags), account=account)


def _initialise(spec: PrewarmSpec, instance_id: str, volume: Volume, device: str) -> str:
    """A restored copy reads each block from S3 on its first read (EBS lazy loading): read them all once now."""
    script = initialise_script(volume.id, device)
    timeout_s = spec.sync_timeout_minutes * 60
    out = run_command(instance_id, script, timeout_s=timeout_s, what="initialise", account=spec.account)
    summary = (out.stdout.strip().splitlines() or [""])[-1]
    get_run_logger().info("initialised %s: %s", volume.id, summary)
    return f"every block read once (dd): {summary}"


def _verify(spec: PrewarmSpec, instance_id: str, volume_id: str, listing: PrefixListing) -> None:
    """What is on the volume matches the S3 listing, file by file."""
    out = run_command(instance_id, verify_script(volume_id, spec.target_dir), what="verify", account=spec.account)
    found = VerifyResult.model_validate_json(out.stdout.strip().splitlines()[-1])
    problems = compare(listing.objects, found)
    if problems:
        raise UsageError(f"verification against {spec.source} failed: {'; '.join(problems)}")
    get_run_logger().info("verified: %d files, %d bytes match S3", found.files, found.bytes)


def _sync(spec: PrewarmSpec, instance_id: str, volume_id: str, listing: PrefixListing) -> dict[str, int]:
    """Copy the listed (and checked) keys the volume does not hold yet onto it, deleting the ones gone from S3; the
    list travels as a staging object, removed afterwards whatever happened. An object whose size changed since
    the listing is not placed. Returns how many files were placed and deleted."""
    run_id = uuid.uuid4().hex[:12]
    staging = staging_uri(parse_s3_uri(spec.source).bucket, f"prewarm-{run_id}")
    manifest_uri = f"{staging}/manifest.json"
    try:
        put_json(manifest_uri, sync_manifest(listing.objects, listing.etags), account=spec.account)
        script = sync_script(spec.source, volume_id, spec.target_dir, manifest_uri, run_id)
        timeout_s = spec.sync_timeout_minutes * 60
        out = run_command(instance_id, script, timeout_s=timeout_s, what="sync", account=spec.account)
    finally:
        try:
            delete_prefix(staging + "/", account=spec.account)
        except Exception as exc:
            get_run_logger().warning("could not remove the staging objects under %s/: %s", staging, exc)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    bad = result["mismatches"]
    if bad:
        shown = ", ".join(repr(rel) for rel in bad[:5]) + (" …" if len(bad) > 5 else "")
        raise UsageError(
            f"{len(bad)} object(s) of {spec.source} did not arrive with their listed size (changed in S3 since the "
            f"listing?): {shown}",
            fix="Run the prewarm again once the source is stable",
        )
    get_run_logger().info("synced %d files onto %s, %d deleted", result["placed"], volume_id, result["deleted"])
    return {"placed": int(result["placed"]), "deleted": int(result["deleted"])}


def _report_failure(spec: PrewarmSpec, volume_id: str, failure: Failure) -> None:
    markdown_report(
        artifact_key("prewarm-failed", spec.scope),
        f"prewarm of {spec.source} {failure.verb}",
        {"step": failure.step, "error": str(failure.stopped or failure.error), "volume": volume_id},
        notes=failure.cleaned,
    )


def _temporary_instance(spec: PrewarmSpec, volume: Volume, launch_key: str) -> LaunchRequest:
    return LaunchRequest(
        name=f"trainctl-prewarm-{volume.id}",
        role=t.Role.PREWARM,
        idempotency_key=launch_key,
        instance_type=spec.instance_type,
        image_id=spec.image_id,
        job=spec.job,
        availability_zone=volume.availability_zone,
        subnet_id=spec.subnet_id,
        security_group_ids=spec.security_group_ids,
        instance_profile=spec.instance_profile,
    )


def _manifest(spec: PrewarmSpec, volume: Volume, listing: PrefixListing) -> dict[str, object]:
    return {
        "source": spec.source,
        "target_dir": spec.target_dir,
        "objects": listing.count,
        "bytes": listing.total_bytes,
        "digest": listing_digest(listing.objects),
        "dataset_digest": dataset_digest(listing.objects, listing.etags),
        "written_at": datetime.now(UTC).isoformat(),
        "volume_id": volume.id,
    }


def _cleanup(
    spec: PrewarmSpec, volume: Volume, instance: Instance | None, launch_key: str, *, temporary: bool
) -> list[str]:
    """After a failure: unmount, detach, terminate the temporary instance. Each step best effort, all reported."""
    log = get_run_logger()
    done: list[str] = []
    if instance is None:
        return [f"volume {volume.id} left as it was ({volume.state})"]
    try:
        run_command.fn(instance.id, unmount_script(volume.id), check=False, timeout_s=120, account=spec.account)
    except Exception as exc:
        log.warning("unmount during cleanup failed: %s", exc)
    try:
        detached = detach_volume.fn(volume.id, account=spec.account)
        done.append(f"volume {volume.id} detached and {detached.state} (kept)")
    except Exception as exc:
        done.append(f"volume {volume.id} could NOT be detached: {exc}")
    if temporary:
        try:
            terminate_instance.fn(instance.id, idempotency_key=launch_key, account=spec.account)
            done.append(f"temporary instance {instance.id} terminated")
        except Exception as exc:
            done.append(f"temporary instance {instance.id} could NOT be terminated ({exc}); terminate it by hand")
    return done
