"""Where a job's state lives: the one layout that the flows, the on-instance agent and teardown agree on.

S3 (under the job's bucket; the job record survives any instance, DESIGN.md section 5):

    s3://<bucket>/trainctl/jobs/<job>/job.json                     the job record (JobRecord)
    s3://<bucket>/trainctl/jobs/<job>/staging/attempt-<n>/...      code.tar.gz, agent.tar.gz, agent-spec.json
    s3://<bucket>/trainctl/jobs/<job>/logs/attempt-<n>.log         the job's log, uploaded by the agent
    s3://<bucket>/trainctl/jobs/<job>/status/attempt-<n>.json      running | succeeded | failed | interrupted
    s3://<bucket>/trainctl/jobs/<job>/interruptions/<instance>.json   what the agent did on a spot notice
    <checkpoint_uri>/ckpt-<seq:06d>/<files...>                      one checkpoint (default checkpoint_uri:
    <checkpoint_uri>/ckpt-<seq:06d>/MANIFEST.json                    s3://<bucket>/trainctl/jobs/<job>/checkpoints/)
    <checkpoint_uri>/LATEST.json                                    {"seq": n, "prefix": "ckpt-<seq>/"} written last

A checkpoint is complete iff its MANIFEST.json exists (it is written after every file of it, listing each file's
size and sha256). LATEST.json is written after the manifest. Restore = read LATEST, download, verify sizes/sha256.

On the instance (every path under $TRAINCTL_ROOT, empty on AWS):

    /var/lib/trainctl/jobs/<job>/pid            the trainer's process group leader
    /var/lib/trainctl/jobs/<job>/job.log        its stdout+stderr
    /var/lib/trainctl/jobs/<job>/exit_code      written when it ends (absent = still running or killed)
    /var/lib/trainctl/jobs/<job>/agent.pid      the agent
    /var/lib/trainctl/jobs/<job>/agent.log
    /var/lib/trainctl/jobs/<job>/code/          the shipped code (the command's working directory)
    /var/lib/trainctl/jobs/<job>/checkpoints/   default TRAINCTL_CHECKPOINT_DIR

The agent (agent/, standard library only) cannot import this module; tests/agent checks its copy of these names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from core.models import JobStatus
from core.names import NameKind, validate_name
from core.s3uri import S3Uri

if TYPE_CHECKING:  # core.launch imports this module: the model is only named here
    from core.launch import JobRecord

# The agent's copy of the rule (it cannot import core; tests/agent compares them). core.names holds the rule itself.
JOB_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

JOBS_ROOT = "trainctl/jobs"
INSTANCE_JOBS_DIR = "/var/lib/trainctl/jobs"
PID_FILE = "pid"
LOG_FILE = "job.log"
EXIT_CODE_FILE = "exit_code"
AGENT_PID_FILE = "agent.pid"
AGENT_LOG_FILE = "agent.log"
CODE_DIR = "code"
CHECKPOINT_DIR = "checkpoints"
MANIFEST_NAME = "MANIFEST.json"
LATEST_NAME = "LATEST.json"


def validate_job_name(name: str, *, field: str = "name") -> str:
    """Job names become tags, S3 prefixes and folder names: lowercase letters, digits and dashes, 1–63."""
    return validate_name(NameKind.JOB, name, field=field)


def job_prefix(bucket: str, job: str) -> S3Uri:
    return S3Uri(bucket).join(JOBS_ROOT, validate_job_name(job))


def job_record_uri(bucket: str, job: str) -> str:
    return str(job_prefix(bucket, job).join("job.json"))


def staging_prefix(bucket: str, job: str, attempt: int) -> str:
    return str(job_prefix(bucket, job).join("staging", f"attempt-{attempt}")) + "/"


def log_uri(bucket: str, job: str, attempt: int) -> str:
    return str(job_prefix(bucket, job).join("logs", f"attempt-{attempt}.log"))


def status_uri(bucket: str, job: str, attempt: int) -> str:
    return str(job_prefix(bucket, job).join("status", f"attempt-{attempt}.json"))


def interruption_uri(bucket: str, job: str, instance_id: str) -> str:
    return str(job_prefix(bucket, job).join("interruptions", f"{instance_id}.json"))


def default_checkpoint_uri(bucket: str, job: str) -> str:
    return str(job_prefix(bucket, job).join("checkpoints")) + "/"


def checkpoint_folder(seq: int) -> str:
    return f"ckpt-{seq:06d}/"


def instance_job_dir(job: str) -> str:
    """The job's folder on the instance, before the $TRAINCTL_ROOT prefix (see core.shell.on_instance)."""
    return f"{INSTANCE_JOBS_DIR}/{validate_job_name(job)}"


# What the agent writes as its status (agent STATUSES) once the attempt is over; "running" is its only other word.
FINAL_AGENT_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "stopped", "interrupted"})


def _agent_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def reconcile(record: JobRecord, agent_status: Mapping[str, Any] | None) -> JobRecord | None:
    """The record once it follows the agent's final status for its attempt; None when nothing changes.

    The agent writes its status (status_uri) and may shut the instance down with Prefect gone: when it said the
    attempt ended, the record must not keep saying `running`. A status of another attempt, or a non-final one,
    changes nothing; neither does a record that already ended (its end was recorded by whoever saw it first).
    """
    if not agent_status or record.status not in {JobStatus.PENDING, JobStatus.RUNNING}:
        return None
    word = agent_status.get("status")
    if word not in FINAL_AGENT_STATUSES or agent_status.get("attempt", record.attempt) != record.attempt:
        return None
    code = agent_status.get("exit_code")
    exit_code = code if isinstance(code, int) and not isinstance(code, bool) else record.exit_code
    return record.model_copy(
        update={
            "status": JobStatus(word),
            "exit_code": exit_code,
            "finished_at": _agent_time(agent_status.get("ended_at")) or record.finished_at,
        }
    )


# -- the agent's answer on the instance (appended here; its import belongs at the top once the module settles) ----
from pydantic import BaseModel  # noqa: E402


class AgentPoll(BaseModel):
    """One answer of the job's agent on the instance (agent `poll`/`stop`: its local state and a log chunk), or
    `installed=False` when the agent was never shipped there (a launch killed before its ship step)."""

    job: str
    installed: bool = True
    status: str | None = None  # the agent's word: running | succeeded | failed | interrupted | stopped | unknown
    attempt: int | None = None
    exit_code: int | None = None
    pid: int | None = None  # the trainer's; None before the agent started it
    trainer_alive: bool = False
    agent_alive: bool = False
    checkpoint_seq: int | None = None
    instance_action: str | None = None  # once the attempt ended: "shutdown" | "keep"
    instance_action_reason: str | None = None
    offset: int = 0  # where the next log chunk starts
    size: int = 0  # of the log on the instance
    chunk: str = ""

    @property
    def alive(self) -> bool:
        """The attempt is not over on the instance: its trainer runs, or its agent is still finishing it."""
        return self.trainer_alive or self.agent_alive

    @property
    def trainer_ended(self) -> bool:
        """The trainer was started and is no longer running (its exit code may be missing if it was killed)."""
        return self.exit_code is not None or (self.pid is not None and not self.trainer_alive)
