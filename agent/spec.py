"""The spec an agent runs from (JSON, written by the train-launch flow: core/launch.py agent_spec), validated.

    job              str    job name (lowercase letters, digits, dashes; 1-63)                    required
    attempt          int    attempt number >= 1                                                   required
    bucket           str    the job's bucket (logs, status, interruption records)                  required
    command          [str]  argv, run WITHOUT a shell, exactly as given                            required
    env              {str: str}  extra environment for the command                               default {}
    secret_env       {str: str}  NAME -> `ssm:<parameter name or ARN>` or                        default {}
                            `secretsmanager:<secret name or ARN>[#json-key]`: read at start (GetParameter with
                            decryption, GetSecretValue) and put in the command's environment only — never in a
                            file, a log or S3. One that cannot be read fails the attempt before the command runs
                            (status `failed`, exit code 126, the reason naming the reference). The instance
                            profile needs ssm:GetParameter (+ kms:Decrypt) / secretsmanager:GetSecretValue.
    instance_id      str    default: read from IMDS (meta-data/instance-id)
    workdir          str    instance path of the code (cwd of the command)     default <job dir>/code
    checkpoint_dir   str    instance path, TRAINCTL_CHECKPOINT_DIR              default <job dir>/checkpoints
    checkpoint_uri   str    s3://bucket/prefix/    default s3://<bucket>/trainctl/jobs/<job>/checkpoints/
    sync_interval_s  number periodic checkpoint/log/status upload                             default 300
    heartbeat_s      number rewrite the status in S3 (its LastModified: teardown's heartbeat)     default 60
    imds_poll_s      number IMDS poll period for spot notices / rebalance                         default 2
    margin_s         number on a notice, SIGKILL the trainer at notice time - margin              default 20
    max_runtime_s    number SIGTERM (then SIGKILL after 30 s) the command after this long   default none
    keep_instance    bool   leave the instance running when the job ends (agent/runner.py)     default false
    data_cache       object {uri, mount, filesystem, workers}: copy the dataset onto the instance store before
                            the command starts; it gets TRAINCTL_DATA_DIR=mount (agent/data_cache.py) default none

Instance paths (workdir, checkpoint_dir, the job dir) are AWS paths: the agent puts them under $TRAINCTL_ROOT
(empty on AWS, the instance's folder in the sandbox), unless a path already starts with that root. The --spec
argument is a real path (the flow's command line expands $TRAINCTL_ROOT itself).

What the command gets: the agent's environment + spec env + resolved secret_env + TRAINCTL_JOB, TRAINCTL_ATTEMPT,
TRAINCTL_CHECKPOINT_DIR, TRAINCTL_RESUME_FROM (the restored checkpoint dir, or "" when there was none). Its
contract: SIGTERM = save a checkpoint now and exit; exit 0 = done.

The secret reference grammar is a copy of core/secrets.py (tests/agent/test_layout.py compares); agent/secret_env.py
reads the values.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data_cache import DataCache
from .errors import SpecError
from .layout import CHECKPOINT_DIR, CODE_DIR, default_checkpoint_uri, instance_job_dir, split_s3_uri, validate_job_name

SSM_NAME = re.compile(r"^/?[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)*(?::[A-Za-z0-9_.\-]{1,100})?$")
SSM_ARN = re.compile(r"^arn:aws[a-z\-]*:ssm:[a-z0-9\-]+:\d{12}:parameter/[A-Za-z0-9_.\-/]+(?::[A-Za-z0-9_.\-]+)?$")
SECRET_NAME = re.compile(r"^[A-Za-z0-9/_+=.@\-]{1,512}$")
SECRET_ARN = re.compile(r"^arn:aws[a-z\-]*:secretsmanager:[a-z0-9\-]+:\d{12}:secret:[A-Za-z0-9/_+=.@\-]+$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PERIODS = ("sync_interval_s", "heartbeat_s", "imds_poll_s", "margin_s", "max_runtime_s")


def parse_secret_ref(ref: str) -> tuple[str, str, str | None]:
    """`ssm:<name or ARN>` or `secretsmanager:<name or ARN>[#json-key]` -> (service, id, json key)."""
    kind, sep, rest = ref.partition(":") if isinstance(ref, str) else ("", "", "")
    if sep and kind == "ssm" and len(rest) <= 2048 and (SSM_NAME.match(rest) or SSM_ARN.match(rest)):
        return kind, rest, None
    if sep and kind == "secretsmanager":
        secret, hash_, key = rest.partition("#")
        key_ok = not hash_ or (key and key.isprintable())
        if key_ok and (SECRET_NAME.match(secret) or SECRET_ARN.match(secret)):
            return kind, secret, key if hash_ else None
    raise SpecError("a secret reference must be ssm:/path/to/param or secretsmanager:<secret name or ARN>[#json-key]")


@dataclass
class AgentSpec:
    job: str
    attempt: int
    bucket: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, str] = field(default_factory=dict)  # NAME -> reference; values are never kept here
    instance_id: str | None = None
    workdir: str = ""
    checkpoint_dir: str = ""
    checkpoint_uri: str = ""
    sync_interval_s: float = 300.0
    # The sweep takes an instance whose agent's status is older than its timeout (15 min) for an orphan.
    heartbeat_s: float = 60.0
    # 2 s, not the 5 s AWS suggests: the trainer must get SIGTERM within 6 s of a notice, load included.
    imds_poll_s: float = 2.0
    margin_s: float = 20.0
    max_runtime_s: float | None = None
    keep_instance: bool = False  # True: the instance keeps running after the job ends
    data_cache: DataCache | None = None  # local-cache: the dataset copied onto the instance store first

    @classmethod
    def from_dict(cls, data: Any) -> AgentSpec:
        _check_fields(data, set(cls.__dataclass_fields__))
        job = validate_job_name(data["job"])
        attempt = data["attempt"]
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise SpecError(f"attempt: {attempt!r} is not an integer >= 1")
        bucket = data["bucket"]
        if not isinstance(bucket, str) or not bucket:
            raise SpecError("bucket: a bucket name is required")
        command = data["command"]
        if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
            raise SpecError("command: a non-empty list of strings (argv, run without a shell)")
        env, secret_env = _environment(data)
        job_dir = instance_job_dir(job)
        spec = cls(
            job=job,
            attempt=attempt,
            bucket=bucket,
            command=list(command),
            env=env,
            secret_env=secret_env,
            instance_id=data.get("instance_id") or None,
            workdir=data.get("workdir") or f"{job_dir}/{CODE_DIR}",
            checkpoint_dir=data.get("checkpoint_dir") or f"{job_dir}/{CHECKPOINT_DIR}",
            checkpoint_uri=data.get("checkpoint_uri") or default_checkpoint_uri(bucket, job),
        )
        for name in ("workdir", "checkpoint_dir"):
            if not str(getattr(spec, name)).startswith("/"):
                raise SpecError(f"{name}: an absolute instance path is required")
        split_s3_uri(spec.checkpoint_uri)
        keep_instance = data.get("keep_instance", False)
        if not isinstance(keep_instance, bool):
            raise SpecError(f"keep_instance: {keep_instance!r} is not true or false")
        spec.keep_instance = keep_instance
        if data.get("data_cache") is not None:
            spec.data_cache = DataCache.from_dict(data["data_cache"])
        _set_periods(spec, data)
        return spec

    @classmethod
    def load(cls, path: str) -> AgentSpec:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SpecError(f"cannot read the spec {path}: {exc}") from exc
        return cls.from_dict(data)


def _check_fields(data: Any, known: set[str]) -> None:
    """An object with the required fields and no unknown one."""
    if not isinstance(data, dict):
        raise SpecError("the spec must be a JSON object")
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"unknown spec fields: {unknown}")
    missing = [k for k in ("job", "attempt", "bucket", "command") if k not in data]
    if missing:
        raise SpecError(f"missing spec fields: {missing}")


def _environment(data: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(env, secret_env): string values, and variable names mapped to secret references."""
    env = data.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise SpecError("env: an object of string values")
    secret_env = data.get("secret_env") or {}
    if not isinstance(secret_env, dict) or not all(isinstance(v, str) for v in secret_env.values()):
        raise SpecError("secret_env: an object of secret references")
    for name, ref in secret_env.items():
        if not isinstance(name, str) or not ENV_NAME.match(name):
            raise SpecError(f"secret_env: {name!r} is not a variable name (letters, digits, '_')")
        parse_secret_ref(ref)
    return dict(env), dict(secret_env)


def _set_periods(spec: AgentSpec, data: dict[str, Any]) -> None:
    """The periods and deadlines (seconds): numbers >= 0, and the three polling periods > 0."""
    for name in PERIODS:
        if name not in data or data[name] is None:
            continue
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise SpecError(f"{name}: {value!r} is not a number >= 0")
        setattr(spec, name, float(value))
    if spec.imds_poll_s <= 0 or spec.sync_interval_s <= 0 or spec.heartbeat_s <= 0:
        raise SpecError("sync_interval_s, heartbeat_s and imds_poll_s must be > 0")
