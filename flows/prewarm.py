"""prewarm: put a dataset from S3 onto a persistent EBS volume, verified, and never leak the helper instance.

Runbook: check the source → get the volume (new or existing) → get an instance in the volume's AZ (temporary
unless one is given) → wait until SSM is Online → attach → mount (mkfs only if blank) → sync (s5cmd, else
aws s3 sync) → verify against the S3 listing → write the manifest → unmount → detach → optional snapshot.
The temporary instance is terminated in every case, and a failure names what was cleaned up.

IAM: `trainctl iam policy --for prewarm --data s3://SOURCE/` (the temporary instance's profile) and `--for caller`
print what is needed (core/iam.py); tests/flows/test_iam_enforced.py runs this flow with only that.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel

from core import tags as t
from core.errors import NotManagedError, TrainctlError, UsageError
from core.models import Instance, Volume
from core.prewarm import (
    PrewarmSpec,
    VerifyResult,
    compare,
    finish_script,
    listing_digest,
    mount_script,
    sync_script,
    unmount_script,
    verify_script,
)
from flows.reporting import StepProgress, artifact_key, markdown_report
from tasks.instances import LaunchRequest, launch_instance, terminate_launched_instance
from tasks.ssm import run_command, wait_online
from tasks.storage import PrefixListing, list_prefix
from tasks.volumes import (
    attach_volume,
    create_snapshot,
    create_volume,
    describe_instance,
    describe_volume,
    detach_volume,
)

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


def _existing_volume(spec: PrewarmSpec) -> Volume:
    assert spec.volume_id is not None
    volume = describe_volume(spec.volume_id, account=spec.account)
    if not volume.managed:
        raise UsageError(
            f"{volume.id} was not created by trainctl",
            fix="Adopt it first (trainctl ebs attach --adopt) or prewarm a new volume.",
        )
    if volume.attached_instance_id and volume.attached_instance_id != spec.instance_id:
        raise UsageError(
            f"{volume.id} is in use by {volume.attached_instance_id}",
            fix=f"Detach it first (trainctl ebs detach {volume.id}) or pass --instance {volume.attached_instance_id}.",
        )
    return volume


def _given_instance(spec: PrewarmSpec, volume_zone: str | None) -> Instance:
    assert spec.instance_id is not None
    instance = describe_instance(spec.instance_id, account=spec.account)
    if not instance.managed:
        raise NotManagedError(instance.id)  # commands, mkfs and mounts run there: only on trainctl's instances
    if instance.state != "running":
        raise UsageError(f"{instance.id} is {instance.state}; prewarm needs a running instance")
    if volume_zone and instance.availability_zone != volume_zone:
        raise UsageError(
            f"{instance.id} is in {instance.availability_zone} but the volume is in {volume_zone}",
            fix="Omit the instance (a temporary one is launched in the volume's AZ) or move the volume.",
        )
    return instance


@flow(name="prewarm", flow_run_name="prewarm-{spec.source}", log_prints=True)
def prewarm(spec: PrewarmSpec) -> PrewarmReport:
    log = get_run_logger()
    started = time.monotonic()
    progress = StepProgress(artifact_key("prewarm", str(flow_run.id or uuid.uuid4())), STEPS)
    account = spec.account

    # Everything that can be refused is checked before the first mutation.
    progress.step("check source")
    listing = list_prefix(spec.source, account=account)
    log.info("source %s: %d objects, %d bytes", spec.source, listing.count, listing.total_bytes)
    existing_volume = _existing_volume(spec) if spec.volume_id else None
    zone = existing_volume.availability_zone if existing_volume else spec.availability_zone
    given_instance = _given_instance(spec, zone) if spec.instance_id else None
    if given_instance and not zone:
        zone = given_instance.availability_zone

    progress.step("volume")
    if existing_volume is not None:
        volume = existing_volume
    else:
        assert spec.volume is not None
        volume = create_volume(
            spec.volume,
            availability_zone=zone,
            instance_type=None if zone else spec.instance_type,
            job=spec.job,
            account=account,
        )
    log.info("volume %s in %s", volume.id, volume.availability_zone)

    launch_key = f"prewarm:{flow_run.id or uuid.uuid4()}:{volume.id}"
    instance: Instance | None = given_instance

    try:
        progress.step("instance")
        if instance is None:
            instance = launch_instance(_temporary_instance(spec, volume, launch_key), account=account)
            log.info("temporary instance %s in %s", instance.id, instance.availability_zone)

        progress.step("ssm online")
        wait_online(instance.id, timeout_s=spec.online_timeout_s, account=account)

        progress.step("attach")
        volume = attach_volume(volume.id, instance.id, account=account)
        device = next(a.device for a in volume.attachments if a.instance_id == instance.id)

        progress.step("mount")
        out = run_command(instance.id, mount_script(volume.id, device, spec.filesystem), what="mount", account=account)
        log.info(out.stdout.strip())

        progress.step("sync")
        sync = sync_script(spec.source, volume.id, spec.target_dir)
        out = run_command(instance.id, sync, timeout_s=spec.sync_timeout_minutes * 60, what="sync", account=account)
        log.info(out.stdout.strip())

        progress.step("verify")
        out = run_command(instance.id, verify_script(volume.id, spec.target_dir), what="verify", account=account)
        found = VerifyResult.model_validate_json(out.stdout.strip().splitlines()[-1])
        problems = compare(listing.objects, found)
        if problems:
            raise UsageError(f"verification against {spec.source} failed: {'; '.join(problems)}")
        log.info("verified: %d files, %d bytes match S3", found.files, found.bytes)

        progress.step("finish")
        manifest = _manifest(spec, volume, listing)
        run_command(instance.id, finish_script(volume.id, manifest), what="manifest and unmount", account=account)

        progress.step("detach")
        volume = detach_volume(volume.id, account=account)
    except BaseException as exc:
        cleaned = _cleanup(spec, volume, instance, launch_key, temporary=given_instance is None)
        markdown_report(
            artifact_key("prewarm-failed", volume.id),
            f"prewarm of {spec.source} failed",
            {"step": progress.current, "error": str(exc), "volume": volume.id},
            notes=cleaned,
        )
        if isinstance(exc, Exception):
            raise PrewarmFailedError(
                f"prewarm failed at step '{progress.current}': {exc}. "
                f"Cleaned up: {'; '.join(cleaned) or 'nothing to clean'}"
            ) from exc
        raise
    terminated = False
    if given_instance is None:
        terminated = terminate_launched_instance(instance.id, idempotency_key=launch_key, account=account)
    snapshot_id = None
    if spec.snapshot:
        snapshot_id = create_snapshot(volume.id, description=f"prewarm of {spec.source}", account=account).id
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
    markdown_report(artifact_key("prewarm", volume.id), f"prewarm of {spec.source}", report.model_dump())
    return report


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
            terminate_launched_instance.fn(instance.id, idempotency_key=launch_key, account=spec.account)
            done.append(f"temporary instance {instance.id} terminated")
        except Exception as exc:
            done.append(f"temporary instance {instance.id} could NOT be terminated ({exc}); terminate it by hand")
    return done
