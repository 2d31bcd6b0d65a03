"""Launching a training job: the spec, the job record, .gitignore rules for the code package, and the scripts
the flow sends to the instance (built with core.shell: every value quoted).

The command never passes through a shell: it travels as a JSON argument list inside the agent spec (S3 → the
instance) and the agent execs it as is, so `; rm -rf /` or `$(...)` in an argument stays a literal argument.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from core import jobs
from core.errors import InvalidInputError
from core.ids import validate_availability_zone, validate_id, validate_instance_type
from core.models import Job
from core.names import NameKind, validate_name
from core.prewarm import mount_point as volume_mount_point
from core.prewarm import mount_script
from core.s3uri import parse_s3_uri, validate_bucket
from core.secrets import SecretRef, parse_secret_ref
from core.shell import argv, on_instance, quote
from core.transfer import instance_script

DEFAULT_CODE_LIMIT_MB = 200
AGENT_SCRIPT = "agent/trainctl_agent.py"
CODE_TARBALL = "code.tar.gz"
AGENT_TARBALL = "agent.tar.gz"
AGENT_SPEC = "agent-spec.json"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Variables the agent sets for the trainer (DESIGN.md section 5); a user value would silently lose.
RESERVED_ENV = frozenset(
    {"TRAINCTL_CHECKPOINT_DIR", "TRAINCTL_RESUME_FROM", "TRAINCTL_JOB", "TRAINCTL_ATTEMPT", "TRAINCTL_ROOT"}
)


class TemplateSpec(BaseModel):
    """What the instance is: the fields of the InstanceTemplate block, usable inline in a JobSpec."""

    instance_type: str
    image_id: str | None = None
    image_parameter: str | None = Field(default=None, description="SSM public parameter naming the AMI")
    subnet_id: str | None = None
    availability_zone: str | None = None
    security_group_ids: list[str] = Field(default_factory=list)
    instance_profile: str | None = None
    root_volume_gib: int | None = Field(default=None, ge=8, le=16384)
    extra_tags: dict[str, str] = Field(default_factory=dict)

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

    name: str
    bucket: str = Field(description="bucket holding the job record, staging, logs (and default checkpoints)")
    template: str | TemplateSpec = Field(description="an InstanceTemplate block name, or the fields inline")
    command: list[str] = Field(description="the trainer's argument list; never passed through a shell")
    code_dir: str = "."
    env: dict[str, str] = Field(
        default_factory=dict, description="plain variables for the trainer (stored as given: no secrets here)"
    )
    secret_env: dict[str, SecretRef] = Field(
        default_factory=dict,
        description="variables resolved on the instance by the agent from a reference (ssm:/path, "
        "secretsmanager:<id>[#json-key]); job.json, agent-spec.json and logs hold the reference, never the value",
    )
    spot: bool = True
    max_price: str | None = Field(default=None, description="spot max price in USD/hour; default: on-demand price")
    on_demand_fallback: bool = False
    data_volume_id: str | None = None
    mount_point: str | None = Field(default=None, description="where the volume appears; default /mnt/trainctl/<vol>")
    filesystem: Literal["xfs", "ext4"] = "xfs"
    move_volume_if_needed: bool = Field(default=False, description="snapshot+restore the volume into the AZ")
    checkpoint_dir: str | None = Field(default=None, description="on the instance; default the job's folder")
    checkpoint_uri: str | None = Field(default=None, description="s3://…; default the job's checkpoints prefix")
    max_runtime_minutes: int | None = Field(default=None, ge=1)
    sync_interval_s: int = Field(default=300, ge=1)
    code_limit_mb: int = Field(default=DEFAULT_CODE_LIMIT_MB, ge=1)
    wait: bool = False
    wait_timeout_minutes: int = Field(default=24 * 60, ge=1)
    terminate_when_done: bool = Field(default=True, description="with wait: terminate the instance at the end")
    keep_instance: bool = Field(
        default=False,
        description="keep the instance running after the job ends, e.g. to inspect it; you then end it yourself "
        "or with teardown (by default the agent shuts it down, which terminates it, once the final checkpoint, log "
        "and status are in S3)",
    )
    online_timeout_s: int = Field(default=600, ge=10)
    account: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return jobs.validate_job_name(value)

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

    @model_validator(mode="after")
    def _volume(self) -> JobSpec:
        if self.data_volume_id:
            validate_id("volume", self.data_volume_id, field="data_volume_id")
        elif self.mount_point:
            raise InvalidInputError("mount_point", self.mount_point, "a mount point only together with data_volume_id")
        if not self.spot and (self.max_price or self.on_demand_fallback):
            raise InvalidInputError("spot", False, "spot=True when max_price or on_demand_fallback is given")
        both = sorted(set(self.env) & set(self.secret_env))
        if both:
            raise InvalidInputError("secret_env", both, "names not also given as plain env")
        return self

    # -- derived values (the core.jobs layout) ------------------------------------------------------------------

    @property
    def resolved_checkpoint_uri(self) -> str:
        return self.checkpoint_uri or jobs.default_checkpoint_uri(self.bucket, self.name)

    @property
    def resolved_checkpoint_dir(self) -> str:
        return self.checkpoint_dir or f"{jobs.instance_job_dir(self.name)}/{jobs.CHECKPOINT_DIR}"

    @property
    def resolved_mount_point(self) -> str | None:
        if not self.data_volume_id:
            return None
        return self.mount_point or volume_mount_point(self.data_volume_id)

    @property
    def code_limit_bytes(self) -> int:
        return self.code_limit_mb * 1024 * 1024


class JobRecord(Job):
    """`job.json`: core.models.Job plus what a resume needs (where it ran, on what capacity, with what spec)."""

    bucket: str
    capacity_type: str | None = None  # "spot" | "on-demand": what RunInstances gave, not what was asked
    instance_type: str | None = None
    availability_zone: str | None = None
    mount_point: str | None = None
    launched_at: datetime | None = None
    finished_at: datetime | None = None
    message: str | None = None
    spec: dict[str, Any] = Field(default_factory=dict)


def launch_key(job: str, attempt: int) -> str:
    """The idempotency key of one attempt: a retried launch of it finds its instance instead of making another."""
    return f"train:{job}:attempt-{attempt}"


def next_attempt(previous: JobRecord | None) -> int:
    return 1 if previous is None else previous.attempt + 1


def agent_spec(spec: JobSpec, *, attempt: int, instance_id: str) -> dict[str, Any]:
    """The document the agent runs from (its contract). Instance paths are as on AWS; the agent puts them
    under $TRAINCTL_ROOT itself. `command` stays an argument list end to end."""
    env = dict(spec.env)
    if spec.resolved_mount_point:
        env.setdefault("TRAINCTL_DATA_DIR", spec.resolved_mount_point)
    return {
        "job": spec.name,
        "attempt": attempt,
        "instance_id": instance_id,
        "bucket": spec.bucket,
        "command": list(spec.command),
        "env": env,
        "secret_env": dict(spec.secret_env),  # references: the agent resolves them into the trainer's environment
        "workdir": f"{jobs.instance_job_dir(spec.name)}/{jobs.CODE_DIR}",
        "checkpoint_dir": spec.resolved_checkpoint_dir,
        "checkpoint_uri": spec.resolved_checkpoint_uri,
        "sync_interval_s": spec.sync_interval_s,
        "imds_poll_s": 2,  # SIGTERM within 6 s of a notice needs margin beyond the poll period
        "margin_s": 10,
        "max_runtime_s": spec.max_runtime_minutes * 60 if spec.max_runtime_minutes else None,
        "keep_instance": spec.keep_instance,
    }


# -- scripts sent over SSM --------------------------------------------------------------------------------------


def _job_dir(job: str) -> str:
    return on_instance(jobs.instance_job_dir(job))


def data_mount_script(volume_id: str, device: str, filesystem: str, at: str | None) -> list[str]:
    """core.prewarm's mount (device by volume ID, mkfs only when blank, idempotent), plus a link at the job's
    chosen mount point when it differs from /mnt/trainctl/<vol>."""
    script = mount_script(volume_id, device, filesystem)
    if at and at != volume_mount_point(volume_id):
        script += [
            f"link={on_instance(at)}",
            'mkdir -p "$(dirname "$link")"',
            # An empty folder there (an AMI's, the sandbox's) gives way; one with files is never touched.
            'if [ -d "$link" ] && [ ! -L "$link" ]; then rmdir "$link" 2>/dev/null || true; fi',
            'if [ -e "$link" ] && [ ! -L "$link" ]; then echo "$link exists and is not empty" >&2; exit 21; fi',
            'ln -sfn "$mnt" "$link"',
            'echo "linked $link -> $mnt"',
        ]
    return script


def ship_script(job: str, staging: str) -> list[str]:
    """Download code, agent and agent spec from the staging prefix and unpack them into the job's folder: only
    those three objects, and archives whose members are all plain files or folders with names that stay inside
    (core.paths' rule, the instance helper's `unpack`), checked before anything is extracted."""
    names = " ".join(f"--include {quote(name)}" for name in (CODE_TARBALL, AGENT_TARBALL, AGENT_SPEC))
    return instance_script(
        f"job={_job_dir(job)}",
        f"src={quote(staging)}",
        'mkdir -p "$job"',
        'rm -rf "$job/code" "$job/agent"',
        'mkdir -p "$job/code"',
        # One CLI call for the three objects (each `aws` start costs about a second); other keys stay in S3.
        f'aws s3 cp --only-show-errors --recursive "$src" "$job/" --exclude "*" {names}',
        f'h unpack "$job/{CODE_TARBALL}" "$job/code"',
        f'h unpack "$job/{AGENT_TARBALL}" "$job"',
        f'test -f "$job/{AGENT_SCRIPT}"',
        'echo "shipped $(find "$job/code" -type f | wc -l) files to $job/code"',
    )


def start_agent_script(job: str) -> list[str]:
    """`agent run` detaches itself; the command returns as soon as the job is started."""
    return [
        "set -eu",
        f"job={_job_dir(job)}",
        f'python3 "$job/{AGENT_SCRIPT}" run --spec "$job/{AGENT_SPEC}"',
    ]


def _agent_line(job_dir: str, job: str, verb: str, options: tuple[object, ...]) -> str:
    """The agent's command line; `job_dir` and `job` are shell words (a quoted value or a quoted expansion)."""
    return f"python3 {job_dir}/{AGENT_SCRIPT} {verb} --job {job} {argv(options)}".rstrip()


def agent_command_script(job: str, verb: Literal["poll", "stop"], *options: object) -> list[str]:
    """Run the job's agent on the instance: `trainctl_agent.py <verb> --job <job> <options>`, every value quoted.
    Its answer is one JSON line (the agent's `poll` document). When the agent was never shipped (a launch killed
    before its ship step), the line is {"job": <job>, "installed": false} instead of an error."""
    missing = json.dumps({"job": job, "installed": False})
    return [
        "set -eu",
        f"job={_job_dir(job)}",
        f'if [ ! -f "$job/{AGENT_SCRIPT}" ]; then echo {quote(missing)}; exit 0; fi',
        "exec " + _agent_line('"$job"', quote(job), verb, options),
    ]


def every_agent_poll_script() -> list[str]:
    """Each job's agent on the instance asked for its state (no log): a line `agent <job> <poll JSON>` per job
    folder holding an agent (one without never ran a trainer of ours); nothing after the name if the agent failed."""
    poll = _agent_line('"$d"', '"$j"', "poll", ("--limit", 0))
    return [
        f"jobs_dir={on_instance(jobs.INSTANCE_JOBS_DIR)}",
        'for d in "$jobs_dir"/*; do',
        f'  [ -f "$d/{AGENT_SCRIPT}" ] || continue',
        '  j=$(basename "$d")',
        f'  echo "agent $j $({poll} 2>/dev/null || true)"',
        "done",
    ]


# -- .gitignore -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IgnoreRule:
    base: str  # folder of the .gitignore, relative to the code dir ("" = the root)
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool


def _glob_to_regex(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("/.*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape("["))
                i += 1
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end + 1
        elif pattern[i] == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def parse_gitignore(text: str, base: str = "") -> list[IgnoreRule]:
    """The rules of one .gitignore (git's syntax: comments, `!` negation, trailing `/`, anchoring, `**`)."""
    rules: list[IgnoreRule] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate or line.startswith("\\"):
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line
        line = line.lstrip("/")
        body = _glob_to_regex(line)
        regex = re.compile(("^" if anchored else "^(?:.*/)?") + body + "$")
        rules.append(IgnoreRule(base=base.strip("/"), regex=regex, negate=negate, dir_only=dir_only))
    return rules


@dataclass
class IgnoreMatcher:
    """Rules in the order git reads them (root first, deeper .gitignore files later); the last match wins."""

    rules: list[IgnoreRule] = field(default_factory=list)
    always: tuple[str, ...] = (".git", "__pycache__", ".trainctl-cache")

    def add(self, rules: Iterable[IgnoreRule]) -> None:
        self.rules.extend(rules)

    def _match(self, rel: str, is_dir: bool) -> bool:
        ignored = False
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.base:
                if not rel.startswith(rule.base + "/"):
                    continue
                sub = rel[len(rule.base) + 1 :]
            else:
                sub = rel
            if rule.regex.match(sub):
                ignored = not rule.negate
        return ignored

    def ignored(self, rel: str, *, is_dir: bool) -> bool:
        """Is `rel` (a path relative to the code dir, with '/') left out? A file in an ignored folder is."""
        parts = rel.strip("/").split("/")
        if any(fnmatch.fnmatchcase(p, pat) for p in parts for pat in self.always):
            return True
        for depth in range(1, len(parts)):
            if self._match("/".join(parts[:depth]), True):
                return True
        return self._match("/".join(parts), is_dir)


def gitignore_matcher(files: Mapping[str, str]) -> IgnoreMatcher:
    """A matcher from {folder relative to the code dir: .gitignore text}, applied root first."""
    matcher = IgnoreMatcher()
    for base in sorted(files, key=lambda b: (b.count("/") if b else -1, b)):
        matcher.add(parse_gitignore(files[base], base))
    return matcher
