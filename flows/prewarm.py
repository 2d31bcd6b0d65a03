"""prewarm: put a dataset from S3 onto a persistent EBS volume, verified, and never leak the helper instance.

Runbook: check the source (list it; every key must be able to become a path on the volume) → get the volume
(new or existing) → get an instance in the volume's AZ (temporary unless one is given) → wait until SSM is
Online → attach → mount (mkfs only if blank) → sync exactly the listed keys (s5cmd, else the aws CLI, one copy
per key; the list goes through a staging object) → verify against the S3 listing → write the manifest →
unmount → detach → optional snapshot. The temporary instance is terminated in every case, and a failure names
what was cleaned up.

IAM: `trainctl iam policy --for prewarm --data s3://SOURCE/` (the temporary instance's profile) and `--for caller`
print what is needed (core/iam.py); tests/flows/test_iam_enforced.py runs this flow with only that.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel

from core import tags as t
from core.errors import TerminatedError, TrainctlError, UsageError
from core.models import Instance, Volume
from core.prewarm import (
    PrewarmSpec,
    VerifyResult,
    check_existing_volume,
    check_given_instance,
    check_keys,
    compare,
    finish_script,
    listing_digest,
    mount_script,
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
    mark_prewarmed,
)
from tasks.ec2_instances import LaunchRequest, describe_instance, launch_instance, terminate_instance
from tasks.s3 import PrefixListing, delete_prefix, list_prefix, put_json, staging_uri
from tasks.ssm import run_command, wait_online

STEPS = ["check source", "volume", "instance", "ssm online", "attach", "mount", "sync", "verify", "finish", "detach"]


class PrewarmReport(BaseModel):
    source: str
    volume_id: str
    availability_zone: str
    files: int
    bytes: int
    digest: str
    instance_id: str
    temporary_instance_terminated: bool
    snapshot_id: str | None = None
    seconds: float


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
    progress.step("volume")
    held = _Held(_volume(spec, existing_volume, zone), given_instance)
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
    report = PrewarmReport(
        source=spec.source,
        volume_id=volume.id,
        availability_zone=volume.availability_zone or "",
        files=listing.count,
        bytes=listing.total_bytes,
        digest=listing_digest(listing.objects),
        instance_id=instance.id,
        temporary_instance_terminated=terminated,
        snapshot_id=snapshot_id,
        seconds=round(time.monotonic() - started, 1),
    )
    progress.finish(f"{listing.count} files on {volume.id}")
    markdown_report(artifact_key("prewarm", spec.scope), f"prewarm of {spec.source}", report.model_dump())
    return report


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


def _volume(spec: PrewarmSpec, existing_volume: Volume | None, zone: str | None) -> Volume:
    """The volume to fill: the existing one (adopted now, after every check passed), or a new one."""
    if existing_volume is not None:
        volume = existing_volume
        if not volume.managed:  # spec.adopt (checked above)
            volume = adopt_volume(volume.id, account=spec.account)
    else:
        assert spec.volume is not None
        volume = create_volume(
            spec.volume,
            availability_zone=zone,
            instance_type=None if zone else spec.instance_type,
            job=spec.job,
            extra_tags={t.PREWARM: t.PREWARM_PENDING},  # until verified and detached (the sweep reports it)
            adopt=spec.adopt,
            account=spec.account,
        )
    get_run_logger().info("volume %s in %s", volume.id, volume.availability_zone)
    return volume


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

    progress.step("mount")
    out = run_command(instance.id, mount_script(volume.id, device, spec.filesystem), what="mount", account=account)
    log.info(out.stdout.strip())

    progress.step("sync")
    _sync(spec, instance.id, volume.id, listing)

    progress.step("verify")
    _verify(spec, instance.id, volume.id, listing)

    progress.step("finish")
    manifest = _manifest(spec, volume, listing)
    run_command(instance.id, finish_script(volume.id, manifest), what="manifest and unmount", account=account)

    progress.step("detach")
    held.volume = detach_volume(volume.id, account=account)
    mark_prewarmed(volume.id, account=account)


def _verify(spec: PrewarmSpec, instance_id: str, volume_id: str, listing: PrefixListing) -> None:
    """What is on the volume matches the S3 listing, file by file."""
    out = run_command(instance_id, verify_script(volume_id, spec.target_dir), what="verify", account=spec.account)
    found = VerifyResult.model_validate_json(out.stdout.strip().splitlines()[-1])
    problems = compare(listing.objects, found)
    if problems:
        raise UsageError(f"verification against {spec.source} failed: {'; '.join(problems)}")
    get_run_logger().info("verified: %d files, %d bytes match S3", found.files, found.bytes)


def _sync(spec: PrewarmSpec, instance_id: str, volume_id: str, listing: PrefixListing) -> None:
    """Copy exactly the listed (and checked) keys onto the mounted volume; the list travels as a staging object,
    removed afterwards whatever happened. An object whose size changed since the listing is not placed."""
    run_id = uuid.uuid4().hex[:12]
    staging = staging_uri(parse_s3_uri(spec.source).bucket, f"prewarm-{run_id}")
    manifest_uri = f"{staging}/manifest.json"
    try:
        put_json(manifest_uri, sync_manifest(listing.objects), account=spec.account)
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
    get_run_logger().info("synced %d files onto %s", result["placed"], volume_id)


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
