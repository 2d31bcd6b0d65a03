"""The job layout: names, instance paths and S3 keys of a job. A copy of core/jobs.py (the agent is shipped as
files and cannot import it; tests/agent/test_layout.py compares the two)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import SpecError

JOB_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
JOBS_ROOT = "trainctl/jobs"
INSTANCE_JOBS_DIR = "/var/lib/trainctl/jobs"
PID_FILE = "pid"
LOG_FILE = "job.log"
PROGRESS_FILE = "progress"  # the trainer's step, if it writes one (TRAINCTL_PROGRESS_FILE)
EXIT_CODE_FILE = "exit_code"
AGENT_PID_FILE = "agent.pid"
AGENT_LOG_FILE = "agent.log"
CODE_DIR = "code"
CHECKPOINT_DIR = "checkpoints"
MANIFEST_NAME = "MANIFEST.json"
LATEST_NAME = "LATEST.json"
# Agent-private files in the job dir (not part of the shared contract).
SPEC_COPY_FILE = "agent-spec.json"
STATUS_FILE = "status.json"
STOP_REQUEST_FILE = "stop_request.json"

STATUSES = ("running", "succeeded", "failed", "interrupted", "stopped")


def validate_job_name(name: str) -> str:
    if not isinstance(name, str) or not JOB_NAME.match(name):
        raise SpecError(f"job: {name!r} is not 1-63 lowercase letters, digits or dashes")
    return name


def job_prefix(bucket: str, job: str) -> str:
    return f"{JOBS_ROOT}/{validate_job_name(job)}"


def log_uri(bucket: str, job: str, attempt: int) -> str:
    return f"s3://{bucket}/{job_prefix(bucket, job)}/logs/attempt-{attempt}.log"


def status_uri(bucket: str, job: str, attempt: int) -> str:
    return f"s3://{bucket}/{job_prefix(bucket, job)}/status/attempt-{attempt}.json"


def interruption_uri(bucket: str, job: str, instance_id: str) -> str:
    return f"s3://{bucket}/{job_prefix(bucket, job)}/interruptions/{instance_id}.json"


def default_checkpoint_uri(bucket: str, job: str) -> str:
    return f"s3://{bucket}/{job_prefix(bucket, job)}/checkpoints/"


def checkpoint_folder(seq: int) -> str:
    return f"ckpt-{seq:06d}/"


def instance_job_dir(job: str) -> str:
    """The job's folder on the instance, before the $TRAINCTL_ROOT prefix."""
    return f"{INSTANCE_JOBS_DIR}/{validate_job_name(job)}"


def on_instance(path: str, root: str | None = None) -> Path:
    """An instance path under $TRAINCTL_ROOT (left alone when it is already under the root)."""
    root = os.environ.get("TRAINCTL_ROOT", "") if root is None else root
    root = root.rstrip("/")
    if not root or path == root or path.startswith(root + "/"):
        return Path(path)
    return Path(root + "/" + path.lstrip("/"))


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b")."""
    if not uri.startswith("s3://"):
        raise SpecError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise SpecError(f"{uri!r} has no bucket")
    return bucket, key
