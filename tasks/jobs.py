"""The one job store: the job record (`job.json`) read with its ETag and written conditionally, the agent's status
and log, one poll of the agent on the instance, and one stop of a job (always through its agent, so it
checkpoints); and whether anything trains on an instance (DESIGN.md section 3, rule 2).

Every write is an S3 conditional write (DESIGN.md section 5): `IfNoneMatch="*"` claims a new job name,
`IfMatch=<etag read>` updates a record nobody changed since it was read. Of two writers, one wins; the other gets
`JobChangedError` and writes nothing. Layout: core/jobs.py.
"""

from __future__ import annotations

import contextlib
import json
import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from core import jobs
from core.errors import AwsError, UsageError
from core.jobs import AgentPoll, JobRecord, JobStatus, TrainingState
from core.launch import agent_command_script, every_agent_poll_script, launch_key
from core.s3uri import parse_s3_uri
from core.shell import quote
from tasks.aws import aws_task, translate
from tasks.ec2_instances import find_launched, terminate_instance
from tasks.s3 import LOST_RACE_CODES, client, get_json, is_missing, list_common_prefixes, list_objects, put_conditional
from tasks.ssm import CommandFailedError, CommandResult, run_script


class JobChangedError(UsageError):
    """The record changed between this command's read and its write: nothing was written."""

    def __init__(self, job: str, bucket: str) -> None:
        self.job = job
        super().__init__(
            f"job {job} was changed by another command at the same time (another launch?)",
            fix=f"Run `trainctl train status {job} --bucket {bucket}` and retry",
        )


def _location(bucket: str, job: str) -> tuple[str, str]:
    parsed = parse_s3_uri(jobs.job_record_uri(bucket, job))
    return parsed.bucket, parsed.key


@aws_task(name="read-job-record", task_run_name="read-job-record {job}", tags=["aws-s3"])
def read_record(bucket: str, job: str, *, account: str | None = None) -> tuple[JobRecord | None, str | None]:
    """The record and its ETag; (None, None) when there is none. A record this version cannot parse (another
    tool's) reads as no record but keeps its ETag, so replacing it is still a conditional write."""
    record, etag, _ = _read_checked(bucket, job, account)
    return record, etag


def _read_checked(bucket: str, job: str, account: str | None) -> tuple[JobRecord | None, str | None, str | None]:
    """The record, its ETag, and why a stored record does not parse (None when it does, or there is none)."""
    s3_bucket, key = _location(bucket, job)
    try:
        with translate("s3:GetObject"):
            got = client(account).get_object(Bucket=s3_bucket, Key=key)
            body, etag = got["Body"].read(), str(got["ETag"])
    except AwsError as exc:
        if is_missing(exc):
            return None, None, None
        raise
    try:
        return JobRecord.model_validate(json.loads(body)), etag, None
    except ValidationError as exc:
        return (
            None,
            etag,
            "not a job record this version reads: " + str(exc.errors()[0]["msg"]).removeprefix("Value error, "),
        )
    except ValueError as exc:
        return None, etag, f"not JSON ({exc})"


@aws_task(name="write-job-record", task_run_name="write-job-record {record.name}", tags=["aws-s3"])
def write_record(record: JobRecord, *, expected_etag: str | None, account: str | None = None) -> str:
    """Write the record if it is still as read (`expected_etag`; None: only if there is no record yet). Returns
    the new ETag, the one the next write of this writer expects. Raises JobChangedError when another won."""
    s3_bucket, key = _location(record.bucket, record.name)
    body = json.dumps(record.model_dump(mode="json"), indent=2).encode()
    s3 = client(account)
    try:
        return put_conditional(s3, s3_bucket, key, body, expected_etag=expected_etag)
    except Exception as exc:
        code = getattr(exc, "code", "")
        if code in LOST_RACE_CODES or (expected_etag is not None and code in {"NoSuchKey", "404"}):
            mine = _already_written(s3, s3_bucket, key, body)
            if mine is not None:
                return mine
            raise JobChangedError(record.name, record.bucket) from exc
        raise


def _already_written(s3: Any, bucket: str, key: str, body: bytes) -> str | None:
    """The ETag of the stored record when it is byte for byte `body`: a retried write whose first try landed but
    whose answer was lost (the retry then fails its own condition) is no conflict. Records carry their creation
    and write times, so another writer's does not match (and one that did would change nothing)."""
    try:
        with translate("s3:GetObject"):
            got = s3.get_object(Bucket=bucket, Key=key)
    except AwsError as exc:
        if is_missing(exc):
            return None
        raise
    return str(got["ETag"]) if got["Body"].read() == body else None


@aws_task(name="read-agent-status", task_run_name="read-agent-status {job} attempt {attempt}", tags=["aws-s3"])
def read_agent_status(bucket: str, job: str, attempt: int, *, account: str | None = None) -> dict[str, Any] | None:
    """The agent's status document of one attempt (core/jobs.py status_uri), or None before it wrote one."""
    return _read_document(jobs.status_uri(bucket, job, attempt), account)


@aws_task(name="read-interruption", task_run_name="read-interruption {job} {instance_id}", tags=["aws-s3"])
def read_interruption(
    bucket: str, job: str, instance_id: str, *, account: str | None = None
) -> jobs.InterruptionRecord | None:
    """What the agent on `instance_id` did on its spot notice (core/jobs.py interruption_uri), or None: no notice
    handled (yet), or a document this version cannot read."""
    document = _read_document(jobs.interruption_uri(bucket, job, instance_id), account)
    try:
        return jobs.InterruptionRecord.model_validate(document) if document else None
    except ValidationError:
        return None


def _read_document(uri: str, account: str | None) -> dict[str, Any] | None:
    """A JSON object the agent wrote, or None when there is none (yet) or it is half-written or foreign."""
    try:
        data = get_json.fn(uri, missing_ok=True, account=account)
    except ValueError:
        return None  # a half-written or foreign document: no status yet
    return data if isinstance(data, dict) else None


def current_record(
    bucket: str, job: str, *, save: bool = False, account: str | None = None
) -> tuple[JobRecord | None, str | None, dict[str, Any] | None]:
    """The record as it stands once it follows the agent's final status (core.jobs.reconcile), its ETag, and the
    agent's status. With `save`, a record that changed is written back if nobody changed it since it was read (a
    lost race means another command updated it: this view is just not saved)."""
    record, etag = read_record.fn(bucket, job, account=account)
    if record is None:
        return None, etag, None
    agent = read_agent_status.fn(bucket, job, record.attempt, account=account)
    reconciled = jobs.reconcile(record, agent)
    if reconciled is None:
        return record, etag, agent
    if save and etag is not None:
        reconciled.updated_at = datetime.now(UTC)
        with contextlib.suppress(JobChangedError):
            etag = write_record.fn(reconciled, expected_etag=etag, account=account)
    return reconciled, etag, agent


def update_attempt(
    bucket: str, job: str, attempt: int, changes: dict[str, Any], *, account: str | None = None
) -> JobRecord | None:
    """Apply `changes` (fields of the attempt; `status` and `message` also move the job, as the state machine
    allows) to the stored record if it is still the one of `attempt` (else a later launch owns the name: None,
    nothing written). An end already recorded is corrected by one seen first-hand (the flow that waited, the stop).
    One conditional write: JobChangedError if another command wrote in between."""
    stored, etag = read_record.fn(bucket, job, account=account)
    if stored is None or etag is None or stored.attempt != attempt:
        return None
    fields = dict(changes)
    status = fields.pop("status", None)
    message = fields.pop("message", None)
    if message is not None:
        fields["message"] = message
    if status is None:
        updated = stored.with_attempt(**fields)
    elif stored.finished and jobs.JobStatus(status) in jobs.FINAL_STATUSES:
        updated = stored.model_copy(update={"status": status}).with_attempt(status=status, **fields)
    else:
        updated = stored.with_status(jobs.JobStatus(status), **fields)
    updated.updated_at = datetime.now(UTC)
    write_record.fn(updated, expected_etag=etag, account=account)
    return updated


@aws_task(name="read-job-record-checked", task_run_name="read-job-record {job}", tags=["aws-s3"])
def read_record_checked(
    bucket: str, job: str, *, account: str | None = None
) -> tuple[JobRecord | None, str | None, str | None]:
    """As read_record, plus why a stored record was not read (corrupt, or written by a newer trainctl): a caller
    that acts on jobs reports such a record and leaves it alone."""
    return _read_checked(bucket, job, account)


@aws_task(name="list-jobs", task_run_name="list-jobs s3://{bucket}", tags=["aws-s3"])
def list_jobs(bucket: str, *, account: str | None = None) -> list[str]:
    """Job names with anything under s3://<bucket>/trainctl/jobs/ (one delimited listing, paginated)."""
    folders = list_common_prefixes(client(account), bucket, jobs.JOBS_ROOT + "/")
    names = [folder[len(jobs.JOBS_ROOT) + 1 :].strip("/") for folder in folders]
    return sorted(n for n in names if jobs.JOB_NAME.match(n))


def read_log(
    bucket: str, job: str, attempt: int, *, offset: int = 0, account: str | None = None
) -> tuple[str, int] | None:
    """The log the agent uploaded for an attempt (core/jobs.py log_uri), from byte `offset`, and the new offset;
    None when there is none (yet)."""
    parsed = parse_s3_uri(jobs.log_uri(bucket, job, attempt))
    s3 = client(account)
    try:
        with translate("s3:GetObject"):
            extra = {"Range": f"bytes={offset}-"} if offset else {}
            body = s3.get_object(Bucket=parsed.bucket, Key=parsed.key, **extra)["Body"].read()
    except AwsError as exc:
        if is_missing(exc):
            return None
        if exc.code == "InvalidRange":  # nothing new past the offset
            return "", offset
        raise
    return body.decode("utf-8", errors="replace"), offset + len(body)


# -- the agent on the instance: one poll, one stop ----------------------------------------------------------------

POLL_LIMIT = 12_000  # log bytes per poll: SSM returns 24,000 characters of output inline


def _agent_answer(result: CommandResult, what: str) -> AgentPoll:
    """The agent's JSON line (its last line that parses); CommandFailedError when the command failed or printed
    nothing the agent says."""
    if result.ok:
        for line in reversed(result.stdout.strip().splitlines()):
            with contextlib.suppress(ValidationError, ValueError):
                return AgentPoll.model_validate_json(line)
    raise CommandFailedError(result, what)


@aws_task(name="poll-agent", task_run_name="poll-agent {job} on {instance_id}", tags=["aws-ssm"])
def poll_agent(
    instance_id: str,
    job: str,
    offset: int = 0,
    *,
    limit: int = POLL_LIMIT,
    timeout_s: int = 60,
    account: str | None = None,
) -> AgentPoll:
    """The job's state on the instance and its log from byte `offset`, as its agent reports them (one SSM
    command; `installed=False` when no agent was shipped there yet). Read-only, so retrying it is safe."""
    script = agent_command_script(job, "poll", "--offset", int(offset), "--limit", int(limit))
    result = run_script(instance_id, script, timeout_s=timeout_s, comment="trainctl: agent poll", account=account)
    return _agent_answer(result, f"polling the agent of job {job}")


def stop_agent(
    instance_id: str, job: str, *, grace_s: float, keep_instance: bool, account: str | None = None
) -> AgentPoll:
    """Stop the job through its agent: SIGTERM to the trainer (it saves), SIGKILL after `grace_s`, then the
    checkpoint, log and final status `stopped` go to S3. Without `keep_instance` the agent then shuts the
    instance down, and this answer may be lost with it (CommandFailedError; S3 has the status)."""
    options: list[object] = ["--grace", float(grace_s)] + (["--keep-instance"] if keep_instance else [])
    script = agent_command_script(job, "stop", *options)
    result = run_script(
        instance_id, script, timeout_s=int(grace_s) + 660, comment="trainctl: agent stop", account=account
    )
    return _agent_answer(result, f"stopping job {job} through its agent")


class JobStopReport(BaseModel):
    """What `stop_job` did. `outcome`: the attempt was stopped now, or it had ended before."""

    job: str
    attempt: int
    outcome: Literal["stopped", "already-ended"]
    status: str  # the record's status afterwards
    instance_id: str | None = None
    instance: str = ""  # what became of the instance, in words
    exit_code: int | None = None
    checkpoint_seq: int | None = None
    detail: str = ""


@aws_task(name="stop-job", task_run_name="stop-job {job}", tags=["aws-ssm"], retries=0)
def stop_job(
    bucket: str, job: str, *, grace_s: float = 30.0, keep_instance: bool = False, account: str | None = None
) -> JobStopReport:
    """Stop the job's current attempt, whatever its state, and record it `stopped` (a conditional write).

    Its instance is the one launched with the attempt's key. Agent installed: the agent stops it (module
    `stop_agent`; an agent that is gone is replaced by the trainer's own stop from the agent's spec copy). No
    agent yet (a launch killed before its ship step), or still booting: it never ran a trainer, so it is
    terminated. No instance: only the record changes. An attempt that already ended is left as it is."""
    record, _, _ = current_record(bucket, job, save=True, account=account)
    if record is None:
        raise UsageError(f"no job {job!r} in s3://{bucket}/{jobs.JOBS_ROOT}/", fix="Check --bucket and the job name.")
    report = JobStopReport(
        job=job,
        attempt=record.attempt,
        outcome="already-ended",
        status=record.status.value,
        instance_id=record.instance_id,
        exit_code=record.exit_code,
    )
    if record.finished:
        report.detail = f"attempt {record.attempt} already ended ({record.status.value}): nothing to stop"
        return report
    key = launch_key(job, record.attempt)
    instance = find_launched(key, account=account)
    if instance is None:
        report.instance = "no instance of this attempt is running"
    elif instance.state == "running":
        report.instance_id = instance.id
        _stop_on_instance(report, bucket, key, grace_s=grace_s, keep_instance=keep_instance, account=account)
    else:
        report.instance_id = instance.id
        report.instance = _end_unstarted(instance.id, key, keep_instance=keep_instance, account=account)
    report.outcome, report.status = "stopped", JobStatus.STOPPED.value
    report.detail = report.detail or f"stopped: {report.instance}"
    if not record_stopped(
        bucket, job, record.attempt, exit_code=report.exit_code, message=report.detail, account=account
    ):
        report.detail += f"; the record was not changed: a later attempt of {job} owns it now"
    return report


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _instance_words(action: Any, reason: Any) -> str:
    if action == "shutdown":
        return "the agent shut the instance down (it terminates)"
    if action == "keep":
        return f"the instance keeps running ({reason or 'kept'})"
    return "the instance keeps running"


def _end_unstarted(instance_id: str, key: str, *, keep_instance: bool, account: str | None) -> str:
    """An instance of the attempt on which no agent ever started a trainer: terminated, unless kept."""
    if keep_instance:
        return f"{instance_id} kept (keep_instance); no trainer ever ran on it: end it yourself or with teardown"
    gone = terminate_instance.fn(instance_id, idempotency_key=key, account=account)
    return f"{instance_id} terminated (no trainer ever ran on it)" if gone else f"{instance_id} was already gone"


def _stop_on_instance(
    report: JobStopReport, bucket: str, key: str, *, grace_s: float, keep_instance: bool, account: str | None
) -> None:
    """The stop of a running instance's attempt, through its agent; fills in `report`."""
    assert report.instance_id is not None
    try:
        answer: AgentPoll | None = stop_agent(
            report.instance_id, report.job, grace_s=grace_s, keep_instance=keep_instance, account=account
        )
        failure: Exception | None = None
    except (CommandFailedError, AwsError) as exc:
        answer, failure = None, exc
    if answer is not None and not answer.installed:
        report.instance = _end_unstarted(report.instance_id, key, keep_instance=keep_instance, account=account)
        return
    if answer is not None:
        if answer.alive:
            raise UsageError(
                f"job {report.job} still runs on {report.instance_id} after its agent's stop",
                fix=f"Try again with a longer --grace, or end the instance with trainctl teardown --job {report.job}",
            )
        report.exit_code, report.checkpoint_seq = answer.exit_code, answer.checkpoint_seq
        report.instance = _instance_words(answer.instance_action, answer.instance_action_reason)
        return
    # No answer: the instance went down under the stop (the agent writes `stopped` to S3 before it shuts down),
    # or SSM cannot reach it yet (still booting: then no agent ever wrote a status).
    status = read_agent_status.fn(bucket, report.job, report.attempt, account=account) or {}
    if status.get("status") == "stopped":
        report.exit_code, report.checkpoint_seq = _int_or_none(status.get("exit_code")), status.get("checkpoint_seq")
        report.instance = _instance_words(status.get("instance_action"), status.get("instance_action_reason"))
    elif not status:
        report.instance = _end_unstarted(report.instance_id, key, keep_instance=keep_instance, account=account)
    else:
        assert failure is not None
        raise failure


def record_stopped(
    bucket: str, job: str, attempt: int, *, exit_code: int | None, message: str, account: str | None
) -> bool:
    """Record the attempt `stopped` (conditional write; once more if another command wrote in between). False
    when a later attempt owns the job name (nothing written)."""
    changes = {
        "status": JobStatus.STOPPED,
        "exit_code": exit_code,
        "finished_at": datetime.now(UTC),
        "message": message,
    }
    try:
        updated = update_attempt(bucket, job, attempt, changes, account=account)
    except JobChangedError:  # `train status`, a launch step: apply the stop to the record as it is now
        updated = update_attempt(bucket, job, attempt, changes, account=account)
    return updated is not None


@aws_task(name="stop-instance-jobs", task_run_name="stop-jobs on {instance_id}", tags=["aws-ssm"], retries=0)
def stop_instance_jobs(
    instance_id: str,
    job_names: list[str],
    *,
    bucket: str | None = None,
    grace_s: float = 120.0,
    account: str | None = None,
) -> list[str]:
    """Teardown's stop: each job on the instance through its agent (it checkpoints; its status is `stopped`), the
    instance kept (teardown detaches the persistent volumes and terminates it itself). With the jobs' `bucket`,
    each job's record says `stopped` too. Returns a line per job."""
    lines: list[str] = []
    for job in job_names:
        answer = stop_agent(instance_id, job, grace_s=grace_s, keep_instance=True, account=account)
        if answer.alive:
            raise UsageError(f"job {job} still runs on {instance_id} after its agent's stop")
        line = f"{job}: {answer.status} (exit code {answer.exit_code}, checkpoint {answer.checkpoint_seq})"
        if bucket and answer.attempt is not None and answer.status == JobStatus.STOPPED.value:
            message = f"stopped by teardown of {instance_id}"
            recorded = record_stopped(
                bucket, job, answer.attempt, exit_code=answer.exit_code, message=message, account=account
            )
            line += "; record updated" if recorded else "; no record of this attempt in the bucket"
        lines.append(line)
    return lines


# -- is anything training on an instance? ----------------------------------------------------------------------

# `[p]ython`: the pattern never matches the command line of the process that holds it. In the sandbox every
# instance shares the host's process table, so a process counts only if its environment carries this instance's
# TRAINCTL_ROOT (on AWS the root is empty and every process of the machine counts).
# `train` must end a word so `trainctl` (our own paths, the agent) is not training; `train.py`, `train_gpt.py`,
# `training/` and `main.py` are.
TRAINING_PROCESS = r"[p]ython[^ ]*( .*)?(train(ing)?([^a-z]|$)|main\.py)"


def check_script() -> list[str]:
    return [
        *every_agent_poll_script(),
        'root="${TRAINCTL_ROOT:-}"',
        # One `ps` for the whole table (a fork per process would cost seconds on a busy host).
        f"ps -eo pid=,args= 2>/dev/null | grep -E {quote(TRAINING_PROCESS)} | while read -r pid cmd; do",
        '  [ "$pid" = "$$" ] && continue',
        '  if [ -n "$root" ]; then',
        "    tr '\\0' '\\n' < \"/proc/$pid/environ\" 2>/dev/null | grep -qxF \"TRAINCTL_ROOT=$root\" || continue",
        "  fi",
        '  echo "proc $pid $cmd"',
        "done",
        "echo checked",
    ]


def parse_check(instance_id: str, stdout: str) -> TrainingState:
    """The check's output as a TrainingState; without the final `checked` line, or with an agent that did not
    answer, the result is unknown (possibly running)."""
    lines = stdout.splitlines()
    if "checked" not in lines:
        return TrainingState(instance_id=instance_id, status="unknown", detail="the check did not finish")
    alive: set[str] = set()
    mute: list[str] = []
    for line in lines:
        if not line.startswith("agent "):
            continue
        _, job, answer = [*line.split(" ", 2), ""][:3]
        try:
            if AgentPoll.model_validate_json(answer).alive:
                alive.add(job)
        except (ValidationError, ValueError):
            mute.append(job)
    procs = [
        line.split(" ", 2)[2].strip() for line in lines if line.startswith("proc ") and len(line.split(" ", 2)) > 2
    ]
    status = "running" if alive or procs else "unknown" if mute else "idle"
    detail = f"the agent of {', '.join(mute)} did not answer" if mute else ""
    return TrainingState(instance_id=instance_id, status=status, jobs=sorted(alive), processes=procs, detail=detail)


def check_training(instance_id: str, *, timeout_s: int = 60, account: str | None = None) -> TrainingState:
    """Plain function behind `detect_training` (no task run of its own, e.g. inside another task's step): never
    raises for an unreachable instance (status unknown)."""
    try:
        result = run_script(
            instance_id, check_script(), timeout_s=timeout_s, comment="trainctl: training check", account=account
        )
    except Exception as exc:  # SSM refused or unreachable: the planner treats unknown as possibly running
        return TrainingState(instance_id=instance_id, status="unknown", detail=str(exc)[:300])
    if not result.ok:
        return TrainingState(instance_id=instance_id, status="unknown", detail=result.describe_failure()[:300])
    return parse_check(instance_id, result.stdout)


@aws_task(name="detect-training", task_run_name="detect-training {instance_id}", tags=["aws-ssm"], retries=0)
def detect_training(instance_id: str, *, timeout_s: int = 60, account: str | None = None) -> TrainingState:
    """Training state of one instance (one SSM command): jobs their agents report alive, training-like processes."""
    return check_training(instance_id, timeout_s=timeout_s, account=account)


@aws_task(name="wait-training-done", task_run_name="wait-training-done {instance_id}", tags=["aws-ssm"], retries=0)
def wait_training_done(
    instance_id: str, *, timeout_s: float, poll_s: float = 5.0, account: str | None = None
) -> TrainingState:
    """Poll until nothing trains on the instance; returns the last state (still running = timed out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = check_training(instance_id, account=account)
        if state.status == "idle" or time.monotonic() > deadline:
            return state
        time.sleep(poll_s)


# -- cost-watch's stop: checkpoint first, verified in S3, then the instance ends -----------------------------------


class CheckpointStopReport(BaseModel):
    """What `checkpoint_then_stop` did, with the times that show its order: the stop asked, the checkpoint
    verified in S3, the instance ended."""

    job: str
    attempt: int
    reason: jobs.StopReason
    outcome: Literal["stopped", "already-ended"]
    status: str  # the record's status afterwards
    instance_id: str | None = None
    instance_ended: bool = False  # the attempt's instance is terminated (by this stop, or it was already gone)
    checkpoint_seq: int | None = None  # the agent's final checkpoint of the attempt
    checkpoint_uri: str | None = None  # its folder, s3://…/ckpt-<seq>/
    checkpoint_verified: bool = False
    checkpoint_written_at: datetime | None = None  # its MANIFEST.json's LastModified
    stop_requested_at: datetime | None = None
    checkpoint_verified_at: datetime | None = None
    instance_ended_at: datetime | None = None
    detail: str = ""


@aws_task(name="checkpoint-then-stop", task_run_name="checkpoint-then-stop {job}", tags=["aws-ssm"], retries=0)
def checkpoint_then_stop(
    bucket: str,
    job: str,
    reason: jobs.StopReason,
    *,
    grace_s: float = 120.0,
    verify_timeout_s: float = 120.0,
    account: str | None = None,
) -> CheckpointStopReport:
    """Stop the job's current attempt for cost-watch (`reason`: budget or idle-gpu) so that its checkpoint is in S3
    before its instance goes, and record it `stopped` with that reason (a conditional write; spot-watch never
    resumes a stopped job).

    The agent stops the trainer with the instance kept (SIGTERM: it saves; the agent uploads the checkpoint and
    writes `stopped`). The agent's final checkpoint is then verified in S3 (its manifest, each file's size, LATEST
    pointing at it), waiting up to `verify_timeout_s`; then the instance is terminated (persistent volumes
    detached first), whatever the job spec's keep_instance says: nothing bills after a job cost-watch stopped.
    When no checkpoint can be verified, the instance is ended all the same and the report (and the record's
    message) says so. An attempt that already ended is left as it is."""
    record, _, _ = current_record(bucket, job, save=True, account=account)
    if record is None:
        raise UsageError(f"no job {job!r} in s3://{bucket}/{jobs.JOBS_ROOT}/", fix="Check the bucket and the job name.")
    report = CheckpointStopReport(
        job=job, attempt=record.attempt, reason=reason, outcome="already-ended", status=record.status.value
    )
    report.instance_id = record.instance_id
    if record.finished:
        report.detail = f"attempt {record.attempt} already ended ({record.status.value}): nothing to stop"
        return report
    key = launch_key(job, record.attempt)
    instance = find_launched(key, account=account)
    report.stop_requested_at = datetime.now(UTC)
    answer, note, lost = None, "", False
    if instance is not None and instance.state == "running":
        answer, note = _stop_keeping_instance(instance.id, job, grace_s, account)
        lost = answer is None
    final = answer if answer is not None and answer.installed and not answer.alive else None
    seq = final.checkpoint_seq if final else None
    # Wait for S3 only when there is a checkpoint to wait for: the one the agent named, or the one of a lost answer.
    timeout = verify_timeout_s if seq is not None or lost else 0.0
    checkpoint_uri = record.checkpoint_uri or jobs.default_checkpoint_uri(bucket, job)
    _verify_final_checkpoint(report, bucket, checkpoint_uri, seq, timeout, account)
    if instance is not None:
        report.instance_id = instance.id
        terminate_instance.fn(instance.id, idempotency_key=key, account=account)
        report.instance_ended, report.instance_ended_at = True, datetime.now(UTC)
    report.outcome, report.status = "stopped", JobStatus.STOPPED.value
    ended = f"{instance.id} terminated" if instance is not None else "no instance of this attempt was running"
    report.detail = f"stopped by cost-watch ({reason.value}): {note}{report.detail}; {ended}"
    exit_code = final.exit_code if final else None
    if not _record_stop_reason(bucket, job, record.attempt, reason, exit_code, report.detail, account):
        report.detail += f"; the record was not changed: a later attempt of {job} owns it now"
    return report


def _stop_keeping_instance(
    instance_id: str, job: str, grace_s: float, account: str | None
) -> tuple[AgentPoll | None, str]:
    """The agent's answer to a stop that keeps the instance (None when it was lost), and what went wrong, in words
    ending with "; " (empty when nothing did)."""
    try:
        answer = stop_agent(instance_id, job, grace_s=grace_s, keep_instance=True, account=account)
    except (CommandFailedError, AwsError) as exc:
        return None, f"the agent's answer to the stop was lost ({exc}); "
    if not answer.installed:
        return answer, "no agent on the instance: no trainer ever ran there; "
    if answer.alive:
        return answer, f"job {job} still ran after its agent's stop; "
    return answer, ""


def _verify_final_checkpoint(
    report: CheckpointStopReport,
    bucket: str,
    checkpoint_uri: str,
    seq: int | None,
    timeout_s: float,
    account: str | None,
) -> None:
    """Fill in `report.checkpoint_*`: within `timeout_s`, the agent's final checkpoint `seq` (from its status in S3
    when its answer was lost) is complete, matches its manifest and is the latest."""
    deadline = time.monotonic() + timeout_s
    while True:
        if seq is None:
            status = jobs.AgentStatus.parse(read_agent_status.fn(bucket, report.job, report.attempt, account=account))
            seq = status.checkpoint_seq if status is not None and status.final else None
        why_not = _checkpoint_problem(report, checkpoint_uri, seq, account) if seq is not None else None
        if seq is not None and why_not is None:
            report.checkpoint_verified, report.checkpoint_verified_at = True, datetime.now(UTC)
            report.detail = f"checkpoint {jobs.checkpoint_folder(seq)} verified in S3"
            return
        if time.monotonic() >= deadline:
            why_not = why_not or f"the agent reported no checkpoint of attempt {report.attempt}"
            report.detail = f"no checkpoint verified{f' within {timeout_s:g} s' if timeout_s else ''}: {why_not}"
            return
        time.sleep(1.0)


def _checkpoint_problem(report: CheckpointStopReport, checkpoint_uri: str, seq: int, account: str | None) -> str | None:
    """Why checkpoint `seq` under `checkpoint_uri` is not verified (None: it is), as the agent verifies it: its
    manifest lists every file with its size, each is in S3 with that size, and LATEST.json names it."""
    prefix = parse_s3_uri(checkpoint_uri, field="checkpoint_uri")
    folder = prefix.key + jobs.checkpoint_folder(seq)
    report.checkpoint_seq, report.checkpoint_uri = seq, f"s3://{prefix.bucket}/{folder}"
    try:
        manifest = get_json.fn(report.checkpoint_uri + jobs.MANIFEST_NAME, missing_ok=True, account=account)
        latest = get_json.fn(checkpoint_uri + jobs.LATEST_NAME, missing_ok=True, account=account)
    except ValueError:
        return "its manifest or LATEST.json is not JSON"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        return f"{report.checkpoint_uri}{jobs.MANIFEST_NAME} is missing or malformed"
    listed = {o["Key"]: o for o in list_objects(client(account), prefix.bucket, folder)}
    for entry in manifest["files"]:
        path, size = (entry.get("path"), entry.get("size")) if isinstance(entry, dict) else (None, None)
        found = listed.get(f"{folder}{path}")
        if found is None or int(found["Size"]) != size:
            return f"{path}: {found and found['Size']} bytes in S3, {size} in the manifest"
    if not isinstance(latest, dict) or latest.get("seq") != seq:
        return f"LATEST.json names {latest and latest.get('seq')!r}, not {seq}"
    report.checkpoint_written_at = listed[folder + jobs.MANIFEST_NAME]["LastModified"]
    return None


def _record_stop_reason(
    bucket: str,
    job: str,
    attempt: int,
    reason: jobs.StopReason,
    exit_code: int | None,
    message: str,
    account: str | None,
) -> bool:
    """The attempt recorded `stopped` with its reason (conditional write, once more after a lost race). False when
    a later attempt owns the job name."""
    changes = {
        "status": JobStatus.STOPPED,
        "stop_reason": reason,
        "exit_code": exit_code,
        "finished_at": datetime.now(UTC),
        "message": message,
    }
    for last in (False, True):
        try:
            return update_attempt(bucket, job, attempt, changes, account=account) is not None
        except JobChangedError:
            if last:
                raise
    return False
