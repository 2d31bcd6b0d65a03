"""launch-attempt: one attempt of a job, from RunInstances to a running agent. A subflow of train-launch (a user's
launch) and of spot-watch (a resume after a spot interruption).

Runbook: check that the attempt is the record's current one → move the volume if asked → stage the code (an
earlier attempt's, copied inside S3, or what the caller uploaded) → launch the capacity asked for (idempotent by
the attempt's launch key) → wait SSM Online → [overlap: wait until the previous attempt's instance is gone and the
volume free] → attach + mount → ship code and agent → [overlap: wait for the previous agent's final word] → start
the agent → `running`.

Each step's outcome is recorded on the attempt in job.json (tasks/jobs.py, conditional writes), and each step is
idempotent: a second run for the same attempt (the first one killed) finds the instance by the launch key and
continues. A spot refusal is recorded on the attempt (capacity_refused_at, the AZ, tries, last_try_at) and raised as
CapacityRefusedError: what comes next is the caller's decision (core/recovery.py). Any other failure leaves nothing
behind: the volume is unmounted and detached (kept), the instance this attempt launched is terminated, and the
attempt is recorded `failed` with the step and the error.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field, field_validator

from blocks.templates import load_template
from core import jobs
from core import tags as t
from core.errors import CapacityRefusedError, InvalidInputError, TrainctlError, UsageError
from core.ids import validate_availability_zone, validate_id
from core.jobs import AgentStatus, AttemptRecord, JobRecord, JobSpec, JobStatus, TemplateSpec
from core.launch import (
    AGENT_SPEC,
    AGENT_TARBALL,
    CODE_TARBALL,
    agent_spec,
    data_mount_script,
    launch_key,
    prefetch_script,
    ship_script,
    start_agent_script,
)
from core.models import Instance, Volume
from core.prewarm import unmount_script
from core.recovery import Capacity
from core.s3uri import parse_s3_uri
from flows.cleanup import cleanup_on_failure
from flows.reporting import StepProgress, artifact_key, markdown_report
from tasks.ebs import attach_volume, describe_volume, detach_volume
from tasks.ebs import move_volume as move_volume_task
from tasks.ec2_instances import (
    DEFAULT_AMI_PARAMETER,
    LaunchRequest,
    describe_instance,
    find_launched,
    keep_on_termination,
    launch_instance,
)
from tasks.ec2_instances import terminate_instance as terminate
from tasks.jobs import JobChangedError, read_agent_status, read_interruption, read_record, write_record
from tasks.s3 import copy_staged, upload_file
from tasks.ssm import CommandFailedError, run_command, wait_online

STEPS = ["record", "launch", "ssm online", "wait previous", "attach", "mount", "ship", "start"]
# How often the overlap waits look at the previous attempt again.
OVERLAP_POLL_S = 1.0


class AttemptRequest(BaseModel):
    """One attempt to launch, already claimed in job.json by the caller (train-launch or spot-watch)."""

    spec: JobSpec = Field(description="the job, as recorded in job.json")
    attempt: int = Field(ge=1, description="the attempt number; the caller claimed it in job.json already")
    capacity: Capacity = Field(description="spot | on-demand: what is launched (core.recovery.launch_capacity)")
    zone: str | None = Field(
        default=None, description="AZ to launch in without a volume; None: the template's, else EC2's choice"
    )
    volume_id: str | None = Field(default=None, description="the data volume to attach and mount (vol-…)")
    move_to: str | None = Field(
        default=None, description="restore the volume into this AZ first (snapshot + restore; the original is kept)"
    )
    code_from: str | None = Field(
        default=None,
        description="None: the caller uploaded code.tar.gz and agent.tar.gz into this attempt's staging prefix; "
        "else an earlier attempt's staging prefix (s3://…/) whose two objects are copied inside S3",
    )
    after_instance: str | None = Field(
        default=None,
        description="the previous attempt's instance, serving its spot notice: the volume is attached only once it "
        "is shutting-down/terminated and the volume available, and the agent starts only once the old agent wrote "
        "its final status (or interruption record), so two trainers never share a volume or checkpoint prefix",
    )
    after_timeout_s: int = Field(
        default=900, ge=1, description="how long to wait for `after_instance` to let go before failing the attempt"
    )
    launched_by: Literal["train-launch", "spot-watch"] = Field(
        default="train-launch", description="who launches: a user's launch, or spot-watch resuming"
    )

    @field_validator("zone", "move_to")
    @classmethod
    def _zone(cls, value: str | None, info: Any) -> str | None:
        return validate_availability_zone(value, field=info.field_name) if value else None

    @field_validator("volume_id")
    @classmethod
    def _volume(cls, value: str | None) -> str | None:
        return validate_id("volume", value, field="volume_id") if value else None

    @field_validator("after_instance")
    @classmethod
    def _instance(cls, value: str | None) -> str | None:
        return validate_id("instance", value, field="after_instance") if value else None

    @field_validator("code_from")
    @classmethod
    def _code_from(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not parse_s3_uri(value, field="code_from").key or not value.endswith("/"):
            raise InvalidInputError("code_from", value, "a staging prefix s3://<bucket>/…/attempt-<n>/")
        return value


class AttemptReport(BaseModel):
    """What the attempt got: its instance, capacity and AZ, and the volume it runs with."""

    job: str
    attempt: int
    instance_id: str
    instance_type: str
    availability_zone: str
    capacity_type: str  # obtained: spot | on-demand
    volume_id: str | None = None
    staging_uri: str
    launched_by: str
    seconds: float


class LaunchFailedError(TrainctlError):
    """The launch failed before the job started; the message says at which step and what was cleaned up."""


def _now() -> datetime:
    return datetime.now(UTC)


def launch_request(
    spec: JobSpec, template: TemplateSpec, *, zone: str | None, capacity: Capacity, attempt: int | None = None
) -> LaunchRequest:
    """The RunInstances request of a job's attempt (train-launch validates one with attempt None before any
    mutation)."""
    return LaunchRequest(
        name=f"trainctl-{spec.name}",
        role=t.Role.TRAIN,
        idempotency_key=launch_key(spec.name, attempt) if attempt else "",
        instance_type=template.instance_type,
        image_id=template.image_id,
        image_parameter=template.image_parameter or DEFAULT_AMI_PARAMETER,
        job=spec.name,
        attempt=attempt,
        availability_zone=zone,
        subnet_id=template.subnet_id,
        security_group_ids=template.security_group_ids,
        instance_profile=template.instance_profile,
        root_volume_gib=template.root_volume_gib,
        spot=capacity == "spot",
        max_price=spec.max_price if capacity == "spot" else None,
        bucket=spec.bucket,
        extra_tags=template.extra_tags,
        # The agent shuts the instance down when the job ends: that must end its billing (DESIGN.md section 5).
        shutdown_behavior="terminate",
    )


# -- the record ----------------------------------------------------------------------------------------------------


def update_attempt_record(
    request: AttemptRequest,
    changes: Callable[[AttemptRecord], dict[str, Any]],
    *,
    status: JobStatus | None = None,
    message: str | None = None,
) -> JobRecord | None:
    """Apply `changes` (of the stored attempt) and `status` to job.json if its current attempt is still this one
    (else a later attempt owns the name: None, nothing written). A status the state machine no longer allows (the
    agent's end was recorded first) is left as it is. Another writer in between: read again and re-apply."""
    spec = request.spec
    for _ in range(5):
        stored, etag = read_record.fn(spec.bucket, spec.name, account=spec.account)
        if stored is None or etag is None or stored.attempt != request.attempt:
            get_run_logger().warning(
                "job %s attempt %d is no longer the record's current one", spec.name, request.attempt
            )
            return None
        updated = stored.with_attempt(**changes(stored.current))
        if status is not None and (status == updated.status or status in jobs.TRANSITIONS[updated.status]):
            updated = updated.with_status(status, message=message)
        updated.updated_at = _now()
        try:
            write_record.fn(updated, expected_etag=etag, account=spec.account)
            return updated
        except JobChangedError:
            continue
    raise JobChangedError(spec.name, spec.bucket)


def _claimed(request: AttemptRequest) -> JobRecord:
    """The record, if the attempt is its current one and still being launched or running (a re-run continues)."""
    spec = request.spec
    stored, _ = read_record(spec.bucket, spec.name, account=spec.account)
    if stored is None or stored.attempt != request.attempt or stored.status not in jobs.ACTIVE_STATUSES:
        found = f"the record's attempt {stored.attempt} is {stored.status.value}" if stored else "no record"
        raise UsageError(
            f"job {spec.name} attempt {request.attempt} is not being launched ({found})",
            fix="Claim the attempt in job.json first (train-launch and spot-watch do), then launch it.",
        )
    return stored


def fail_attempt(request: AttemptRequest, step: str, error: BaseException, cleaned: list[str]) -> None:
    """Record the attempt `failed` at `step` and publish what was cleaned up (a note is added if the record could
    not be written)."""
    spec = request.spec
    try:
        update_attempt_record(
            request,
            lambda a: {"finished_at": _now()},
            status=JobStatus.FAILED,
            message=f"launch failed at {step}: {error}",
        )
    except Exception as exc:
        cleaned.append(f"job record NOT updated ({exc})")
    markdown_report(
        artifact_key("launch-attempt-failed", spec.name),
        f"launch of {spec.name} attempt {request.attempt} failed",
        {"step": step, "error": str(error), "attempt": request.attempt},
        notes=cleaned,
    )


# -- the steps -----------------------------------------------------------------------------------------------------


class _Held(BaseModel):
    """What this run holds so far: what a failure must release."""

    volume_id: str | None = None
    instance: Instance | None = None


@flow(name="launch-attempt", flow_run_name="launch-{request.spec.name}-attempt-{request.attempt}", log_prints=True)
def launch_attempt(request: AttemptRequest) -> AttemptReport:
    """Launch the claimed attempt `request.attempt` of `request.spec` and start its agent (module docstring).

    Args:
        request: The job as recorded, the attempt claimed for it, the capacity and AZ, and the volume to carry over.
    """
    spec = request.spec
    started = time.monotonic()
    progress = StepProgress(artifact_key("launch-attempt-progress", spec.name), STEPS)
    stored = _claimed(request)
    key = launch_key(spec.name, request.attempt)
    held = _Held()
    try:
        # Anything else ending the process (a kill, SIGTERM) cleans nothing: a re-run finds the instance by its key.
        with cleanup_on_failure(
            f"launch of {spec.name}",
            lambda: progress.current,
            lambda: cleanup(spec, held.volume_id, held.instance, key),
            lambda failure: fail_attempt(request, failure.step, failure.error, failure.cleaned),
            failed=LaunchFailedError,
            catch=(Exception, KeyboardInterrupt),
            passes=(CapacityRefusedError,),
        ):
            report = _launch(request, stored, held, progress)
    except CapacityRefusedError as refused:
        # The AZ tried is the attempt's: a retry (or a move away from it) starts from there.
        tried = refused.availability_zone
        update_attempt_record(
            request,
            lambda a: {
                "capacity_refused_at": a.capacity_refused_at or _now(),
                "availability_zone": tried or a.availability_zone,
            },
        )
        get_run_logger().warning("%s refused in %s: %s", request.capacity, refused.availability_zone, refused.code)
        raise
    report.seconds = round(time.monotonic() - started, 1)
    progress.finish(f"{spec.name} attempt {request.attempt}: running on {report.instance_id}")
    return report


def _launch(request: AttemptRequest, stored: JobRecord, held: _Held, progress: StepProgress) -> AttemptReport:
    spec, account, log = request.spec, request.spec.account, get_run_logger()
    progress.step("launch")
    volume = _volume(request, stored)
    held.volume_id = volume.id if volume else None
    staging = jobs.staging_prefix(spec.bucket, spec.name, request.attempt)
    if request.code_from:
        copy_staged(request.code_from, staging, [CODE_TARBALL, AGENT_TARBALL], account=account)
    zone = volume.availability_zone if volume else request.zone  # the instance follows the data
    template = load_template(spec.template)
    launch = launch_request(spec, template, zone=zone, capacity=request.capacity, attempt=request.attempt)
    # A heartbeat too: spot-watch leaves an attempt whose last try is recent to its launcher (core/recovery.py).
    update_attempt_record(
        request, lambda a: {"tries": a.tries + 1, "last_try_at": _now(), "launched_by": request.launched_by}
    )
    instance = held.instance = launch_instance(launch, account=account)
    update_attempt_record(
        request,
        lambda a: {
            "instance_id": instance.id,
            "instance_type": instance.instance_type,
            "capacity_type": instance.lifecycle,
            "availability_zone": instance.availability_zone,
            "launched_at": a.launched_at if a.instance_id == instance.id and a.launched_at else _now(),
        },
    )
    log.info("%s %s %s in %s", instance.lifecycle, instance.instance_type, instance.id, instance.availability_zone)
    progress.step("ssm online")
    wait_online(instance.id, timeout_s=spec.online_timeout_s, account=account)
    if _agent_started(request, instance):
        log.info("the agent of attempt %d already runs on %s (an earlier run started it)", request.attempt, instance.id)
    elif request.after_instance:
        _take_over(request, volume, instance, staging, progress)
    else:
        if volume is not None:
            _attach_and_mount(request, volume, instance, progress)
        progress.step("ship")
        _ship(request, instance, staging)
        progress.step("start")
        _start(request, instance)
    update_attempt_record(request, lambda a: {}, status=JobStatus.RUNNING)
    return AttemptReport(
        job=spec.name,
        attempt=request.attempt,
        instance_id=instance.id,
        instance_type=instance.instance_type,
        availability_zone=instance.availability_zone or "",
        capacity_type=instance.lifecycle,
        volume_id=volume.id if volume else None,
        staging_uri=staging,
        launched_by=request.launched_by,
        seconds=0.0,
    )


def _take_over(
    request: AttemptRequest, volume: Volume | None, instance: Instance, staging: str, progress: StepProgress
) -> None:
    """The replacement of an attempt whose instance serves its spot notice: everything that needs neither the volume
    nor the old trainer's end is done while the old instance still runs — ship the code, and once the old agent
    wrote its final checkpoint, download it — so that only attach, mount and start remain after the old instance
    goes. The old trainer and this one never share the volume or the checkpoint prefix."""
    progress.step("ship")
    _ship(request, instance, staging)
    progress.step("wait previous")
    _wait_previous_agent(request)
    _prefetch(request, instance)
    _wait_released(request, volume)
    if volume is not None:
        _attach_and_mount(request, volume, instance, progress)
    progress.step("start")
    _start(request, instance)


def _prefetch(request: AttemptRequest, instance: Instance) -> None:
    """The latest checkpoint onto the new instance before its trainer starts (agent `prefetch`). Best effort: the
    agent's restore at the start downloads whatever is missing. Not when the checkpoints live on the data volume
    (it is not mounted yet)."""
    spec = request.spec
    mount = spec.resolved_mount_point
    if mount and (spec.resolved_checkpoint_dir + "/").startswith(mount.rstrip("/") + "/"):
        return
    out = run_command(
        instance.id, prefetch_script(spec.name), timeout_s=900, check=False, what="prefetch", account=spec.account
    )
    line = out.stdout.strip().splitlines()[-1] if out.ok and out.stdout.strip() else out.describe_failure()
    get_run_logger().info("checkpoint prefetch: %s", line)


def _volume(request: AttemptRequest, stored: JobRecord) -> Volume | None:
    """The attempt's volume, moved into `move_to` first if asked. A re-run uses the copy an earlier run of this
    attempt made (recorded on the attempt, or, when killed before that, found by the move's key): a volume is
    moved once."""
    spec = request.spec
    volume_id = (stored.volume_id if request.move_to else None) or request.volume_id
    if not volume_id:
        return None
    volume = describe_volume(volume_id, account=spec.account)
    if request.move_to and volume.availability_zone != request.move_to:
        get_run_logger().info("moving %s from %s to %s", volume.id, volume.availability_zone, request.move_to)
        # Keyed by the attempt: a re-run (this one killed mid-move) finds the snapshot and copy it made.
        key = launch_key(spec.name, request.attempt)
        volume = move_volume_task(volume.id, request.move_to, idempotency_key=key, account=spec.account)
        moved = volume.id
        update_attempt_record(request, lambda a: {"volume_id": moved})
    elif request.zone and volume.availability_zone != request.zone and not request.move_to:
        raise InvalidInputError(
            "zone", request.zone, f"the AZ of {volume.id} ({volume.availability_zone}), or move_to={request.zone}"
        )
    return volume


def _attach_and_mount(request: AttemptRequest, volume: Volume, instance: Instance, progress: StepProgress) -> None:
    spec, account = request.spec, request.spec.account
    progress.step("attach")
    attached = attach_volume(volume.id, instance.id, account=account)
    # The agent's shutdown terminates the instance: the data volume must survive it (detached, kept).
    keep_on_termination(instance.id, volume.id, account=account)
    device = next(a.device for a in attached.attachments if a.instance_id == instance.id)
    progress.step("mount")
    script = data_mount_script(volume.id, device, spec.filesystem, spec.resolved_mount_point)
    get_run_logger().info(run_command(instance.id, script, what="mount", account=account).stdout.strip())


def _ship(request: AttemptRequest, instance: Instance, staging: str) -> None:
    spec, account = request.spec, request.spec.account
    with tempfile.TemporaryDirectory(prefix="trainctl-attempt-") as folder:
        path = Path(folder) / AGENT_SPEC
        path.write_text(json.dumps(agent_spec(spec, attempt=request.attempt, instance_id=instance.id), indent=2))
        upload_file(str(path), staging + AGENT_SPEC, account=account)
    out = run_command(instance.id, ship_script(spec.name, staging), what="ship code", account=account)
    get_run_logger().info(out.stdout.strip())


def _agent_started(request: AttemptRequest, instance: Instance) -> bool:
    """The agent of this attempt wrote its status from this instance: an earlier run of the attempt started it."""
    spec = request.spec
    document = read_agent_status(spec.bucket, spec.name, request.attempt, account=spec.account)
    status = AgentStatus.parse(document)
    return status is not None and status.instance_id == instance.id


def _start(request: AttemptRequest, instance: Instance) -> None:
    spec = request.spec
    out = run_command(
        instance.id, start_agent_script(spec.name), timeout_s=120, check=False, what="start agent", account=spec.account
    )
    # The agent refuses a second start of the job: an earlier run started it just before it was killed.
    if not out.ok and "already running" not in out.stderr:
        raise CommandFailedError(out, "start agent")
    get_run_logger().info(out.stdout.strip() or "agent started")


# -- overlap with the previous attempt ------------------------------------------------------------------------------


class PreviousAttemptBusyError(TrainctlError):
    """The previous attempt did not let go of its instance, volume or checkpoints within the wait."""


def _wait_until(request: AttemptRequest, still_busy: Callable[[], str | None], what: str) -> None:
    """Poll `still_busy` (what still holds on, or None) until None, within `after_timeout_s`."""
    deadline = time.monotonic() + request.after_timeout_s
    busy = still_busy()
    while busy is not None:
        if time.monotonic() > deadline:
            raise PreviousAttemptBusyError(
                f"waited {request.after_timeout_s} s for {what}: {busy}",
                fix="Check the previous instance (trainctl train status); spot-watch tries again on its next pass.",
            )
        time.sleep(OVERLAP_POLL_S)
        busy = still_busy()
    get_run_logger().info("done waiting for %s", what)


def _instance_state(request: AttemptRequest, instance_id: str) -> str:
    try:
        return describe_instance.fn(instance_id, account=request.spec.account).state
    except Exception as exc:
        if getattr(exc, "code", "") == "InvalidInstanceID.NotFound":
            return "terminated"
        raise


def _wait_released(request: AttemptRequest, volume: Volume | None) -> None:
    """Until the previous attempt's instance is shutting-down or terminated and the data volume `available`."""
    old = request.after_instance
    assert old is not None

    def still_busy() -> str | None:
        state = _instance_state(request, old)
        if state not in {"shutting-down", "terminated"}:
            return f"{old} is {state}"
        if volume is not None:
            now = describe_volume.fn(volume.id, account=request.spec.account)
            if now.state != "available":
                return f"{volume.id} is {now.state}"
        return None

    _wait_until(request, still_busy, f"the previous attempt's {old} to let go")


def _wait_previous_agent(request: AttemptRequest) -> None:
    """Until the previous attempt's agent wrote its final status or its interruption record (its last checkpoint
    is then in S3, and this attempt's agent restores it), or its instance is terminated (nothing more can come)."""
    spec, old = request.spec, request.after_instance
    assert old is not None
    record, _ = read_record.fn(spec.bucket, spec.name, account=spec.account)
    attempts = record.attempts if record else []
    number = next((a.number for a in attempts if a.instance_id == old), request.attempt - 1)

    def still_busy() -> str | None:
        status = AgentStatus.parse(read_agent_status.fn(spec.bucket, spec.name, number, account=spec.account))
        if status is not None and status.final:
            return None
        if read_interruption.fn(spec.bucket, spec.name, old, account=spec.account) is not None:
            return None
        if _instance_state(request, old) == "terminated":
            return None
        return f"the agent of attempt {number} on {old} has not written its final status"

    _wait_until(request, still_busy, f"the final word of attempt {number}'s agent")


# -- cleanup ----------------------------------------------------------------------------------------------------


def release_volume(spec: JobSpec, volume_id: str | None, instance_id: str, done: list[str]) -> None:
    """Unmount and detach (keep) the volume if it is attached to `instance_id`: a volume another instance holds (the
    previous attempt's, during an overlap) is never touched."""
    if volume_id is None:
        return
    try:
        volume = describe_volume.fn(volume_id, account=spec.account)
    except Exception as exc:
        done.append(f"volume {volume_id} could NOT be checked: {exc}")
        return
    if volume.attached_instance_id != instance_id:
        done.append(f"volume {volume_id} left as it was ({volume.state}, not attached to {instance_id})")
        return
    try:
        run_command.fn(instance_id, unmount_script(volume_id), check=False, timeout_s=120, account=spec.account)
    except Exception as exc:
        get_run_logger().warning("unmount failed: %s", exc)
    try:
        detached = detach_volume.fn(volume_id, account=spec.account)
        done.append(f"volume {volume_id} detached and {detached.state} (kept)")
    except Exception as exc:
        done.append(f"volume {volume_id} could NOT be detached: {exc}")


def cleanup(spec: JobSpec, volume_id: str | None, instance: Instance | None, key: str) -> list[str]:
    """After a failed launch: unmount, detach (keep) the volume, terminate the instance this attempt launched."""
    done: list[str] = []
    if instance is None:
        # A launch that failed inside RunInstances' wait may still have made one: the key finds it.
        instance = find_launched(key, account=spec.account)
        if instance is None:
            return [f"no instance was launched; volume {volume_id} left as it was" if volume_id else "nothing launched"]
    release_volume(spec, volume_id, instance.id, done)
    try:
        terminate.fn(instance.id, idempotency_key=key, account=spec.account)
        done.append(f"instance {instance.id} terminated")
    except Exception as exc:
        done.append(f"instance {instance.id} could NOT be terminated ({exc}); terminate it by hand")
    return done
