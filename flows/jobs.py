"""Job control for the CLI: a job's status, its log (live from the instance over SSM while it runs, else the copy
the agent put in S3), its stop, and the code-folder check a launch makes before Prefect starts.

Plain functions over tasks/jobs.py (the one job store) and the plain functions behind its tasks: a read needs no
Prefect API run. The launch itself is the train-launch flow (flows/train_launch.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core import events as ev
from core import jobs
from core.errors import UsageError
from core.jobs import JobRecord
from tasks.code import CodeListing, scan_code_dir
from tasks.ec2_instances import describe_instance
from tasks.jobs import JobStopReport, current_record, poll_agent, read_agent_status, read_log
from tasks.jobs import stop_job as stop_job_task
from tasks.ssm import CommandFailedError

LOG_POLL_S = 2.0


@dataclass(frozen=True)
class JobView:
    """The record following the agent's final status, the agent's status document, and the instance's state."""

    record: JobRecord
    agent: dict[str, Any] | None
    instance_state: str | None


def check_code_dir(code_dir: str, *, limit_bytes: int) -> CodeListing:
    """The files a launch would ship; a missing folder or one over the limit is refused (tasks.code)."""
    return scan_code_dir(code_dir, limit_bytes=limit_bytes)


def read_job(
    bucket: str, job: str, *, save: bool = False, account: str | None = None
) -> tuple[JobRecord, dict[str, Any] | None]:
    """The record following the agent's final status (tasks.jobs.current_record) and the agent's status."""
    record, _, agent = current_record(bucket, job, save=save, account=account)
    if record is None:
        raise UsageError(f"no job {job!r} in s3://{bucket}/{jobs.JOBS_ROOT}/", fix="Check --bucket and the job name.")
    return record, agent


def instance_state(instance_id: str | None, *, account: str | None = None) -> str | None:
    """EC2's state of the job's instance; "gone" once EC2 forgot it, None when the job has none."""
    if not instance_id:
        return None
    try:
        return describe_instance.fn(instance_id, account=account).state
    except Exception as exc:
        if getattr(exc, "code", "") == "InvalidInstanceID.NotFound":
            return "gone"
        raise


def job_status(bucket: str, job: str, *, account: str | None = None) -> JobView:
    """The job as it stands (a record behind the agent's final status is brought up to date and saved)."""
    record, agent = read_job(bucket, job, save=True, account=account)
    return JobView(record=record, agent=agent, instance_state=instance_state(record.instance_id, account=account))


def stream_log(
    bucket: str,
    job: str,
    *,
    emit: Callable[[str], None],
    attempt: int | None = None,
    follow: bool = False,
    account: str | None = None,
) -> tuple[int, bool]:
    """Hand the log of `attempt` (default: the latest) to `emit` in pieces; with `follow`, until the job ends.
    Live from the agent while the attempt's instance runs, else from S3. Returns (the attempt, still live)."""
    record, _ = read_job(bucket, job, account=account)
    n = attempt or record.attempt
    instance_id = record.instance_id or ""
    live = n == record.attempt and instance_state(instance_id, account=account) == "running"
    offset = 0
    while True:
        if live:
            try:
                poll = poll_agent.fn(instance_id, job, offset, account=account)
            except CommandFailedError:
                live = False  # the instance went away: the rest is in S3
                continue
            if not poll.installed:
                live = False  # no agent there yet (a launch in progress): nothing on the instance to read
                continue
            emit(poll.chunk)
            offset = poll.offset
            if poll.chunk and poll.offset < poll.size:
                continue
            if not follow or poll.trainer_ended:
                break
        else:
            got = read_log(bucket, job, n, offset=offset, account=account)
            if got is not None:
                emit(got[0])
                offset = got[1]
            if not follow:
                break
            agent = read_agent_status.fn(bucket, job, n, account=account) or {}
            if agent.get("status") not in (None, "running"):
                tail = read_log(bucket, job, n, offset=offset, account=account)
                if tail:
                    emit(tail[0])
                break
        time.sleep(LOG_POLL_S)
    return n, live


def stop_job(
    bucket: str, job: str, *, grace_s: float = 30.0, keep_instance: bool = False, account: str | None = None
) -> JobStopReport:
    """Stop the job's current attempt through its agent, whatever its state (tasks.jobs.stop_job), and tell it
    (`trainctl.job.stopped`) when it was stopped now."""
    report = stop_job_task.fn(bucket, job, grace_s=grace_s, keep_instance=keep_instance, account=account)
    if report.outcome == "stopped":
        from flows.events import emit_job  # Prefect: only when there is something to tell, not for status or logs

        emit_job(
            ev.JOB_STOPPED,
            job,
            bucket=bucket,
            resource_ids=[report.instance_id],
            attempt=report.attempt,
            by="trainctl job stop",
            reason="asked",
            why=report.detail,
        )
    return report
