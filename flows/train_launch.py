"""train-launch: start a training job on a spot (or on-demand) instance and, optionally, see it through.

Runbook: validate everything (template, bucket, code dir and size, data volume and its AZ, instance type and AMI,
the data strategy: flows/launch_data.py) → get the data ready (a prewarm for prewarmed-ebs) → record the job in
S3 (a re-launch of the same name is the next attempt) → launch in the volume's AZ (spot, falling back to on-demand
only if allowed) → wait SSM Online → attach + mount the volume → ship code and agent via
the job's staging prefix → start the agent (it detaches) → optionally wait: stream the job log into the flow's
logs and finish with the job's exit code (non-zero = failed flow run).

A failure before the agent runs leaves nothing behind: the volume is unmounted and detached (kept), the instance
this run launched is terminated, and the job record says what happened. Once the agent runs, the job belongs to
it (and to spot-watch): stopping to wait never stops the job.

IAM: `trainctl iam policy --for instance --bucket B` (the instance profile) and `--for caller` print what is
needed (core/iam.py); tests/flows/test_iam_enforced.py runs this flow with only that.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel

from blocks.templates import load_template
from core import events as ev
from core import jobs
from core.cost import LaunchPrice
from core.errors import AwsError, CapacityRefusedError, InvalidInputError, TrainctlError, UsageError
from core.jobs import AgentPoll, AttemptRecord, JobRecord, JobSpec, JobStatus, TemplateSpec
from core.launch import (
    AGENT_TARBALL,
    CODE_TARBALL,
    LaunchOptions,
    launch_key,
    next_attempt,
)
from core.models import Instance, Volume
from core.recovery import launch_capacity
from flows.cleanup import cleanup_on_failure
from flows.events import emit_job
from flows.launch_attempt import (
    AttemptReport,
    AttemptRequest,
    LaunchFailedError,
    fail_attempt,
    launch_attempt,
    launch_request,
    release_volume,
)
from flows.launch_data import DataPlan, DataReport, apply_data, plan_data
from flows.reporting import StepProgress, artifact_key, markdown_report
from tasks.code import CodePackage, package_agent, package_code
from tasks.ebs import describe_volume
from tasks.ec2_instances import LaunchRequest, describe_instance, find_launched, subnet_zone, validate_request
from tasks.ec2_instances import terminate_instance as terminate
from tasks.jobs import (
    JobChangedError,
    poll_agent,
    read_agent_status,
    read_log,
    read_record,
    update_attempt,
    write_record,
)
from tasks.pricing import checked_launch_price
from tasks.s3 import check_bucket, upload_file
from tasks.ssm import CommandFailedError

__all__ = ["JobFailedError", "LaunchFailedError", "LaunchReport", "train_launch"]

# "launch" is the launch-attempt subflow (its own steps: flows/launch_attempt.py).
STEPS = ["validate", "data", "record", "launch", "start", "wait", "finish"]
# After the trainer's exit code appears, how long the agent may take for its final checkpoint upload.
FINAL_SYNC_GRACE_S = 120


class LaunchReport(BaseModel):
    job: str
    attempt: int
    instance_id: str
    instance_type: str
    availability_zone: str
    capacity_type: str  # what was obtained: "spot" or "on-demand"
    volume_id: str | None = None
    mount_point: str | None = None
    checkpoint_uri: str
    log_uri: str
    staging_uri: str
    code_files: int
    code_bytes: int
    status: str  # running (not waited for) | succeeded | failed | interrupted
    exit_code: int | None = None
    instance_terminated: bool = False
    seconds: float
    hourly_usd: float | None = None  # the price checked at launch (spot's then, else on-demand)
    price_source: str | None = None  # api | fallback <date>
    data: DataReport | None = None  # the data strategy that ran, why, how long its step took (None: no data)


class JobFailedError(TrainctlError):
    """The job ran and ended badly (non-zero exit code, or interrupted); the message carries the exit code."""

    def __init__(self, message: str, *, exit_code: int | None, fix: str | None = None) -> None:
        self.job_exit_code = exit_code  # not `exit_code`: that is the CLI's exit status of every TrainctlError
        super().__init__(message, fix=fix)


class _Plan(BaseModel):
    """What validation decided, before the first mutation."""

    template: TemplateSpec
    zone: str | None
    volume: Volume | None
    move_to: str | None
    previous: JobRecord | None
    etag: str | None  # of the record read: the new attempt is written only if it is still the one read
    request: LaunchRequest
    # The previous attempt's instance, up, on which no trainer ever started (its launch was killed): ended first.
    unfinished: Instance | None = None
    price: LaunchPrice | None = None  # the hourly price this launch will pay (checked against max_hourly_cost)
    data: DataPlan | None = None  # how the job gets its dataset (flows/launch_data.py)


def _now() -> datetime:
    return datetime.now(UTC)


def _previous_record(spec: JobSpec) -> tuple[JobRecord | None, str | None]:
    """The record and its ETag, following the agent's final status (an ended job is not `running`). A record
    from another tool's version reads as None: the job starts over at attempt 1 rather than fail."""
    previous, etag = read_record(spec.bucket, spec.name, account=spec.account)
    if previous is not None and previous.status in {JobStatus.PENDING, JobStatus.RUNNING}:
        agent = read_agent_status(spec.bucket, spec.name, previous.attempt, account=spec.account)
        previous = jobs.reconcile(previous, agent) or previous
    return previous, etag


def _attempt_instance(spec: JobSpec, previous: JobRecord) -> Instance | None:
    """The previous attempt's instance while it is up: the one its record names, else the one its launch key
    finds (a launch killed between RunInstances and its record write)."""
    instance: Instance | None = None
    if previous.instance_id:
        try:
            instance = describe_instance(previous.instance_id, account=spec.account)
        except Exception as exc:
            if getattr(exc, "code", "") != "InvalidInstanceID.NotFound":
                raise
    else:
        instance = find_launched(launch_key(spec.name, previous.attempt), account=spec.account)
    return instance if instance is not None and instance.state in {"pending", "running"} else None


def _trainer_started(spec: JobSpec, previous: JobRecord, instance: Instance) -> bool:
    """Did the previous attempt's agent start (its status is in S3, or it answers on the instance)?"""
    if read_agent_status(spec.bucket, spec.name, previous.attempt, account=spec.account) is not None:
        return True
    try:
        poll = poll_agent.fn(instance.id, spec.name, account=spec.account)
    except (AwsError, CommandFailedError):
        return False  # SSM cannot reach it (still booting): nothing was started on it
    return poll.installed and poll.alive


def _unfinished_attempt(spec: JobSpec, previous: JobRecord | None) -> Instance | None:
    """The previous attempt's instance if its launch stopped before the trainer started (killed, crashed): this
    launch ends it before claiming the next attempt. An attempt whose trainer runs is refused instead."""
    if previous is None or not previous.active:
        return None
    instance = _attempt_instance(spec, previous)
    if instance is None:
        return None
    if _trainer_started(spec, previous, instance):
        raise UsageError(
            f"job {spec.name} attempt {previous.attempt} is still {previous.status.value} on {instance.id}",
            fix=f"Stop it first (trainctl train stop {spec.name} --bucket {spec.bucket}) or pick another job name.",
        )
    return instance


def _plan(spec: JobSpec) -> _Plan:
    """Every check that needs no mutation. Raises on the first problem, naming the field and the fix."""
    template = load_template(spec.template)
    check_bucket(spec.bucket, account=spec.account)
    previous, etag = _previous_record(spec)
    unfinished = _unfinished_attempt(spec, previous)
    template_zone = subnet_zone(template.subnet_id, account=spec.account) if template.subnet_id else None
    template_zone = template_zone or template.availability_zone
    volume, move_to, zone = _data_volume(spec, template_zone, unfinished)
    data = plan_data(spec, template, move_to or zone, volume)
    zone = data.zone if data and data.zone and volume is None else zone
    capacity = launch_capacity(spec.spot, spec.resume, spot_refused=False) or "spot"
    request = launch_request(spec, template, zone=zone, capacity=capacity)
    validate_request(request, account=spec.account)
    price = checked_launch_price(
        request.instance_type,
        spot=request.spot,
        availability_zone=request.availability_zone,
        max_hourly_cost=spec.max_hourly_cost,
        cost_policy=spec.cost_policy,
        account=spec.account,
    )
    return _Plan(
        template=template,
        zone=zone,
        volume=volume,
        move_to=move_to,
        previous=previous,
        etag=etag,
        request=request,
        unfinished=unfinished,
        price=price,
        data=data,
    )


def _data_volume(
    spec: JobSpec, template_zone: str | None, unfinished: Instance | None
) -> tuple[Volume | None, str | None, str | None]:
    """The data volume (managed, free), where it must move to (the template fixes another AZ), and the AZ the
    instance launches in (the volume's, unless it moves)."""
    if not spec.data_volume_id:
        return None, None, template_zone
    volume = describe_volume(spec.data_volume_id, account=spec.account)
    if not volume.managed:
        raise UsageError(
            f"{volume.id} was not created by trainctl", fix="Adopt it first: trainctl ebs attach --adopt …"
        )
    if volume.attached_instance_id and not (unfinished and volume.attached_instance_id == unfinished.id):
        raise UsageError(
            f"{volume.id} is in use by {volume.attached_instance_id}",
            fix=f"Detach it first: trainctl ebs detach {volume.id}",
        )
    if not template_zone or volume.availability_zone == template_zone:
        return volume, None, volume.availability_zone  # the instance follows the data
    if not spec.move_volume_if_needed:
        raise InvalidInputError(
            "data_volume_id",
            volume.id,
            f"a volume in {template_zone}, where the template launches; it is in {volume.availability_zone}",
            fix=f"Move it (snapshot + restore): trainctl ebs move {volume.id} {template_zone}, or pass "
            "move_volume_if_needed=True (--move-volume), or drop the template's subnet/AZ so the "
            "instance follows the volume.",
        )
    return volume, template_zone, template_zone


def _claimed_record(spec: JobSpec, plan: _Plan, attempt: int) -> JobRecord:
    """The record with this launch's attempt added (`pending`). An earlier attempt the record still calls active
    never got an instance (`_refuse_if_running` let it through): it is recorded as failed first."""
    now = _now()
    new = AttemptRecord(
        number=attempt, volume_id=spec.data_volume_id, instance_type=plan.template.instance_type, created_at=now
    )
    previous = plan.previous
    if previous is None:
        return JobRecord.first(spec, now=now).with_attempt(instance_type=plan.template.instance_type)
    if previous.active:
        message = (
            "its launch stopped before the trainer started (ended by the next launch)"
            if previous.status == JobStatus.PENDING
            else "its instance is gone without the agent's final status"
        )
        previous = previous.with_status(JobStatus.FAILED, message=message, finished_at=now)
    updated = previous.model_copy(
        update={
            "spec": spec,
            "checkpoint_uri": spec.resolved_checkpoint_uri,
            "mount_point": spec.resolved_mount_point,
        }
    )
    return updated.with_new_attempt(new)


def _end_unfinished(spec: JobSpec, previous: JobRecord, instance: Instance, volume: Volume | None) -> None:
    """End the instance of an attempt whose launch stopped before its trainer started: the data volume released
    first (detached and kept, whatever its DeleteOnTermination), then the instance terminated by its launch key."""
    done: list[str] = []
    if volume is not None and volume.attached_instance_id == instance.id:
        release_volume(spec, volume.id, instance.id, done)
    terminate(instance.id, idempotency_key=launch_key(spec.name, previous.attempt), account=spec.account)
    done.append(
        f"{instance.id} of attempt {previous.attempt} terminated (its launch stopped before the trainer started)"
    )
    for line in done:
        get_run_logger().info(line)


def _save(spec: JobSpec, record: JobRecord, etag: str | None) -> str:
    """Write the record if it is still as this run last read or wrote it (`etag`; None: a new job). Returns the new
    ETag. Another writer's change in between raises JobChangedError (the first write claims the attempt)."""
    record.updated_at = _now()
    return write_record(record, expected_etag=etag, account=spec.account)


@flow(name="train-launch", flow_run_name="train-{spec.name}", log_prints=True)
def train_launch(spec: JobSpec, options: LaunchOptions | None = None) -> LaunchReport:
    """Launch a training job on a spot (or on-demand) instance as the job's next attempt: its data volume attached,
    its code shipped, its agent started (checkpoints to S3; spot-watch resumes it after an interruption).

    Args:
        spec: The job: its name, bucket, instance template, command, data volume, checkpoints and resume policy.
        options: Whether to follow the job to its end (streaming its log) and end its instance then.
    """
    log = get_run_logger()
    options = options or LaunchOptions()
    started = time.monotonic()
    progress = StepProgress(artifact_key("train-launch-progress", spec.name), STEPS)

    progress.step("validate")
    workdir = Path(tempfile.mkdtemp(prefix="trainctl-launch-"))
    try:
        # Local checks first (code dir exists, within the size limit), then the ones that ask AWS.
        code = package_code(spec.code_dir, str(workdir / CODE_TARBALL), limit_bytes=spec.code_limit_bytes)
        agent = package_agent(str(workdir / AGENT_TARBALL))
        log.info("code: %d files, %d bytes (%d compressed)", code.files, code.bytes, code.compressed_bytes)
        plan = _plan(spec)
        progress.step("data")
        spec, plan, data = _data_step(spec, plan)
        return _launch(spec, options, plan, code, agent, started, progress, data)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _data_step(spec: JobSpec, plan: _Plan) -> tuple[JobSpec, _Plan, DataReport | None]:
    """Get the job's data ready (flows/launch_data.py): the spec comes back resolved to the strategy that runs (and
    its volume), so that the record, the agent and spot-watch's resumes see the same data."""
    if plan.data is None:
        return spec, plan, None
    resolved, volume, report = apply_data(spec, plan.data, plan.template)
    get_run_logger().info("data: %s (%s), ready in %.1f s", report.strategy.value, report.why, report.seconds)
    if volume is not None:
        plan = plan.model_copy(update={"volume": volume, "zone": volume.availability_zone})
    return resolved, plan, report


def _launch(
    spec: JobSpec,
    options: LaunchOptions,
    plan: _Plan,
    code: CodePackage,
    agent: CodePackage,
    started: float,
    progress: StepProgress,
    data: DataReport | None = None,
) -> LaunchReport:
    """The runbook after validation: claim the attempt, launch it, announce it, optionally wait, report."""
    progress.step("record")
    attempt = _claim(spec, plan)

    progress.step("launch")
    request = AttemptRequest(
        spec=spec,
        attempt=attempt,
        capacity=launch_capacity(spec.spot, spec.resume, spot_refused=False) or "spot",
        zone=plan.zone,
        volume_id=plan.volume.id if plan.volume else None,
        move_to=plan.move_to,
        launched_by="train-launch",
    )
    staging = jobs.staging_prefix(spec.bucket, spec.name, attempt)
    _stage(request, code, agent, staging)
    launched = _launch_with_fallback(request)

    progress.step("start")
    _announce(spec, attempt, launched)
    report = _running_report(spec, plan, code, launched, staging)
    report.data = data
    if options.wait:
        progress.step("wait")
        report = _wait_for_end(spec, options, report)
        progress.step("finish")
        if options.terminate_when_done and not spec.keep_instance:
            report.instance_terminated = _finish(spec, launched.volume_id, launched.instance_id, attempt)
    report.seconds = round(time.monotonic() - started, 1)
    progress.finish(f"{spec.name} attempt {attempt}: {report.status}")
    markdown_report(artifact_key("train-launch", spec.name), f"train-launch of {spec.name}", _report_rows(report))
    _raise_for_end(spec, report)
    return report


def _report_rows(report: LaunchReport) -> dict[str, object]:
    """The artifact's rows: the data step's own rows (strategy, why, seconds, estimates) flattened after the rest."""
    rows: dict[str, object] = report.model_dump(exclude={"data"})
    if report.data is not None:
        rows.update({f"data {k}": v for k, v in report.data.model_dump().items()})
    return rows


def _claim(spec: JobSpec, plan: _Plan) -> int:
    """End an unfinished previous attempt, then claim the next one in the record; returns its number."""
    if plan.unfinished is not None and plan.previous is not None:
        _end_unfinished(spec, plan.previous, plan.unfinished, plan.volume)
    attempt = next_attempt(plan.previous)
    record = _claimed_record(spec, plan, attempt)
    # The claim: of two launches of this name that read the same record, only one gets past this write, before
    # anything is launched; the other fails with JobChangedError.
    _save(spec, record, plan.etag)
    get_run_logger().info(
        "job %s attempt %d recorded at %s", spec.name, attempt, jobs.job_record_uri(spec.bucket, spec.name)
    )
    return attempt


def _announce(spec: JobSpec, attempt: int, launched: AttemptReport) -> None:
    """The `trainctl.job.launched` event (automations and the UI follow jobs by it)."""
    emit_job(
        ev.JOB_LAUNCHED,
        spec.name,
        bucket=spec.bucket,
        resource_ids=[launched.instance_id, launched.volume_id],
        attempt=attempt,
        instance_id=launched.instance_id,
        capacity_type=launched.capacity_type,
        availability_zone=launched.availability_zone,
    )


def _running_report(
    spec: JobSpec, plan: _Plan, code: CodePackage, launched: AttemptReport, staging: str
) -> LaunchReport:
    return LaunchReport(
        job=spec.name,
        attempt=launched.attempt,
        instance_id=launched.instance_id,
        instance_type=launched.instance_type,
        availability_zone=launched.availability_zone,
        capacity_type=launched.capacity_type,
        volume_id=launched.volume_id,
        mount_point=spec.resolved_mount_point,
        checkpoint_uri=spec.resolved_checkpoint_uri,
        log_uri=jobs.log_uri(spec.bucket, spec.name, launched.attempt),
        staging_uri=staging,
        code_files=code.files,
        code_bytes=code.bytes,
        status="running",
        seconds=0.0,
        hourly_usd=plan.price.usd_per_hour if plan.price else None,
        price_source=plan.price.source if plan.price else None,
    )


def _wait_for_end(spec: JobSpec, options: LaunchOptions, report: LaunchReport) -> LaunchReport:
    """Follow the job to its end, recording the end on the record as launch_attempt left it (and its ETag)."""
    stored, etag = read_record(spec.bucket, spec.name, account=spec.account)
    if stored is None or etag is None or stored.attempt != report.attempt:
        raise JobChangedError(spec.name, spec.bucket)
    return _wait(spec, options, stored, etag, report)


def _stage(request: AttemptRequest, code: CodePackage, agent: CodePackage, staging: str) -> None:
    """Upload code and agent into the attempt's staging prefix (launch_attempt ships them from there)."""
    account = request.spec.account
    with cleanup_on_failure(
        f"launch of {request.spec.name}",
        lambda: "launch",
        lambda: ["nothing launched"],
        lambda failure: fail_attempt(request, failure.step, failure.error, failure.cleaned),
        failed=LaunchFailedError,
        catch=(Exception,),
    ):
        upload_file(code.path, staging + CODE_TARBALL, account=account)
        upload_file(agent.path, staging + AGENT_TARBALL, account=account)


def _launch_with_fallback(request: AttemptRequest) -> AttemptReport:
    """The attempt on the capacity asked for; spot refused, on-demand when the policy allows it (core.recovery)."""
    spec = request.spec
    try:
        return launch_attempt(request)
    except CapacityRefusedError as refused:
        capacity = launch_capacity(spec.spot, spec.resume, spot_refused=refused.capacity == "spot")
        if capacity is None or capacity == request.capacity:
            fail_attempt(request, "launch", refused, ["no instance was launched"])
            raise LaunchFailedError(
                f"launch of {spec.name} failed at step 'launch': {refused}. Cleaned up: no instance was launched"
            ) from refused
        get_run_logger().warning("spot refused (%s); launching %s as the resume policy allows", refused.code, capacity)
        return launch_attempt(request.model_copy(update={"capacity": capacity}))


def _raise_for_end(spec: JobSpec, report: LaunchReport) -> None:
    """A waited-for job that did not succeed fails the flow run, with its exit code."""
    attempt = report.attempt
    if report.status == "stopped":
        raise JobFailedError(
            f"job {spec.name} attempt {attempt} was stopped (exit code {report.exit_code})",
            exit_code=report.exit_code,
            fix="Launch it again with the same name to resume from its last checkpoint.",
        )
    if report.status == "interrupted":
        raise JobFailedError(
            f"job {spec.name} attempt {attempt} was interrupted (spot reclaimed {report.instance_id})",
            exit_code=report.exit_code,
            fix="Launch it again with the same name: it resumes from the last checkpoint.",
        )
    if report.status == "failed":
        raise JobFailedError(
            f"job {spec.name} attempt {attempt} failed with exit code {report.exit_code}",
            exit_code=report.exit_code,
            fix=f"See the log: trainctl train logs {spec.name} --bucket {spec.bucket}",
        )


# -- waiting ----------------------------------------------------------------------------------------------------


class _LogStream:
    """Turns log chunks into whole lines in the flow's logs (a partial last line waits for its end)."""

    def __init__(self) -> None:
        self.pending = ""

    def feed(self, chunk: str) -> None:
        lines = (self.pending + chunk).split("\n")
        self.pending = lines.pop()
        for line in lines:
            get_run_logger().info("[job] %s", line)

    def flush(self) -> None:
        if self.pending:
            get_run_logger().info("[job] %s", self.pending)
            self.pending = ""


def _agent_status(spec: JobSpec, attempt: int) -> dict[str, Any] | None:
    # A plain call, not a task run: the wait loop polls it every few seconds.
    return read_agent_status.fn(spec.bucket, spec.name, attempt, account=spec.account)


def _wait(spec: JobSpec, options: LaunchOptions, record: JobRecord, etag: str, report: LaunchReport) -> LaunchReport:
    """Poll the job's agent on the instance (exit code, liveness, new log bytes); if the instance goes away, read
    what the agent left in S3. Ends when the trainer has exited and the agent finished its final upload."""
    assert record.instance_id is not None
    instance_id = record.instance_id
    stream = _LogStream()
    offset = 0
    exit_seen: float | None = None
    deadline = time.monotonic() + options.wait_timeout_minutes * 60
    delay = 0.5
    while True:
        try:
            poll: AgentPoll | None = poll_agent.fn(instance_id, spec.name, offset, account=spec.account)
        except CommandFailedError as exc:
            poll, failure = None, str(exc)
        except AwsError as exc:
            if exc.code != "InvalidInstanceId":
                raise
            poll, failure = None, "not running"  # the agent shuts the instance down when the job ends
        if poll is not None:
            if poll.chunk:
                stream.feed(poll.chunk)
                offset = poll.offset
            if poll.exit_code is not None:
                exit_seen = exit_seen or time.monotonic()
                # The agent exits once the final checkpoint, log and status are out (or it gave up on them).
                done = not poll.agent_alive or time.monotonic() - exit_seen > FINAL_SYNC_GRACE_S
                if done and poll.offset >= poll.size:
                    stream.flush()
                    word = poll.status if poll.status in jobs.FINAL_AGENT_STATUSES else None
                    return _record_end(spec, record, etag, report, exit_code=poll.exit_code, agent_status=word)
            elif poll.pid is not None and not poll.alive:
                stream.flush()
                return _record_end(spec, record, etag, report, exit_code=None, agent_status=None, lost=True)
            delay = 0.5 if poll.chunk else min(delay * 1.5, 5.0)
        else:
            ended = _ended_with_instance(spec, record, offset, stream)
            if ended is not None:
                agent, code = ended
                return _record_end(spec, record, etag, report, exit_code=code, agent_status=agent)
            get_run_logger().warning("poll failed (%s); trying again", failure)
        if time.monotonic() > deadline:
            raise JobFailedError(
                f"job {spec.name} still running after {options.wait_timeout_minutes} minutes of waiting",
                exit_code=None,
                fix="It keeps running; follow it with trainctl train logs -f, or stop it with trainctl train stop.",
            )
        time.sleep(delay)


def _ended_with_instance(
    spec: JobSpec, record: JobRecord, offset: int, stream: _LogStream
) -> tuple[str, int | None] | None:
    """When the instance is gone: the agent's final word and exit code from S3 (it shuts the instance down once its
    final status is there), after the rest of the log; None while the instance still runs."""
    assert record.instance_id is not None
    state = describe_instance(record.instance_id, account=spec.account).state
    if state in {"pending", "running"}:
        return None
    stream.flush()
    get_run_logger().warning("instance %s is %s", record.instance_id, state)
    tail = read_log(spec.bucket, spec.name, record.attempt, offset=offset, account=spec.account)
    if tail and tail[0]:
        stream.feed(tail[0])
        stream.flush()
    agent = _agent_status(spec, record.attempt) or {}
    code = agent.get("exit_code")
    return str(agent.get("status") or "interrupted"), code if isinstance(code, int) else None


def _record_end(
    spec: JobSpec,
    record: JobRecord,
    etag: str,
    report: LaunchReport,
    *,
    exit_code: int | None,
    agent_status: str | None,
    lost: bool = False,
) -> LaunchReport:
    """The end as the agent saw it: its status word wins (an interrupted trainer may still exit 0)."""
    if agent_status == "interrupted":
        status = JobStatus.INTERRUPTED
    elif agent_status == "stopped":
        status = JobStatus.STOPPED
    elif exit_code == 0:
        status = JobStatus.SUCCEEDED
    else:
        status = JobStatus.FAILED
    lost_message = "the trainer and the agent ended without an exit code (killed?)" if lost else None
    record = record.with_status(status, message=lost_message, exit_code=exit_code, finished_at=_now())
    try:
        _save(spec, record, etag)
    except JobChangedError:
        # `train status` or `train stop` recorded this attempt's end meanwhile: ours (seen to the end) replaces it,
        # unless a later attempt has claimed the name.
        ended = record.current.model_dump(include={"status", "exit_code", "finished_at", "message"})
        update_attempt(spec.bucket, spec.name, record.attempt, ended, account=spec.account)
    get_run_logger().info("job %s attempt %d: %s (exit code %s)", spec.name, record.attempt, status.value, exit_code)
    return report.model_copy(update={"status": status.value, "exit_code": exit_code})


# -- the end ----------------------------------------------------------------------------------------------------


def _finish(spec: JobSpec, volume_id: str | None, instance_id: str, attempt: int) -> bool:
    """After the job ended (waited for): release the volume and terminate the instance (its work is in S3). The
    agent may have shut it down already: terminate then only waits until it is `terminated`."""
    done: list[str] = []
    release_volume(spec, volume_id, instance_id, done)
    for line in done:
        get_run_logger().info(line)
    terminate(instance_id, idempotency_key=launch_key(spec.name, attempt), account=spec.account)
    return True
