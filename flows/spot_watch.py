"""spot-watch: one pass over every managed job — observe, decide (core/recovery.py), act — run every minute.

A pass:
1. observes in a bounded number of calls: every training instance with its spot request status (2 EC2 calls for
   all jobs), each bucket's job names (one delimited listing) and records, and for each job that is not over (or
   whose instance still runs) its agent status, its interruption record and its latest complete checkpoint. EC2
   that could not be read (after the task's retries) is `looked=False` for every job: nothing is concluded about
   an instance from a missing answer (SkyPilot #10155). A record that does not parse, or that a newer trainctl
   wrote, is reported and left alone;
2. for each job asks `decide`, acts, re-reads the record and asks again (a few rounds at most). Every record change
   is a conditional write: when another pass or command wrote first (JobChangedError) the job is left to the next
   pass. A resume claims attempt n+1 (`resuming`) by such a write before anything is launched, so two passes at
   the same moment launch once; the launch's idempotency key is job + attempt, so a retried launch finds its
   instance;
3. emits events (trainctl.spot.warning; trainctl.job.finished / .failed / .stopped / .interrupted / .resumed /
   .gave-up, through flows/events.py) and writes the job's history (`job-<name>-history`) when the job changed,
   and the pass's own table (`spot-watch`).

A moved volume's original is kept (tasks/ebs.move_volume renames it `<name>@<old-az>`; DESIGN.md section 3):
deleting it is the user's call, or teardown's.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import AfterValidator, BaseModel, Field

from blocks.aws import load_account
from core import events as ev
from core import jobs
from core import tags as t
from core.errors import CapacityRefusedError
from core.history import history_rows
from core.jobs import AgentStatus, AttemptRecord, JobRecord, JobStatus, RecoveryStrategy
from core.launch import launch_key
from core.models import Instance
from core.recovery import Act, CapacityView, Decision, Observation, decide
from core.s3uri import validate_buckets
from core.spot import SpotInterruption, spot_interruption
from flows.events import emit_job
from flows.launch_attempt import AttemptRequest, launch_attempt
from flows.reporting import artifact_key
from tasks.capacity import placement_scores, zones_offering
from tasks.checkpoints import latest_checkpoint
from tasks.ec2_instances import find_launched, observe_training_instances, terminate_instance
from tasks.jobs import (
    JobChangedError,
    list_jobs,
    read_agent_status,
    read_interruption,
    read_record_checked,
    update_attempt,
    write_record,
)

# Decide → act → re-read rounds per job and pass: interruption → resume is two; more means the record keeps
# changing under us, which the next pass sorts out.
MAX_ROUNDS = 3
_UP = frozenset({"pending", "running"})


class SpotWatchRequest(BaseModel):
    buckets: Annotated[list[str], AfterValidator(validate_buckets)] = Field(
        default_factory=list,
        description="job buckets to watch; every bucket a training instance's trainctl:bucket tag names is added",
    )
    account: str | None = Field(default=None, description="AwsAccount block name; default: the AWS environment")


class JobPass(BaseModel):
    """What the pass did with one job."""

    job: str
    bucket: str
    before: str
    after: str
    act: str
    reason: str
    attempt: int | None = None


class SkippedRecord(BaseModel):
    job: str
    bucket: str
    problem: str


class SpotWatchReport(BaseModel):
    looked: bool = Field(description="EC2 answered: False means no job's instance was judged this pass")
    buckets: list[str]
    jobs: list[JobPass] = Field(default_factory=list)
    skipped: list[SkippedRecord] = Field(default_factory=list)
    events: list[str] = Field(default_factory=list, description="`<event> <job>` for each event emitted")


class _Job:
    """One job during the pass: its observation, its record's ETag and what happened to it."""

    def __init__(self, observation: Observation, etag: str) -> None:
        self.observation = observation
        self.etag = etag
        self.before = observation.record.status.value
        self.acts: list[str] = []
        self.reasons: list[str] = []
        self.changed = False

    @property
    def record(self) -> JobRecord:
        return self.observation.record


def _now() -> datetime:
    return datetime.now(UTC)


@flow(name="spot-watch", flow_run_name="spot-watch", log_prints=True)
def spot_watch(request: SpotWatchRequest | None = None) -> SpotWatchReport:
    """One pass over the training jobs: notice spot interruptions and ended instances, resume each job by its
    policy (same AZ, move, on-demand) or give up, and record what happened (module docstring).

    Args:
        request: Which job buckets to watch (those the instances' tags name are added) and the AWS account.
    """
    request = request or SpotWatchRequest()
    account = request.account
    looked, instances = _observe_instances(account)
    buckets = sorted({*request.buckets, *(i.tags[t.BUCKET] for i in instances.values() if i.tags.get(t.BUCKET))})
    report = SpotWatchReport(looked=looked, buckets=buckets)
    for bucket in buckets:
        for job in _observe_bucket(bucket, looked, instances, report, account):
            _handle(job, report, account)
    _report_artifact(report)
    return report


def _observe_instances(account: str | None) -> tuple[bool, dict[str, Instance]]:
    try:
        found = observe_training_instances(account=account)
    except Exception as exc:
        get_run_logger().warning("EC2 could not be read (%s): no instance is judged this pass", exc)
        return False, {}
    return True, {i.id: i for i in found}


def _observe_bucket(
    bucket: str, looked: bool, instances: dict[str, Instance], report: SpotWatchReport, account: str | None
) -> list[_Job]:
    try:
        names = list_jobs(bucket, account=account)
    except Exception as exc:
        report.skipped.append(SkippedRecord(job="*", bucket=bucket, problem=f"jobs not listed: {exc}"))
        return []
    found: list[_Job] = []
    for name in names:
        try:
            record, etag, problem = read_record_checked(bucket, name, account=account)
            if problem is not None or record is None or etag is None:
                if problem is not None:
                    report.skipped.append(SkippedRecord(job=name, bucket=bucket, problem=problem))
                continue
            found.append(_Job(_observe_job(record, looked, instances, account), etag))
        except Exception as exc:  # this job's reads failed after their retries: the next pass tries again
            report.skipped.append(SkippedRecord(job=name, bucket=bucket, problem=f"not read this pass: {exc}"))
    return found


def _observe_job(record: JobRecord, looked: bool, instances: dict[str, Instance], account: str | None) -> Observation:
    """What decide needs of one job: only a job that is not over (or whose instance still runs) costs more reads."""
    instance = instances.get(record.instance_id) if record.instance_id else None
    up = instance is not None and instance.state in _UP
    if record.finished and not up:
        return Observation(record=record, looked=looked, instance=instance)
    agent = AgentStatus.parse(read_agent_status(record.bucket, record.name, record.attempt, account=account))
    if record.finished:
        return Observation(record=record, looked=looked, instance=instance, agent=agent)
    interruption = (
        read_interruption(record.bucket, record.name, record.instance_id, account=account)
        if record.instance_id
        else None
    )
    checkpoint_uri = record.checkpoint_uri or jobs.default_checkpoint_uri(record.bucket, record.name)
    latest = latest_checkpoint(checkpoint_uri, account=account)
    return Observation(
        record=record,
        looked=looked,
        instance=instance,
        agent=agent,
        interruption=interruption,
        latest_checkpoint=latest.seq if latest else None,
    )


def _capacity(record: JobRecord, now: datetime, account: str | None) -> CapacityView:
    """Where the type can get spot capacity: asked only for a job whose strategy moves and whose wait is over."""
    spec, current = record.spec, record.current
    if (
        spec is None
        or spec.resume.strategy != RecoveryStrategy.SAME_AZ_THEN_MOVE
        or record.status != JobStatus.RESUMING
        or current.capacity_refused_at is None
        or not current.instance_type
        or (now - current.capacity_refused_at).total_seconds() < spec.resume.capacity_wait_minutes * 60
    ):
        return CapacityView()
    region = load_account(account).resolved_region()
    return CapacityView(
        offered=zones_offering(current.instance_type, account=account),
        scores=placement_scores(current.instance_type, region=region, account=account),
    )


def _handle(job: _Job, report: SpotWatchReport, account: str | None) -> None:
    """Decide, act, re-read, for a few rounds; a lost race or a failed act leaves the job to the next pass."""
    log = get_run_logger()
    for _ in range(MAX_ROUNDS):
        now = _now()
        try:
            capacity = _capacity(job.record, now, account)
        except Exception as exc:  # without it a move would look impossible: decide nothing rather than give up
            job.reasons.append(f"capacity not read this pass ({exc}): left for the next pass")
            break
        decision = decide(job.observation, capacity, now)
        job.acts.append(decision.act.value)
        job.reasons.append(decision.reason)
        _warn_of_notice(job, decision, report)
        if decision.act == Act.NOTHING:
            break
        log.info("job %s: %s (%s)", job.record.name, decision.act.value, decision.reason)
        try:
            if not ACTS[decision.act](job, decision, report, account) or not _reread(job, account):
                break
        except JobChangedError:
            job.reasons.append("another pass or command changed the record first: left for the next pass")
            break
        except Exception as exc:
            log.warning("job %s: %s failed: %s", job.record.name, decision.act.value, exc)
            job.reasons.append(f"{decision.act.value} failed: {exc}")
            break
    report.jobs.append(
        JobPass(
            job=job.record.name,
            bucket=job.record.bucket,
            before=job.before,
            after=job.record.status.value,
            act=" → ".join(job.acts),
            reason="; ".join(job.reasons),
            attempt=job.record.attempt,
        )
    )
    if job.changed:
        _history_artifact(job.record)


def _reread(job: _Job, account: str | None) -> bool:
    """The record as stored now; False when it cannot be judged again this pass (unreadable, or a new attempt
    whose instance this pass did not observe)."""
    record, etag, problem = read_record_checked(job.record.bucket, job.record.name, account=account)
    if record is None or etag is None or problem is not None:
        return False
    same_attempt = record.attempt == job.record.attempt
    job.observation = job.observation.model_copy(update={"record": record})
    job.etag = etag
    return same_attempt


def _save(job: _Job, record: JobRecord, account: str | None) -> None:
    record.updated_at = _now()
    job.etag = write_record(record, expected_etag=job.etag, account=account)
    job.observation = job.observation.model_copy(update={"record": record})
    job.changed = True


# -- acts: each returns True when the job should be judged again this pass --------------------------------------

Acting = Callable[[_Job, Decision, SpotWatchReport, "str | None"], bool]


def _record_end(job: _Job, decision: Decision, report: SpotWatchReport, account: str | None) -> bool:
    record, agent = job.record, job.observation.agent
    assert agent is not None
    updated = jobs.reconcile(record, agent) or record.with_status(
        JobStatus(agent.status), exit_code=agent.exit_code, finished_at=agent.ended_at or _now()
    )
    _save(job, updated, account)
    event = _END_EVENTS.get(updated.status, ev.JOB_FAILED)
    _emit(report, event, updated, decision.reason, updated.instance_id, updated.volume_id)
    return True


# How an attempt that ended by itself is told (anything else that ended it is a failure).
_END_EVENTS = {
    JobStatus.SUCCEEDED: ev.JOB_FINISHED,
    JobStatus.STOPPED: ev.JOB_STOPPED,
    JobStatus.INTERRUPTED: ev.JOB_INTERRUPTED,
}


def _record_lost(job: _Job, decision: Decision, report: SpotWatchReport, account: str | None) -> bool:
    updated = job.record.with_status(JobStatus.FAILED, message=decision.reason, finished_at=_now())
    _save(job, updated, account)
    _emit(report, ev.JOB_FAILED, updated, decision.reason, updated.instance_id, updated.volume_id)
    return True


def _record_interruption(job: _Job, decision: Decision, report: SpotWatchReport, account: str | None) -> bool:
    seen = job.observation.interruption
    ended = (seen.job_exited_at or seen.notice_seen_at) if seen else None
    updated = job.record.with_status(JobStatus.INTERRUPTED, message=decision.reason, finished_at=ended or _now())
    _save(job, updated, account)
    _emit(report, ev.JOB_INTERRUPTED, updated, decision.reason, updated.instance_id, updated.volume_id)
    return True


def _give_up(job: _Job, decision: Decision, report: SpotWatchReport, account: str | None) -> bool:
    updated = job.record.with_status(JobStatus.GAVE_UP, message=decision.reason)
    _save(job, updated, account)
    _emit(report, ev.JOB_GAVE_UP, updated, decision.reason, updated.volume_id)
    return False


def _end_instance(job: _Job, decision: Decision, report: SpotWatchReport, account: str | None) -> bool:
    record = job.record
    assert record.instance_id is not None
    terminate_instance(record.instance_id, idempotency_key=launch_key(record.name, record.attempt), account=account)
    return False


def _abandon_launch(job: _Job, decision: Decision, report: SpotWatchReport, account: str | None) -> bool:
    """A launch that stopped moving: end the instance its key finds (if any), then record the attempt failed."""
    record = job.record
    key = launch_key(record.name, record.attempt)
    instance = find_launched(key, account=account)
    if instance is not None:
        terminate_instance(instance.id, idempotency_key=key, account=account)
    updated = record.with_status(JobStatus.FAILED, message=decision.reason, finished_at=_now())
    _save(job, updated, account)
    _emit(report, ev.JOB_FAILED, updated, decision.reason, instance.id if instance else None, updated.volume_id)
    return False


def _resume(job: _Job, decision: Decision, report: SpotWatchReport, account: str | None) -> bool:
    """Claim the next attempt (a conditional write: of two passes, one launches), then launch it; a capacity
    refusal was recorded on the attempt by the launch, and the next pass decides what comes after."""
    record = job.record
    assert record.spec is not None and decision.attempt is not None
    old = job.observation.instance
    after_instance = old.id if decision.overlap and old is not None and old.state in _UP else None
    code_from = jobs.staging_prefix(record.bucket, record.name, decision.attempt - 1)
    if decision.new_attempt:
        _save(job, _claimed(record, decision), account)
        record = job.record
    request = AttemptRequest(
        spec=record.spec,
        attempt=decision.attempt,
        capacity=decision.capacity or "spot",
        zone=decision.zone,
        volume_id=record.volume_id,
        move_to=decision.zone if decision.move_volume else None,
        code_from=code_from,
        after_instance=after_instance,
        launched_by="spot-watch",
    )
    try:
        launched = launch_attempt(request)
    except CapacityRefusedError as exc:
        job.reasons.append(f"no capacity: {exc}; the next pass decides")
        return False
    _record_time_lost(job, decision.attempt, account)
    _emit(
        report,
        ev.JOB_RESUMED,
        record,
        decision.reason,
        launched.instance_id,
        launched.volume_id,
        attempt=decision.attempt,
    )
    job.changed = True
    return False


def _record_time_lost(job: _Job, attempt: int, account: str | None) -> None:
    """The resumed attempt's time lost: from the previous attempt's end until its agent was started now."""
    record = job.record
    previous = record.attempt_record(attempt - 1)
    if previous is not None and previous.finished_at is not None:
        lost = round((_now() - previous.finished_at).total_seconds(), 1)
        try:
            update_attempt(record.bucket, record.name, attempt, {"time_lost_s": lost}, account=account)
        except Exception as exc:  # only history: the resume itself is done
            get_run_logger().warning("time lost of %s attempt %d not recorded: %s", record.name, attempt, exc)
    _reread(job, account)


def _claimed(record: JobRecord, decision: Decision) -> JobRecord:
    assert decision.attempt is not None
    seq = decision.resume_from_seq
    claim = AttemptRecord(
        number=decision.attempt,
        launched_by="spot-watch",
        instance_type=record.instance_type,
        availability_zone=decision.zone,
        capacity_type=decision.capacity,
        volume_id=record.volume_id,
        created_at=_now(),
        resumed_from=jobs.checkpoint_folder(seq) if seq is not None else None,
        resumed_from_seq=seq,
    )
    return record.with_new_attempt(claim, JobStatus.RESUMING)


ACTS: dict[Act, Acting] = {
    Act.RECORD_END: _record_end,
    Act.RECORD_LOST: _record_lost,
    Act.RECORD_INTERRUPTION: _record_interruption,
    Act.RESUME: _resume,
    Act.GIVE_UP: _give_up,
    Act.END_INSTANCE: _end_instance,
    Act.ABANDON_LAUNCH: _abandon_launch,
}


# -- events and artifacts ---------------------------------------------------------------------------------------


def _warn_of_notice(job: _Job, decision: Decision, report: SpotWatchReport) -> None:
    """A spot notice on a live attempt (EC2 marked the instance, or the agent recorded it), once per pass."""
    observation = job.observation
    instance = observation.instance
    if f"{ev.SPOT_WARNING} {job.record.name}" in report.events or instance is None or instance.state not in _UP:
        return
    if job.before not in {JobStatus.PENDING.value, JobStatus.RUNNING.value}:
        return
    noticed = spot_interruption(instance) == SpotInterruption.BEING_INTERRUPTED or observation.interruption
    if noticed and instance.id == job.record.instance_id:
        _emit(report, ev.SPOT_WARNING, job.record, decision.reason, instance.id, job.record.volume_id)


def _emit(
    report: SpotWatchReport,
    event: str,
    record: JobRecord,
    reason: str,
    *resource_ids: str | None,
    attempt: int | None = None,
) -> None:
    """The job's event (flows/events.py), noted in the pass's report."""
    emit_job(
        event,
        record.name,
        bucket=record.bucket,
        resource_ids=resource_ids,
        attempt=attempt or record.attempt,
        reason=reason,
    )
    report.events.append(f"{event} {record.name}")


def _history_artifact(record: JobRecord) -> None:
    create_table_artifact(
        table=history_rows(record),
        key=artifact_key("job", record.name, "history"),
        description=f"attempts of job {record.name} ({record.status.value})",
    )


def _report_artifact(report: SpotWatchReport) -> None:
    rows: list[dict[str, Any]] = [
        {
            "job": j.job,
            "bucket": j.bucket,
            "status": f"{j.before} → {j.after}",
            "act": j.act,
            "reason": j.reason,
        }
        for j in report.jobs
    ]
    rows += [
        {"job": s.job, "bucket": s.bucket, "status": "skipped", "act": "none", "reason": s.problem}
        for s in report.skipped
    ]
    looked = "" if report.looked else " — EC2 could not be read: no instance was judged"
    create_table_artifact(
        table=rows,
        key="spot-watch",
        description=f"spot-watch pass over {', '.join(report.buckets) or 'no bucket'}{looked}",
    )
