"""The job domain: what a job is (JobSpec, ResumePolicy), what happened to it (JobRecord and its attempts, moved
through a small state machine), what the agent writes about it (AgentStatus, InterruptionRecord), and where all of
it lives: the one layout that the flows, the on-instance agent, spot-watch and teardown agree on.

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
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from core.ebs import mount_point as volume_mount_point
from core.errors import InvalidInputError, TrainctlError
from core.ids import validate_availability_zone, validate_id, validate_instance_type
from core.models import StoredObject
from core.names import NameKind, validate_name
from core.s3uri import S3Uri, parse_s3_uri, validate_bucket
from core.secrets import SecretRef, parse_secret_ref

# The agent's copy of the rule (it cannot import core; tests/agent compares them). core.names holds the rule itself.
JOB_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

JOBS_ROOT = "trainctl/jobs"
INSTANCE_JOBS_DIR = "/var/lib/trainctl/jobs"
PID_FILE = "pid"
LOG_FILE = "job.log"
# The trainer may write its step here (TRAINCTL_PROGRESS_FILE): the agent's status and cost-watch's idle check read it.
PROGRESS_FILE = "progress"
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


# -- the job's status, a small state machine --------------------------------------------------------------------


class JobStatus(StrEnum):
    """A job's status. An attempt (one instance) has the same words but never `resuming` or `gave-up`."""

    PENDING = "pending"  # an attempt is claimed; its instance is being launched and set up
    RUNNING = "running"  # the agent runs the trainer
    INTERRUPTED = "interrupted"  # spot took the instance; the checkpoint is in S3
    RESUMING = "resuming"  # spot-watch claimed the next attempt and is launching it
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"  # asked to stop: the trainer saved and exited
    GAVE_UP = "gave-up"  # no attempt left, no capacity within the policy's limits, or no checkpoint to resume


class StopReason(StrEnum):
    """Why cost-watch stopped a job (AttemptRecord.stop_reason); a job stopped for any reason is never resumed."""

    BUDGET = "budget"  # its accumulated cost would pass its budget before the next pass
    IDLE_GPU = "idle-gpu"  # its instance's GPUs stayed idle while its training made no progress


FINAL_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.GAVE_UP}
)
# An instance may run (or be about to) for a job in these: a new launch of the name is refused.
ACTIVE_STATUSES: frozenset[JobStatus] = frozenset({JobStatus.PENDING, JobStatus.RUNNING, JobStatus.RESUMING})

# pending → running → interrupted → resuming → running … → succeeded | failed | stopped | gave-up. A job that ended
# (or was interrupted) may start over as a new attempt (`pending`: a launch by the user). An attempt can end from
# `pending` too: the agent may finish before the launch records `running`, and a launch can fail or be stopped.
_ENDINGS = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED})
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.RUNNING, JobStatus.INTERRUPTED, *_ENDINGS}),
    JobStatus.RUNNING: frozenset({JobStatus.INTERRUPTED, *_ENDINGS}),
    JobStatus.INTERRUPTED: frozenset({JobStatus.RESUMING, JobStatus.PENDING, JobStatus.GAVE_UP, JobStatus.STOPPED}),
    JobStatus.RESUMING: frozenset({JobStatus.RUNNING, JobStatus.INTERRUPTED, JobStatus.GAVE_UP, *_ENDINGS}),
    **{final: frozenset({JobStatus.PENDING}) for final in FINAL_STATUSES},
}


# The statuses that claim a new attempt (JobRecord.with_new_attempt): a user's launch, or spot-watch's resume.
_CLAIMS = frozenset({JobStatus.PENDING, JobStatus.RESUMING})


class JobStateError(TrainctlError):
    """A change the state machine does not allow (a bug, or a record changed behind the caller's back)."""


def check_transition(job: str, current: JobStatus, target: JobStatus) -> None:
    if target != current and target not in TRANSITIONS[current]:
        raise JobStateError(f"job {job} cannot go from {current.value} to {target.value}")


# -- what a job is ---------------------------------------------------------------------------------------------


class RecoveryStrategy(StrEnum):
    """What spot-watch does when spot takes a job's instance (core/recovery.py decides; the flow acts)."""

    NONE = "none"  # record the interruption; a human relaunches
    SAME_AZ = "same-az"  # relaunch where the data volume is; wait for capacity there
    SAME_AZ_THEN_MOVE = "same-az-then-move"  # … then move the volume (snapshot → restore) where capacity is
    SAME_AZ_THEN_ON_DEMAND = "same-az-then-on-demand"  # … then relaunch on on-demand capacity in the same AZ


class ResumePolicy(BaseModel):
    """How a job comes back after spot takes its instance, and when it gives up."""

    model_config = ConfigDict(frozen=True)

    strategy: RecoveryStrategy = Field(
        default=RecoveryStrategy.SAME_AZ,
        description="none | same-az | same-az-then-move | same-az-then-on-demand: what spot-watch does after an "
        "interruption (same-az first always: the data volume is there)",
    )
    max_attempts: int = Field(
        default=5, ge=1, le=100, description="attempts in all, the first launch included; then the job gives up"
    )
    on_demand_fallback: bool = Field(
        default=False,
        description="when spot has no capacity (or the max price is too low) at launch, launch on-demand instead",
    )
    capacity_wait_minutes: int = Field(
        default=10,
        ge=0,
        le=24 * 60,
        description="how long a resume retries spot in the volume's AZ (once per spot-watch pass) before the "
        "strategy's next step (move, on-demand) or giving up",
    )
    from_scratch: bool = Field(
        default=False,
        description="resume a job that has no complete checkpoint from the start; otherwise such a job gives up",
    )
    overlap_notice: bool = Field(
        default=True,
        description="launch the replacement as soon as the spot notice is seen, so it boots during the 2-minute "
        "window (it takes the volume and the checkpoint only once the old trainer has saved and let go)",
    )


class DataStrategy(StrEnum):
    """How a job gets its data (core/data.py advises; train-launch applies). `auto` is a request only: train-launch
    replaces it with the advice's choice, and the job record holds the strategy that ran."""

    AUTO = "auto"
    DIRECT_S3 = "direct-s3"  # the trainer reads S3 itself (TRAINCTL_DATA_URI)
    LOCAL_CACHE = "local-cache"  # copied onto the instance store before the trainer starts (TRAINCTL_DATA_DIR)
    PREWARMED_EBS = "prewarmed-ebs"  # a volume prewarmed with the dataset (reused if one exists), attached
    EXISTING_EBS = "existing-ebs"  # the user's data_volume_id, attached as it is


# Strategies that read the dataset from somewhere other than a volume the user names: data_volume_id conflicts.
_NO_USER_VOLUME = frozenset({DataStrategy.DIRECT_S3, DataStrategy.LOCAL_CACHE})


DEFAULT_CODE_LIMIT_MB = 200
MAX_LAUNCH_HOURLY_USD = 1000.0  # above any single instance's list price: a larger max_hourly_cost is a typo
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Variables the agent sets for the trainer (DESIGN.md section 5); a user value would silently lose.
RESERVED_ENV = frozenset(
    {"TRAINCTL_CHECKPOINT_DIR", "TRAINCTL_RESUME_FROM", "TRAINCTL_JOB", "TRAINCTL_ATTEMPT", "TRAINCTL_ROOT"}
)


class TemplateSpec(BaseModel):
    """What the instance is: the fields of the InstanceTemplate block, usable inline in a JobSpec."""

    model_config = ConfigDict(extra="forbid")

    instance_type: str = Field(description="EC2 instance type, e.g. g5.xlarge")
    image_id: str | None = Field(default=None, description="AMI ID; default: the one image_parameter names")
    image_parameter: str | None = Field(
        default=None, description="SSM public parameter naming the AMI; default: Amazon Linux 2023"
    )
    subnet_id: str | None = Field(default=None, description="subnet to launch into (fixes the AZ)")
    availability_zone: str | None = Field(
        default=None, description="AZ to launch in; default: the data volume's, else EC2's choice"
    )
    security_group_ids: list[str] = Field(default_factory=list, description="security groups (sg-…)")
    instance_profile: str | None = Field(
        default=None, description="IAM instance profile name or ARN (trainctl iam policy --for instance)"
    )
    root_volume_gib: int | None = Field(
        default=None, ge=8, le=16384, description="root volume size; default: the AMI's"
    )
    extra_tags: dict[str, str] = Field(
        default_factory=dict, description="your own tags on the instance (not trainctl:, runctl: or aws:)"
    )

    @model_validator(mode="after")
    def _ids(self) -> TemplateSpec:
        validate_instance_type(self.instance_type, field="template.instance_type")
        if self.image_id:
            validate_id("image", self.image_id, field="template.image_id")
        if self.subnet_id:
            validate_id("subnet", self.subnet_id, field="template.subnet_id")
        if self.availability_zone:
            validate_availability_zone(self.availability_zone, field="template.availability_zone")
        for group in self.security_group_ids:
            validate_id("security_group", group, field="template.security_group_ids")
        bad = [k for k in self.extra_tags if k.lower().startswith(("trainctl:", "runctl:", "aws:"))]
        if bad:
            raise InvalidInputError("template.extra_tags", bad, "tags outside the trainctl:/runctl:/aws: prefixes")
        return self


class JobSpec(BaseModel):
    """One training job. Everything here is checked before any AWS mutation (the code dir by the flow)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not a silently ignored option

    name: str = Field(description="the job's name: lowercase letters, digits and dashes; a relaunch resumes it")
    bucket: str = Field(description="bucket holding the job record, staging, logs (and default checkpoints)")
    template: str | TemplateSpec = Field(description="an InstanceTemplate block name, or the fields inline")
    command: list[str] = Field(description="the trainer's argument list; never passed through a shell")
    code_dir: str = Field(default=".", description="local folder shipped as the trainer's working directory")
    env: dict[str, str] = Field(
        default_factory=dict, description="plain variables for the trainer (stored as given: no secrets here)"
    )
    secret_env: dict[str, SecretRef] = Field(
        default_factory=dict,
        description="variables resolved on the instance by the agent from a reference (ssm:/path, "
        "secretsmanager:<id>[#json-key]); job.json, agent-spec.json and logs hold the reference, never the value",
    )
    spot: bool = Field(default=True, description="spot capacity (3-10x cheaper, may be interrupted)")
    max_price: str | None = Field(default=None, description="spot max price in USD/hour; default: on-demand price")
    data_volume_id: str | None = Field(
        default=None, description="a trainctl EBS volume (vol-…) attached and mounted for the job"
    )
    data: str | None = Field(
        default=None,
        description="the dataset's s3://bucket/prefix: delivered to the trainer as data_strategy says "
        "(TRAINCTL_DATA_DIR or TRAINCTL_DATA_URI)",
    )
    data_strategy: DataStrategy = Field(
        default=DataStrategy.AUTO,
        description="auto | direct-s3 | local-cache | prewarmed-ebs | existing-ebs: how the trainer gets `data`; "
        "auto takes the advice's choice (trainctl data advise) for the job's instance type and AZ; existing-ebs "
        "is data_volume_id as it is; a launch records the strategy that ran",
    )
    data_runs: int = Field(
        default=1,
        ge=1,
        description="how many runs will read `data` (this one and the ones you plan after it): data_strategy=auto "
        "weighs a one-time prewarm against reading S3 again in every run",
    )
    data_epochs: int = Field(
        default=1,
        ge=1,
        description="passes over `data` per run: with several, a copy that is faster to read (instance store, "
        "prewarmed EBS) pays back sooner; used by data_strategy=auto",
    )
    mount_point: str | None = Field(default=None, description="where the volume appears; default /mnt/trainctl/<vol>")
    filesystem: Literal["xfs", "ext4"] = Field(
        default="xfs", description="filesystem made on a blank data volume (one with data is never formatted)"
    )
    move_volume_if_needed: bool = Field(default=False, description="snapshot+restore the volume into the AZ")
    checkpoint_dir: str | None = Field(default=None, description="on the instance; default the job's folder")
    checkpoint_uri: str | None = Field(default=None, description="s3://…; default the job's checkpoints prefix")
    max_runtime_minutes: int | None = Field(
        default=None, ge=1, description="stop the trainer (it saves first) after this long; default: no limit"
    )
    sync_interval_s: int = Field(default=300, ge=1, description="how often the agent uploads a changed checkpoint")
    code_limit_mb: int = Field(
        default=DEFAULT_CODE_LIMIT_MB, ge=1, description="refuse a code folder larger than this (after .gitignore)"
    )
    keep_instance: bool = Field(
        default=False,
        description="keep the instance running after the job ends, e.g. to inspect it; you then end it yourself "
        "or with teardown (by default the agent shuts it down, which terminates it, once the final checkpoint, log "
        "and status are in S3)",
    )
    online_timeout_s: int = Field(
        default=600, ge=10, description="how long a new instance may take to come online in SSM"
    )
    resume: ResumePolicy = Field(
        default_factory=ResumePolicy, description="how spot-watch resumes the job after a spot interruption"
    )
    account: str | None = Field(default=None, description="an AwsAccount block name; default: the environment's")
    # Cost limits (issue 16): unset here, the CostPolicy block `cost_policy`'s apply (its defaults: none).
    max_hourly_cost: float | None = Field(None, description="refuse a launch whose hourly price is above this (USD)")
    budget_usd: float | None = Field(None, description="the job's budget across all its attempts (USD; cost-watch)")
    cost_policy: str | None = Field(None, description="the CostPolicy block whose limits apply where these are unset")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_job_name(value)

    @field_validator("template")
    @classmethod
    def _template_name(cls, value: str | TemplateSpec) -> str | TemplateSpec:
        # A saved block's name is checked here, before the flow loads it (Prefect start-up, an API call).
        return validate_name(NameKind.BLOCK, value, field="template") if isinstance(value, str) else value

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        return validate_bucket(value, field="bucket")

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str]) -> list[str]:
        if not value or not value[0].strip():
            raise InvalidInputError("command", value, "a non-empty argument list such as ['python', 'train.py']")
        if any("\0" in arg for arg in value):
            raise InvalidInputError("command", value, "arguments without NUL characters")
        return value

    @field_validator("env", "secret_env")
    @classmethod
    def _env(cls, value: dict[str, str], info: Any) -> dict[str, str]:
        for key in value:
            if not _ENV_NAME.fullmatch(key):
                raise InvalidInputError(info.field_name, key, "variable names of letters, digits and '_'")
            if key in RESERVED_ENV:
                raise InvalidInputError(
                    info.field_name, key, f"a name other than {', '.join(sorted(RESERVED_ENV))} (set by the agent)"
                )
        return value

    @field_validator("secret_env", mode="before")
    @classmethod
    def _secret_refs(cls, value: Any) -> Any:
        # Before SecretRef's own check, so that an error names the variable (secret_env.DB_PASSWORD).
        if isinstance(value, dict):
            for key, ref in value.items():
                parse_secret_ref(ref, field=f"secret_env.{key}")
        return value

    @field_validator("checkpoint_uri")
    @classmethod
    def _checkpoint_uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = parse_s3_uri(value, field="checkpoint_uri")
        if not parsed.key:
            raise InvalidInputError("checkpoint_uri", value, "a prefix inside the bucket, e.g. s3://b/ckpt/my-job/")
        return value if value.endswith("/") else value + "/"

    @field_validator("checkpoint_dir", "mount_point")
    @classmethod
    def _instance_path(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return None
        if not value.startswith("/") or ".." in value.split("/") or "\0" in value:
            raise InvalidInputError(info.field_name, value, "an absolute path on the instance without '..'")
        return value.rstrip("/") or "/"

    @field_validator("max_hourly_cost", "budget_usd")
    @classmethod
    def _usd(cls, value: float | None, info: Any) -> float | None:
        high = MAX_LAUNCH_HOURLY_USD if info.field_name == "max_hourly_cost" else 1_000_000
        if value is not None and not 0 < value <= high:
            raise InvalidInputError(info.field_name, value, f"a positive amount in USD, at most {high:g}")
        return value

    @field_validator("cost_policy")
    @classmethod
    def _policy_name(cls, value: str | None) -> str | None:
        return None if value is None else validate_name(NameKind.BLOCK, value, field="cost_policy")

    @field_validator("max_price")
    @classmethod
    def _price(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ok = float(value) > 0
        except ValueError:
            ok = False
        if not ok:
            raise InvalidInputError("max_price", value, "a positive price in USD per hour, e.g. '0.50'")
        return value

    @field_validator("data")
    @classmethod
    def _data(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not parse_s3_uri(value, field="data").key:
            raise InvalidInputError("data", value, "a dataset prefix inside the bucket, e.g. s3://b/datasets/imagenet/")
        return value

    @model_validator(mode="after")
    def _data_strategy(self) -> JobSpec:
        strategy = self.data_strategy
        if strategy == DataStrategy.EXISTING_EBS and not self.data_volume_id:
            raise InvalidInputError(
                "data_volume_id", None, "the volume holding the data with data_strategy=existing-ebs (--volume vol-…)"
            )
        if self.data is None and strategy not in {DataStrategy.AUTO, DataStrategy.EXISTING_EBS}:
            raise InvalidInputError(
                "data", None, f"the dataset's s3:// URI with data_strategy={strategy.value} (--data s3://…)"
            )
        if self.data_volume_id and strategy in _NO_USER_VOLUME:
            raise InvalidInputError(
                "data_volume_id",
                self.data_volume_id,
                f"no data volume with data_strategy={strategy.value} (the data comes from {self.data})",
                fix="Drop --volume, or use --data-strategy existing-ebs (or auto) to train from the volume",
            )
        return self

    @model_validator(mode="after")
    def _volume(self) -> JobSpec:
        if self.data_volume_id:
            validate_id("volume", self.data_volume_id, field="data_volume_id")
        elif self.mount_point and not (self.data and self.data_strategy != DataStrategy.DIRECT_S3):
            raise InvalidInputError(
                "mount_point", self.mount_point, "a mount point only together with data_volume_id or a data volume"
            )
        if not self.spot and self.max_price:
            raise InvalidInputError("spot", False, "spot=True when max_price is given")
        if not self.spot and self.resume.on_demand_fallback:
            raise InvalidInputError("resume.on_demand_fallback", True, "a fallback only for a spot job (spot=True)")
        both = sorted(set(self.env) & set(self.secret_env))
        if both:
            raise InvalidInputError("secret_env", both, "names not also given as plain env")
        return self

    # -- derived values (the core.jobs layout) ------------------------------------------------------------------

    @property
    def resolved_checkpoint_uri(self) -> str:
        return self.checkpoint_uri or default_checkpoint_uri(self.bucket, self.name)

    @property
    def resolved_checkpoint_dir(self) -> str:
        return self.checkpoint_dir or f"{instance_job_dir(self.name)}/{CHECKPOINT_DIR}"

    @property
    def resolved_mount_point(self) -> str | None:
        if not self.data_volume_id:
            return None
        return self.mount_point or volume_mount_point(self.data_volume_id)

    @property
    def code_limit_bytes(self) -> int:
        return self.code_limit_mb * 1024 * 1024


# -- what happened to a job ------------------------------------------------------------------------------------

# The record's schema version. A record with a higher one was written by a newer trainctl: it is reported and
# left alone, never resumed or rewritten on a guess.
RECORD_VERSION = 2


class AttemptRecord(BaseModel):
    """One attempt: one instance running the job, from its launch to its end."""

    number: int = Field(ge=1, description="1 for the first launch; each resume or relaunch adds one")
    status: JobStatus = Field(default=JobStatus.PENDING, description="pending | running | interrupted | ended")
    launched_by: Literal["train-launch", "spot-watch"] = Field(
        default="train-launch", description="a user's launch, or spot-watch resuming after an interruption"
    )
    instance_id: str | None = Field(default=None, description="the instance (None until RunInstances answered)")
    instance_type: str | None = None
    availability_zone: str | None = None
    capacity_type: str | None = Field(default=None, description="spot | on-demand: what RunInstances gave")
    volume_id: str | None = Field(default=None, description="the data volume of this attempt (a move changes it)")
    created_at: datetime = Field(description="when the attempt was claimed")
    launched_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    message: str | None = Field(default=None, description="why it ended, when that needs words")
    stop_reason: StopReason | None = Field(
        default=None, description="budget | idle-gpu: cost-watch stopped it (None: stopped by a user, or not stopped)"
    )
    resumed_from: str | None = Field(default=None, description="checkpoint folder it resumed from (ckpt-…/)")
    resumed_from_seq: int | None = None
    time_lost_s: float | None = Field(
        default=None, description="from the previous attempt's end (interruption) until this one's trainer started"
    )
    capacity_refused_at: datetime | None = Field(
        default=None, description="when EC2 first refused this attempt's capacity (spot-watch retries, then moves on)"
    )
    tries: int = Field(default=0, ge=0, description="launches tried for this attempt (capacity refusals retried)")
    last_try_at: datetime | None = None


def _legacy_record(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 record (flat: one attempt's fields at the top) in today's shape."""
    fields = ("instance_id", "instance_type", "availability_zone", "capacity_type", "launched_at", "finished_at")
    attempt = {name: data.pop(name, None) for name in fields}
    attempt.update(
        number=data.get("attempt", 1),
        status=data.get("status", "pending"),
        exit_code=data.pop("exit_code", None),
        message=data.get("message"),
        volume_id=data.pop("volume_id", None),
        created_at=data.get("updated_at") or data.get("created_at"),
    )
    spec = data.get("spec")
    if isinstance(spec, dict):  # the launch's own options were in the spec then (now LaunchOptions)
        spec = {k: v for k, v in spec.items() if k not in {"wait", "wait_timeout_minutes", "terminate_when_done"}}
        if "on_demand_fallback" in spec:
            spec["resume"] = {"on_demand_fallback": bool(spec.pop("on_demand_fallback"))}
        data["spec"] = spec
    data.pop("attempt", None)
    return {**data, "version": RECORD_VERSION, "attempts": [attempt]}


class JobRecord(BaseModel):
    """`job.json`: the job's spec and every attempt, the source of truth that survives any instance.

    The current attempt is the last one; its fields read through (`record.instance_id`, …). Changes go through
    `with_status` / `with_attempt` / `with_new_attempt`, which keep to the state machine and return a new record.
    """

    version: int = Field(default=RECORD_VERSION, description="schema version of this record")
    name: str
    bucket: str
    status: JobStatus = JobStatus.PENDING
    spec: JobSpec | None = Field(default=None, description="the job as launched (None: a record of another tool)")
    attempts: list[AttemptRecord] = Field(min_length=1)
    checkpoint_uri: str | None = None
    mount_point: str | None = None
    created_at: datetime
    updated_at: datetime | None = None
    message: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        version = data.get("version", 1)
        if isinstance(version, int) and version > RECORD_VERSION:
            raise ValueError(f"record version {version} was written by a newer trainctl (this one reads up to 2)")
        return _legacy_record(dict(data)) if "attempts" not in data else data

    @property
    def current(self) -> AttemptRecord:
        return self.attempts[-1]

    @property
    def attempt(self) -> int:
        return self.current.number

    @property
    def instance_id(self) -> str | None:
        return self.current.instance_id

    @property
    def instance_type(self) -> str | None:
        return self.current.instance_type

    @property
    def availability_zone(self) -> str | None:
        return self.current.availability_zone

    @property
    def capacity_type(self) -> str | None:
        return self.current.capacity_type

    @property
    def volume_id(self) -> str | None:
        return self.current.volume_id

    @property
    def exit_code(self) -> int | None:
        return self.current.exit_code

    @property
    def launched_at(self) -> datetime | None:
        return self.current.launched_at

    @property
    def finished_at(self) -> datetime | None:
        return self.current.finished_at

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    def attempt_record(self, number: int) -> AttemptRecord | None:
        return next((a for a in self.attempts if a.number == number), None)

    def with_attempt(self, **changes: Any) -> JobRecord:
        """The current attempt's fields changed (not its status: see with_status)."""
        updated = self.current.model_copy(update=changes)
        return self.model_copy(update={"attempts": [*self.attempts[:-1], updated]})

    def with_status(self, status: JobStatus, *, message: str | None = None, **attempt: Any) -> JobRecord:
        """The job (and its current attempt) in `status`, as the state machine allows. A job-only status
        (resuming, gave-up) leaves the attempt's own status as it was. Entering pending or resuming claims a new
        attempt: that is with_new_attempt's."""
        if status in _CLAIMS and status != self.status:
            raise JobStateError(f"job {self.name}: {status.value} starts a new attempt (with_new_attempt)")
        check_transition(self.name, self.status, status)
        if status not in {JobStatus.RESUMING, JobStatus.GAVE_UP}:
            attempt["status"] = status
        if message is not None and status not in {JobStatus.RESUMING, JobStatus.GAVE_UP}:
            attempt.setdefault("message", message)
        record = self.with_attempt(**attempt) if attempt else self
        return record.model_copy(update={"status": status, "message": message if message else record.message})

    def with_new_attempt(self, attempt: AttemptRecord, status: JobStatus = JobStatus.PENDING) -> JobRecord:
        """The next attempt claimed: `pending` (a user's launch) or `resuming` (spot-watch)."""
        if attempt.number != self.attempt + 1:
            raise JobStateError(f"job {self.name}: attempt {attempt.number} cannot follow attempt {self.attempt}")
        # Strictly a transition: a second claim while one is pending or resuming would run two attempts at once.
        if status not in _CLAIMS or status not in TRANSITIONS[self.status]:
            raise JobStateError(
                f"job {self.name} cannot start attempt {attempt.number} as {status.value} from {self.status.value}"
            )
        return self.model_copy(update={"status": status, "attempts": [*self.attempts, attempt], "message": None})

    @classmethod
    def first(cls, spec: JobSpec, *, now: datetime) -> JobRecord:
        """The record of a job's first attempt, claimed now."""
        return cls(
            name=spec.name,
            bucket=spec.bucket,
            spec=spec,
            attempts=[AttemptRecord(number=1, volume_id=spec.data_volume_id, created_at=now)],
            checkpoint_uri=spec.resolved_checkpoint_uri,
            mount_point=spec.resolved_mount_point,
            created_at=now,
        )


# -- what the agent writes -------------------------------------------------------------------------------------

AgentWord = Literal["running", "succeeded", "failed", "stopped", "interrupted"]
# What the agent writes as its status (agent STATUSES) once the attempt is over; "running" is its only other word.
FINAL_AGENT_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "stopped", "interrupted"})


def _time_or_none(value: Any) -> Any:
    """A time the agent wrote that does not parse is left out, not a reason to ignore the whole document."""
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


AgentTime = Annotated[datetime | None, BeforeValidator(_time_or_none)]
# An exit code is a number the agent wrote as one; anything else ("3", true) is no exit code.
AgentInt = Annotated[
    int | None, BeforeValidator(lambda v: v if isinstance(v, int) and not isinstance(v, bool) else None)
]


class AgentStatus(BaseModel):
    """The agent's status document of one attempt (status_uri), as agent/runner.py status_document writes
    it. Unknown keys are ignored (a newer agent may write more)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    job: str | None = None
    attempt: int
    instance_id: str | None = None
    status: AgentWord
    exit_code: AgentInt = None
    reason: str | None = None
    started_at: AgentTime = None
    ended_at: AgentTime = None
    updated_at: AgentTime = None
    checkpoint_uri: str | None = None
    checkpoint_seq: AgentInt = None
    checkpoint_uploaded_at: AgentTime = None
    step: AgentInt = None  # the trainer's last step (PROGRESS_FILE); None when it writes none
    log_uri: str | None = None
    instance_action: Literal["keep", "shutdown"] | None = None
    instance_action_reason: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_AGENT_STATUSES

    @classmethod
    def parse(cls, document: Mapping[str, Any] | AgentStatus | None) -> AgentStatus | None:
        """The document as a model; None for none, or for one this version cannot read (half-written, foreign)."""
        if document is None or isinstance(document, AgentStatus):
            return document
        try:
            return cls.model_validate(dict(document))
        except ValueError:
            return None


class InterruptionRecord(BaseModel):
    """What the agent did on a spot notice (interruption_uri): when it saw it, signalled the trainer, and which
    checkpoint it uploaded and verified before the instance went."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    job: str
    instance_id: str
    attempt: int
    action: str | None = None
    notice_time: str | None = None  # as IMDS gave it
    notice_seen_at: AgentTime = None
    sigterm_sent_at: AgentTime = None
    sigkill_sent_at: AgentTime = None
    job_exited_at: AgentTime = None
    exit_code: AgentInt = None
    checkpoint_seq: AgentInt = None
    checkpoint_uploaded_at: AgentTime = None
    verified: bool = False
    verify_detail: str = ""
    recorded_at: AgentTime = None


def reconcile(record: JobRecord, agent_status: Mapping[str, Any] | AgentStatus | None) -> JobRecord | None:
    """The record once it follows the agent's final status for its attempt; None when nothing changes.

    The agent writes its status (status_uri) and may shut the instance down with Prefect gone: when it said the
    attempt ended, the record must not keep saying `running`. A status of another attempt, or a non-final one,
    changes nothing; neither does a record that already ended (its end was recorded by whoever saw it first).
    """
    agent = AgentStatus.parse(agent_status)
    if agent is None or record.status not in ACTIVE_STATUSES or not agent.final:
        return None
    if agent.attempt != record.attempt:
        return None
    return record.with_status(
        JobStatus(agent.status),
        exit_code=agent.exit_code if agent.exit_code is not None else record.exit_code,
        finished_at=agent.ended_at or record.finished_at,
    )


# -- what teardown reads of a job -----------------------------------------------------------------------------


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class TrainingState(BaseModel):
    """What the training check over SSM found on one instance (tasks/jobs.py)."""

    model_config = ConfigDict(frozen=True)

    instance_id: str
    status: Literal["running", "idle", "unknown"]
    jobs: list[str] = Field(default_factory=list)  # jobs whose pid file names a live process
    processes: list[str] = Field(default_factory=list)  # training-like command lines (python.*train, main.py)
    detail: str = ""

    @property
    def running(self) -> bool:
        return self.status == "running"


class CheckpointSet(BaseModel):
    """One checkpoint: the objects under `<checkpoint prefix>ckpt-<seq>/`. Complete iff MANIFEST.json is there."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    prefix: str  # full key prefix, ending with "/"
    seq: int
    objects: list[StoredObject]
    complete: bool

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def newest_age(self, now: datetime) -> timedelta:
        newest = max((o.last_modified for o in self.objects), default=None)
        return timedelta(0) if newest is None else max(timedelta(0), _aware(now) - _aware(newest))


class JobStorage(BaseModel):
    """A job's S3 state: its record's status, its staging objects and its checkpoints (tasks/checkpoints.py)."""

    model_config = ConfigDict(frozen=True)

    job: str
    bucket: str
    status: str | None = None  # the job record's status; None = no record
    attempt: int | None = None  # the attempt the record names (None: no record, or one without attempts)
    instance_id: str | None = None  # the instance the record names for that attempt (None: not launched yet)
    # attempt -> when its agent last wrote its status (the heartbeat, status_uri's LastModified)
    heartbeats: dict[int, datetime] = Field(default_factory=dict)
    staging_prefix: str = ""  # key prefix of the job's staging objects
    staging: list[StoredObject] = Field(default_factory=list)
    checkpoint_prefix: str = ""
    checkpoints: list[CheckpointSet] = Field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def latest_complete(self) -> int | None:
        return max((c.seq for c in self.checkpoints if c.complete), default=None)


# -- the agent's answer on the instance -------------------------------------------------------------------


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
