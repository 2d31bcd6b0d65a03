#!/usr/bin/env python3
"""trainctl agent: the on-instance job runner and spot watcher (Python standard library only, python3 >= 3.9).

Shipped to the instance as files by the train-launch flow and run with the instance's `python3`; it imports
nothing of trainctl's (DESIGN.md section 5; the layout below is a copy of core/jobs.py, checked by
tests/agent/test_layout.py).

Command line
------------
    python3 trainctl_agent.py run --spec PATH [--foreground]
        Validate the spec, detach (double fork + setsid, stdin /dev/null, stdout/stderr appended to agent.log),
        write agent.pid, print {"job", "agent_pid", "job_dir", "agent_log"} as JSON and exit 0. The detached
        agent restores the latest checkpoint, runs the command, syncs, watches IMDS, and exits when the job ends.
        Exit 2 on an invalid spec, 1 when an agent of the job is already running. --foreground: no detaching.
    python3 trainctl_agent.py status --job JOB
        Print the job's local state as JSON (status document, pids and whether they live, exit code).
    python3 trainctl_agent.py poll --job JOB [--offset N] [--limit L]
        One JSON line: the local state (as `status`, plus "installed": true) and the job log from byte `offset`
        (at most `limit` bytes, default 12000): "chunk", "offset" (where the next poll starts), "size". The one
        reader of the job's on-instance state for the flows, `train logs` and teardown's training check.
    python3 trainctl_agent.py stop --job JOB [--grace SECONDS] [--keep-instance]
        Ask the agent to stop the job: the trainer's process group gets SIGTERM, SIGKILL after the grace
        (default 30 s), then the checkpoint and log are flushed to S3 and the status becomes `stopped`. When no
        agent is alive, does that itself from the agent's copy of the spec. Prints the final state as `poll` does
        (one JSON line, no log). --keep-instance: the instance is not shut down after this stop (see "When the job
        ends"); without it, the answer may be lost as the instance goes down (the status in S3 says what happened).

The spec (JSON object, written by the train-launch flow; `AgentSpec` below)
--------------------------------------------------------------------------
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
    keep_instance    bool   leave the instance running when the job ends (see below)           default false

Instance paths (workdir, checkpoint_dir, the job dir) are AWS paths: the agent puts them under $TRAINCTL_ROOT
(empty on AWS, the instance's folder in the sandbox), unless a path already starts with that root. The --spec
argument is a real path (the flow's command line expands $TRAINCTL_ROOT itself).

What the command gets: the agent's environment + spec env + resolved secret_env + TRAINCTL_JOB, TRAINCTL_ATTEMPT,
TRAINCTL_CHECKPOINT_DIR, TRAINCTL_RESUME_FROM (the restored checkpoint dir, or "" when there was none). Its
contract: SIGTERM = save a checkpoint now and exit; exit 0 = done.

Files the agent writes in the job dir besides the core layout: `agent-spec.json` (its copy of the spec, used by
`stop` when the agent is gone), `status.json` (the last status document), `stop_request.json` (from `stop`), and
a hard-link snapshot of the checkpoint dir next to it (`.<name>.trainctl-snapshot`) while uploading.

When the job ends (exit 0, non-zero, stopped, or it could not start), the agent uploads the final checkpoint and
the log, writes the final status, and then shuts the instance down (`shutdown -h now`, else `poweroff`, else
`systemctl poweroff`): the flow launches training instances with InstanceInitiatedShutdownBehavior=terminate and
the data volume with DeleteOnTermination off, so nothing bills after the job and nothing persistent is lost, with
or without Prefect. The instance is kept (and the status says why in `instance_action_reason`) when the spec or
the stop request says keep_instance, or when the final checkpoint, the log or the status could not be uploaded:
the instance's disk then holds the only copy, for the sweep's heartbeat rule or a human. After a spot notice the
agent never shuts down: AWS ends the instance at the notice time, and a shutdown of our own would replace the
StateReason (Server.SpotInstanceTermination) that spot-watch reads. The decision is written to the job log.

Checkpoint format in S3: `<checkpoint_uri>/ckpt-<seq:06d>/<relative path>` for each file, then
`ckpt-<seq>/MANIFEST.json` = {"seq", "job", "attempt", "instance_id", "created_at", "files": [{"path", "size",
"sha256"}]}, then `LATEST.json` = {"seq", "prefix"}. Files named `*.tmp` (a trainer's in-flight temporaries)
are not part of a checkpoint.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# -- the job layout: a copy of core/jobs.py (the agent cannot import it; tests/agent/test_layout.py compares) ---
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
# Agent-private files in the job dir (not part of the shared contract).
SPEC_COPY_FILE = "agent-spec.json"
STATUS_FILE = "status.json"
STOP_REQUEST_FILE = "stop_request.json"

STATUSES = ("running", "succeeded", "failed", "interrupted", "stopped")
MiB = 1024 * 1024
MULTIPART_THRESHOLD = 64 * MiB
PART_SIZE = 64 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
IMDS_DEFAULT = "http://169.254.169.254"
DEFAULT_STOP_GRACE = 30.0
# Tried in order until one succeeds: what a stock AMI has (systemd's shutdown, then its aliases).
SHUTDOWN_COMMANDS = (("shutdown", "-h", "now"), ("poweroff",), ("systemctl", "poweroff"))

log = logging.getLogger("trainctl-agent")


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


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")  # noqa: UP017 (python 3.9 on AL2023)


def parse_time(value: str) -> float | None:
    """An ISO-8601 time (IMDS spells UTC as `Z`, which python 3.9's fromisoformat refuses) -> epoch seconds."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)  # noqa: UP017
    return parsed.timestamp()


def write_atomic(path: Path, data: bytes) -> None:
    """Readers (status, stop, tests) never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def exit_status(returncode: int) -> int:
    """A signal death as a shell reports it (128 + signal)."""
    return 128 - returncode if returncode < 0 else returncode


# -- the spec ----------------------------------------------------------------------------------------------------
class SpecError(ValueError):
    pass


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

    @classmethod
    def from_dict(cls, data: Any) -> AgentSpec:
        if not isinstance(data, dict):
            raise SpecError("the spec must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown spec fields: {unknown}")
        missing = [k for k in ("job", "attempt", "bucket", "command") if k not in data]
        if missing:
            raise SpecError(f"missing spec fields: {missing}")
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
        job_dir = instance_job_dir(job)
        spec = cls(
            job=job,
            attempt=attempt,
            bucket=bucket,
            command=list(command),
            env=dict(env),
            secret_env=dict(secret_env),
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
        for name in ("sync_interval_s", "heartbeat_s", "imds_poll_s", "margin_s", "max_runtime_s"):
            if name not in data or data[name] is None:
                continue
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise SpecError(f"{name}: {value!r} is not a number >= 0")
            setattr(spec, name, float(value))
        if spec.imds_poll_s <= 0 or spec.sync_interval_s <= 0 or spec.heartbeat_s <= 0:
            raise SpecError("sync_interval_s, heartbeat_s and imds_poll_s must be > 0")
        return spec

    @classmethod
    def load(cls, path: str) -> AgentSpec:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SpecError(f"cannot read the spec {path}: {exc}") from exc
        return cls.from_dict(data)


# -- IMDSv2 --------------------------------------------------------------------------------------------------------
class Imds:
    """IMDSv2 (token first). The sandbox's endpoint has a path (`http://h:p/_imds/i-x/`): paths are joined to it."""

    TOKEN_TTL = 21600

    def __init__(self, endpoint: str | None = None, *, timeout: float = 2.0) -> None:
        base = endpoint or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS_DEFAULT
        self.base = base.rstrip("/") + "/"
        self.timeout = timeout
        self._token: str | None = None
        self._token_expiry = 0.0
        self._lock = threading.Lock()
        # Never through a proxy: the metadata service is link-local.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def url(self, path: str) -> str:
        return self.base + path.lstrip("/")

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() > self._token_expiry - 60:
                request = urllib.request.Request(  # noqa: S310 (http(s) endpoints only)
                    self.url("latest/api/token"),
                    method="PUT",
                    headers={"X-aws-ec2-metadata-token-ttl-seconds": str(self.TOKEN_TTL)},
                )
                with self._opener.open(request, timeout=self.timeout) as answer:
                    self._token = answer.read().decode().strip()
                self._token_expiry = time.monotonic() + self.TOKEN_TTL
            return self._token

    def get(self, path: str) -> str | None:
        """GET latest/<path>; None on 404 (no such item, e.g. no spot notice)."""
        for attempt in range(2):
            request = urllib.request.Request(  # noqa: S310 (http(s) endpoints only)
                self.url("latest/" + path.lstrip("/")), headers={"X-aws-ec2-metadata-token": self.token()}
            )
            try:
                with self._opener.open(request, timeout=self.timeout) as answer:
                    return str(answer.read().decode())
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                if exc.code == 401 and attempt == 0:  # token expired or the service restarted: a new one
                    with self._lock:
                        self._token = None
                    continue
                raise
        return None


# -- credentials -------------------------------------------------------------------------------------------------
@dataclass
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None
    expires_at: float | None = None  # epoch seconds


class CredentialProvider:
    """Environment variables first, else the instance profile's role credentials from IMDSv2 (refreshed)."""

    REFRESH_BEFORE = 300.0

    def __init__(self, imds: Imds | None = None, static: Credentials | None = None) -> None:
        self._imds = imds
        self._static = static
        self._cached: Credentials | None = None
        self._lock = threading.Lock()

    def get(self) -> Credentials:
        if self._static is not None:
            return self._static
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            return Credentials(key, secret, os.environ.get("AWS_SESSION_TOKEN") or None)
        with self._lock:
            cached = self._cached
            fresh = cached is not None and (
                cached.expires_at is None or cached.expires_at - time.time() > self.REFRESH_BEFORE
            )
            if not fresh:
                self._cached = self._from_imds()
            assert self._cached is not None
            return self._cached

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None

    def _from_imds(self) -> Credentials:
        imds = self._imds or Imds()
        roles = imds.get("meta-data/iam/security-credentials/")
        role = (roles or "").strip().splitlines()[0:1]
        if not role:
            raise S3Error(0, "NoCredentials", "no AWS_ACCESS_KEY_ID in the environment and no instance profile")
        document = imds.get(f"meta-data/iam/security-credentials/{role[0]}")
        data = json.loads(document or "{}")
        if data.get("Code", "Success") != "Success":
            raise S3Error(0, "NoCredentials", f"instance profile credentials: {data.get('Code')}")
        return Credentials(
            data["AccessKeyId"],
            data["SecretAccessKey"],
            data.get("Token"),
            parse_time(str(data.get("Expiration", ""))),
        )


# -- SigV4 ---------------------------------------------------------------------------------------------------------
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _quote(value: str, safe: str = "-_.~") -> str:
    """SigV4 URI encoding: every byte but unreserved characters, UTF-8, space as %20."""
    return urllib.parse.quote(value, safe=safe)


def canonical_query(query: dict[str, str]) -> str:
    return "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def sigv4_authorization(
    *,
    method: str,
    canonical_uri: str,
    query: dict[str, str],
    headers: dict[str, str],
    payload_sha256: str,
    credentials: Credentials,
    region: str,
    service: str,
    amz_date: str,
) -> str:
    """The Authorization header value. `headers` (lower-case names) are all signed; they must include host,
    x-amz-date and, for S3, x-amz-content-sha256. `canonical_uri` is the path as sent (already URI-encoded)."""
    names = sorted(headers)
    canonical_headers = "".join(f"{n}:{' '.join(str(headers[n]).split())}\n" for n in names)
    signed = ";".join(names)
    canonical = "\n".join([method, canonical_uri, canonical_query(query), canonical_headers, signed, payload_sha256])
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()])
    key = _hmac(("AWS4" + credentials.secret_key).encode("utf-8"), amz_date[:8])
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    return (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )


# -- S3 ------------------------------------------------------------------------------------------------------------
class S3Error(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"S3 {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect from S3 means a wrong region/endpoint; following it would break the signature."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class S3Object:
    key: str
    size: int
    etag: str = ""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child_text(elem: ET.Element, name: str) -> str:
    for child in elem:
        if _local(child.tag) == name:
            return child.text or ""
    return ""


_RETRY_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
}


class S3Client:
    """A small S3 client: PUT/GET/HEAD object, ListObjectsV2, multipart upload; SigV4-signed; retried."""

    def __init__(
        self,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        credentials: CredentialProvider | None = None,
        part_size: int = PART_SIZE,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        attempts: int = 5,
        backoff: float = 0.25,
        timeout: float = 60.0,
    ) -> None:
        if endpoint_url is None:
            endpoint_url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
        self.endpoint = endpoint_url.rstrip("/")
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.credentials = credentials or CredentialProvider()
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirect())
        self._bucket_regions: dict[str, str] = {}  # learnt from x-amz-bucket-region when a bucket lives elsewhere

    def region_of(self, bucket: str) -> str:
        return self._bucket_regions.get(bucket, self.region)

    # -- addressing and signing --------------------------------------------------------------------------------
    def _target(self, bucket: str, key: str) -> tuple[str, str, str]:
        """(scheme://host, host, path): path style on a custom endpoint, virtual-host style on AWS."""
        quoted = _quote(key, safe="/-_.~")
        if self.endpoint:
            parts = urllib.parse.urlsplit(self.endpoint)
            base_path = parts.path.rstrip("/")
            path = f"{base_path}/{_quote(bucket)}" + (f"/{quoted}" if key else "")
            return f"{parts.scheme}://{parts.netloc}", parts.netloc, path
        if "." in bucket:  # a dotted bucket breaks the wildcard certificate: path style on the regional host
            host = f"s3.{self.region_of(bucket)}.amazonaws.com"
            return f"https://{host}", host, f"/{bucket}/{quoted}" if key else f"/{bucket}"
        host = f"{bucket}.s3.{self.region_of(bucket)}.amazonaws.com"
        return f"https://{host}", host, f"/{quoted}"

    def _request(
        self,
        method: str,
        bucket: str,
        key: str = "",
        *,
        query: dict[str, str] | None = None,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> Any:
        """Send one signed request, retrying 5xx/throttling/connection errors with backoff. Returns the open
        response when `stream`, else (status, headers, body). Raises S3Error (404 included)."""
        query = dict(query or {})
        payload_sha = hashlib.sha256(body).hexdigest()
        last: Exception | None = None
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(min(8.0, self.backoff * 2**attempt) * (0.5 + random.random()))  # jittered exponential
            origin, host, path = self._target(bucket, key)
            creds = self.credentials.get()
            amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            signed = {k.lower(): v for k, v in (headers or {}).items()}
            signed.update({"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": payload_sha})
            if method in ("PUT", "POST"):
                # Without a content type urllib sends a form type, and a server may parse the body as a form.
                signed.setdefault("content-type", "application/octet-stream")
            if creds.token:
                signed["x-amz-security-token"] = creds.token
            auth = sigv4_authorization(
                method=method,
                canonical_uri=path,
                query=query,
                headers=signed,
                payload_sha256=payload_sha,
                credentials=creds,
                region=self.region_of(bucket),
                service="s3",
                amz_date=amz_date,
            )
            url = origin + path + ("?" + canonical_query(query) if query else "")
            send = dict(signed)
            send["authorization"] = auth
            request = urllib.request.Request(  # noqa: S310 (http(s) endpoints only)
                url, data=body if method in ("PUT", "POST") else None, method=method, headers=send
            )
            try:
                answer = self._opener.open(request, timeout=self.timeout)
            except urllib.error.HTTPError as exc:
                error_body = b"" if method == "HEAD" else exc.read()
                code, message = _error_of(error_body, exc.code)
                err = S3Error(exc.code, code, message)
                elsewhere = exc.headers.get("x-amz-bucket-region") if exc.headers else None
                if elsewhere and elsewhere != self.region_of(bucket) and attempt == 0:
                    # A bucket in another region (301 / AuthorizationHeaderMalformed): sign for its region.
                    log.info("bucket %s is in %s", bucket, elsewhere)
                    self._bucket_regions[bucket] = elsewhere
                    last = err
                    continue
                if exc.code >= 500 or exc.code == 429 or code in _RETRY_CODES:
                    last = err
                    continue
                if code in ("ExpiredToken", "InvalidToken", "TokenRefreshRequired") and attempt == 0:
                    self.credentials.invalidate()
                    last = err
                    continue
                raise err from None
            except (
                OSError,
                http.client.HTTPException,
            ) as exc:  # URLError, resets, socket.timeout (not TimeoutError in 3.9)
                last = exc
                continue
            if stream:
                return answer
            with answer:
                data = answer.read()
            if method == "POST" and b"<Error>" in data[:512]:  # CompleteMultipartUpload fails inside a 200
                code, message = _error_of(data, 200)
                last = S3Error(200, code, message)
                if code in _RETRY_CODES:
                    continue
                raise last
            return answer.status, answer.headers, data
        if isinstance(last, S3Error):
            raise last
        raise S3Error(0, "RequestFailed", f"{method} s3://{bucket}/{key} failed {self.attempts} times: {last!r}")

    # -- objects -----------------------------------------------------------------------------------------------
    def put_object(self, bucket: str, key: str, data: bytes, *, content_type: str | None = None) -> str:
        headers = {"content-type": content_type} if content_type else {}
        _, answer_headers, _ = self._request("PUT", bucket, key, body=data, headers=headers)
        return str(answer_headers.get("ETag", ""))

    def put_json(self, bucket: str, key: str, document: Any) -> None:
        data = json.dumps(document, indent=2, sort_keys=True).encode("utf-8")
        self.put_object(bucket, key, data, content_type="application/json")

    def get_object(self, bucket: str, key: str) -> bytes:
        _, _, data = self._request("GET", bucket, key)
        return bytes(data)

    def get_json(self, bucket: str, key: str) -> Any | None:
        """The parsed object, or None when it does not exist."""
        try:
            return json.loads(self.get_object(bucket, key))
        except S3Error as exc:
            if exc.status == 404:
                return None
            raise

    def head_object(self, bucket: str, key: str) -> S3Object | None:
        try:
            _, headers, _ = self._request("HEAD", bucket, key)
        except S3Error as exc:
            if exc.status == 404:
                return None
            raise
        return S3Object(key, int(headers.get("Content-Length", 0)), str(headers.get("ETag", "")))

    def list_objects(self, bucket: str, prefix: str = "", *, page_size: int = 1000) -> Iterator[S3Object]:
        for objects, _ in self._list_pages(bucket, prefix, "", page_size):
            yield from objects

    def list_prefixes(self, bucket: str, prefix: str = "", delimiter: str = "/") -> list[str]:
        """The CommonPrefixes (sub-folders) right under `prefix`."""
        found: list[str] = []
        for _, prefixes in self._list_pages(bucket, prefix, delimiter, 1000):
            found.extend(prefixes)
        return found

    def _list_pages(
        self, bucket: str, prefix: str, delimiter: str, page_size: int
    ) -> Iterator[tuple[list[S3Object], list[str]]]:
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix, "max-keys": str(page_size)}
            if delimiter:
                query["delimiter"] = delimiter
            if token:
                query["continuation-token"] = token
            _, _, data = self._request("GET", bucket, "", query=query)
            root = _xml(data)
            objects: list[S3Object] = []
            prefixes: list[str] = []
            for child in root:
                name = _local(child.tag)
                if name == "Contents":
                    objects.append(
                        S3Object(
                            _child_text(child, "Key"), int(_child_text(child, "Size") or 0), _child_text(child, "ETag")
                        )
                    )
                elif name == "CommonPrefixes":
                    prefixes.append(_child_text(child, "Prefix"))
            yield objects, prefixes
            token = _child_text(root, "NextContinuationToken")
            if _child_text(root, "IsTruncated").lower() != "true" or not token:
                return

    # -- files -------------------------------------------------------------------------------------------------
    def put_file(self, bucket: str, key: str, path: Path, *, content_type: str | None = None) -> tuple[int, str]:
        """Upload a file (multipart above the threshold); returns (size, sha256) of the bytes uploaded."""
        size = path.stat().st_size
        if size <= self.multipart_threshold:
            data = path.read_bytes()
            self.put_object(bucket, key, data, content_type=content_type)
            return len(data), hashlib.sha256(data).hexdigest()
        return self._multipart(bucket, key, path, size)

    def _multipart(self, bucket: str, key: str, path: Path, size: int) -> tuple[int, str]:
        _, _, data = self._request("POST", bucket, key, query={"uploads": ""})
        upload_id = _child_text(_xml(data), "UploadId")
        if not upload_id:
            raise S3Error(200, "NoUploadId", f"CreateMultipartUpload for {key} returned no UploadId")
        digest = hashlib.sha256()
        parts: list[tuple[int, str]] = []
        sent = 0
        try:
            with path.open("rb") as source:
                number = 1
                while sent < size:
                    chunk = source.read(min(self.part_size, size - sent))
                    if not chunk:
                        break  # the file shrank while we read it: upload what we read
                    _, headers, _ = self._request(
                        "PUT", bucket, key, query={"partNumber": str(number), "uploadId": upload_id}, body=chunk
                    )
                    parts.append((number, str(headers.get("ETag", ""))))
                    digest.update(chunk)
                    sent += len(chunk)
                    number += 1
            body = "<CompleteMultipartUpload>" + "".join(
                f"<Part><PartNumber>{n}</PartNumber><ETag>{_xml_escape(etag)}</ETag></Part>" for n, etag in parts
            )
            body += "</CompleteMultipartUpload>"
            self._request("POST", bucket, key, query={"uploadId": upload_id}, body=body.encode())
        except BaseException:
            with contextlib.suppress(Exception):  # do not leave billed parts behind
                self._request("DELETE", bucket, key, query={"uploadId": upload_id})
            raise
        return sent, digest.hexdigest()

    def download_file(self, bucket: str, key: str, target: Path) -> tuple[int, str]:
        """Stream an object to `target` (via a temp file + rename); returns (size, sha256)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.download.tmp")
        for attempt in range(self.attempts):
            digest, size = hashlib.sha256(), 0
            try:
                with self._request("GET", bucket, key, stream=True) as answer, tmp.open("wb") as out:
                    while True:
                        chunk = answer.read(1024 * 1024)
                        if not chunk:
                            break
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
            except (OSError, http.client.HTTPException) as exc:  # a connection cut mid-body: start again
                if attempt + 1 >= self.attempts:
                    raise S3Error(0, "DownloadFailed", f"s3://{bucket}/{key}: {exc!r}") from exc
                continue
            os.replace(tmp, target)
            return size, digest.hexdigest()
        raise S3Error(0, "DownloadFailed", f"s3://{bucket}/{key}")


def _xml(data: bytes) -> ET.Element:
    # S3's own answers over our signed connection; expat resolves no external entities (defusedxml is not std lib).
    return ET.fromstring(data)  # noqa: S314


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _error_of(body: bytes, status: int) -> tuple[str, str]:
    try:
        root = _xml(body)
        return _child_text(root, "Code") or str(status), _child_text(root, "Message")
    except ET.ParseError:
        return {404: "NotFound", 403: "Forbidden"}.get(status, str(status)), body[:200].decode(errors="replace")


# -- secrets by reference: SSM Parameter Store and Secrets Manager (JSON APIs, SigV4 as for S3) ----------------------
# The grammar is a copy of core/secrets.py (tests/agent/test_layout.py compares). Values go into the trainer's
# environment only: never into a file, a log line, S3 or an error message (errors name the reference).
SSM_NAME = re.compile(r"^/?[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)*(?::[A-Za-z0-9_.\-]{1,100})?$")
SSM_ARN = re.compile(r"^arn:aws[a-z\-]*:ssm:[a-z0-9\-]+:\d{12}:parameter/[A-Za-z0-9_.\-/]+(?::[A-Za-z0-9_.\-]+)?$")
SECRET_NAME = re.compile(r"^[A-Za-z0-9/_+=.@\-]{1,512}$")
SECRET_ARN = re.compile(r"^arn:aws[a-z\-]*:secretsmanager:[a-z0-9\-]+:\d{12}:secret:[A-Za-z0-9/_+=.@\-]+$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# botocore's per-service endpoint variables, then AWS_ENDPOINT_URL (the sandbox), then AWS itself.
_ENDPOINT_ENV = {"ssm": "AWS_ENDPOINT_URL_SSM", "secretsmanager": "AWS_ENDPOINT_URL_SECRETS_MANAGER"}
_TARGET_PREFIX = {"ssm": "AmazonSSM", "secretsmanager": "secretsmanager"}
_JSON_RETRY_CODES = _RETRY_CODES | {"TooManyRequestsException", "InternalServerError", "InternalFailure"}


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


class AwsApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.status = status
        self.code = code
        self.message = message


class AwsJsonClient:
    """POST to an AWS JSON 1.1 API (`X-Amz-Target: <prefix>.<Action>`), SigV4-signed, retried like S3Client."""

    def __init__(
        self,
        service: str,
        *,
        region: str,
        credentials: CredentialProvider,
        endpoint_url: str | None = None,
        attempts: int = 4,
        backoff: float = 0.25,
        timeout: float = 15.0,
    ) -> None:
        self.service = service
        self.region = region
        self.credentials = credentials
        if endpoint_url is None:
            endpoint_url = os.environ.get(_ENDPOINT_ENV[service]) or os.environ.get("AWS_ENDPOINT_URL") or ""
        suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
        self.endpoint = (endpoint_url or f"https://{service}.{region}.{suffix}").rstrip("/")
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirect())

    def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(payload).encode("utf-8")
        parts = urllib.parse.urlsplit(self.endpoint)
        path = parts.path or "/"
        last: AwsApiError | None = None
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(min(8.0, self.backoff * 2**attempt) * (0.5 + random.random()))
            creds = self.credentials.get()
            amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            headers = {
                "host": parts.netloc,
                "x-amz-date": amz_date,
                "x-amz-target": f"{_TARGET_PREFIX[self.service]}.{action}",
                "content-type": "application/x-amz-json-1.1",
            }
            if creds.token:
                headers["x-amz-security-token"] = creds.token
            headers["authorization"] = sigv4_authorization(
                method="POST",
                canonical_uri=path,
                query={},
                headers=dict(headers),
                payload_sha256=hashlib.sha256(body).hexdigest(),
                credentials=creds,
                region=self.region,
                service=self.service,
                amz_date=amz_date,
            )
            request = urllib.request.Request(  # noqa: S310 (http(s) endpoints only)
                f"{parts.scheme}://{parts.netloc}{path}", data=body, method="POST", headers=headers
            )
            try:
                with self._opener.open(request, timeout=self.timeout) as answer:
                    return dict(json.loads(answer.read() or b"{}"))
            except urllib.error.HTTPError as exc:
                last = _json_error(exc)
                if exc.code >= 500 or exc.code == 429 or last.code in _JSON_RETRY_CODES:
                    continue
                if last.code in ("ExpiredTokenException", "ExpiredToken") and attempt == 0:
                    self.credentials.invalidate()
                    continue
                raise last from None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                last = AwsApiError(0, "RequestFailed", f"{self.endpoint}: {exc!r}")
        assert last is not None
        raise last


def _json_error(exc: urllib.error.HTTPError) -> AwsApiError:
    """The error code (`__type`, maybe `prefix#Code`) and message of a JSON 1.1 error answer."""
    try:
        data = json.loads(exc.read() or b"{}")
    except ValueError:
        data = {}
    data = data if isinstance(data, dict) else {}
    code = str(data.get("__type") or exc.headers.get("x-amzn-ErrorType") or exc.code)
    message = str(data.get("message") or data.get("Message") or "")
    return AwsApiError(exc.code, code.rsplit("#", 1)[-1].split(":")[0], message)


class SecretError(Exception):
    """Secrets that cannot be resolved; the message names each reference and why, never a value."""


def _secret_value(kind: str, ident: str, key: str | None, client: AwsJsonClient) -> str:
    if kind == "ssm":
        return str(client.call("GetParameter", {"Name": ident, "WithDecryption": True})["Parameter"]["Value"])
    answer = client.call("GetSecretValue", {"SecretId": ident})
    if "SecretString" in answer:
        text = str(answer["SecretString"])
    else:
        try:
            text = base64.b64decode(answer.get("SecretBinary") or "").decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise SecretError("the secret is binary, not text") from None
    if key is None:
        return text
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise SecretError(f"the secret is not a JSON object, so it has no key {key!r}")
    if key not in document:
        raise SecretError(f"the secret's JSON object has no key {key!r}")
    value = document[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SecretError(f"the secret's key {key!r} holds a {type(value).__name__}, not a string or number")
    return str(value)


def _secret_hint(kind: str, error: AwsApiError, region: str) -> str:
    if error.code.startswith("AccessDenied"):
        action = "ssm:GetParameter (+ kms:Decrypt)" if kind == "ssm" else "secretsmanager:GetSecretValue"
        return f"; the instance profile needs {action} on it"
    if error.code in ("ParameterNotFound", "ResourceNotFoundException", "ParameterVersionNotFound"):
        return f"; check the name and the region ({region})"
    return ""


def resolve_secrets(
    secret_env: dict[str, str],
    *,
    region: str,
    credentials: CredentialProvider,
    endpoint_url: str | None = None,
) -> dict[str, str]:
    """{NAME: value} for the trainer's environment. Raises SecretError naming every reference that failed."""
    values: dict[str, str] = {}
    failures: list[str] = []
    clients: dict[tuple[str, str], AwsJsonClient] = {}
    for name, ref in sorted(secret_env.items()):
        kind, ident, key = parse_secret_ref(ref)
        # An ARN names its region; anything else is read in the instance's region.
        where = ident.split(":")[3] if ident.startswith("arn:") else region
        client = clients.get((kind, where))
        if client is None:
            client = AwsJsonClient(kind, region=where, credentials=credentials, endpoint_url=endpoint_url)
            clients[(kind, where)] = client
        try:
            value = _secret_value(kind, ident, key, client)
            if "\0" in value:
                raise SecretError("the value holds a NUL character, which no environment variable can")
            values[name] = value
        except AwsApiError as exc:
            detail = f"{exc.code}: {exc.message.rstrip('.')}" if exc.message else exc.code
            failures.append(f"{name} ({ref}): {detail}{_secret_hint(kind, exc, where)}")
        except S3Error as exc:  # no credentials (the provider's error)
            failures.append(f"{name} ({ref}): {exc.code}: {exc.message}")
        except (OSError, http.client.HTTPException) as exc:  # the instance profile's credentials from IMDS
            failures.append(f"{name} ({ref}): no credentials: {exc!r}")
        except SecretError as exc:
            failures.append(f"{name} ({ref}): {exc}")
    if failures:
        raise SecretError("secret_env: " + "; ".join(failures))
    return values


# -- checkpoints ------------------------------------------------------------------------------------------------
Fingerprint = tuple[tuple[str, int, int, int], ...]


def is_temporary(name: str) -> bool:
    return name.endswith(".tmp")


def fingerprint(folder: Path) -> Fingerprint:
    """(relative path, size, mtime_ns, inode) of every file: a rename or rewrite changes it."""
    found: list[tuple[str, int, int, int]] = []
    if not folder.is_dir():
        return ()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in filenames:
            if is_temporary(name):
                continue
            full = Path(dirpath) / name
            try:
                st = full.stat()
            except FileNotFoundError:  # renamed away while we walked
                continue
            if not os.path.isfile(full):
                continue
            found.append((full.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(sorted(found))


class IntegrityError(Exception):
    pass


def path_problem(rel: str) -> str | None:
    """Why a name from S3 cannot become a path under a folder, or None: core/paths.py's rule, copied (the agent
    imports nothing of trainctl's; tests/core/test_paths.py runs both over one table of names)."""
    if not rel:
        return "is empty"
    if rel.startswith("/"):
        return "is absolute"
    if "\\" in rel:
        return "contains a backslash"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in rel):
        return "contains a control character"
    try:
        size = len(rel.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "has a '..', '.' or empty segment"
    if any(len(p.encode("utf-8")) > 255 for p in parts):
        return "has a segment over 255 bytes"
    if size > 4096:
        return "is over 4096 bytes"
    return None


def check_paths(rels: list[str]) -> None:
    """IntegrityError naming the first name that fails `path_problem` or is both a file and a folder."""
    names = set(rels)
    for rel in sorted(names):
        why = path_problem(rel)
        if why:
            raise IntegrityError(f"unsafe path in manifest: {rel!r} {why}")
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in names:
                raise IntegrityError(f"unsafe path in manifest: {'/'.join(parts[:depth])!r} is a file and a folder")


class Checkpoints:
    """Restore, snapshot+upload and verify a job's checkpoints (layout in the module docstring)."""

    def __init__(self, s3: S3Client, spec: AgentSpec, folder: Path, instance_id: str) -> None:
        self.s3 = s3
        self.spec = spec
        self.folder = folder
        self.instance_id = instance_id
        self.bucket, key = split_s3_uri(spec.checkpoint_uri)
        self.prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        self.snapshot_dir = folder.parent / f".{folder.name}.trainctl-snapshot"
        # What a prefetch downloaded (seq, and each file's size, sha256, mtime_ns): the restore at the start then
        # downloads only what changed since (nothing, normally).
        self.prefetch_marker = folder.parent / f".{folder.name}.trainctl-prefetched.json"
        self.last_seq: int | None = None
        self.next_seq = 1
        self.last_fingerprint: Fingerprint = ()
        self.last_uploaded_at: str | None = None

    def seqs_in_s3(self) -> list[int]:
        seqs = []
        for sub in self.s3.list_prefixes(self.bucket, self.prefix + "ckpt-"):
            match = re.search(r"ckpt-(\d+)/$", sub)
            if match:
                seqs.append(int(match.group(1)))
        return seqs

    def restore(self, *, prefetch: bool = False) -> str:
        """Download the latest complete checkpoint into the folder; returns it ("" when there is none). With
        `prefetch` (before the trainer's start: the replacement of an interrupted attempt, while the old instance
        still serves its notice) what was downloaded is remembered, so the restore at the start skips it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        done = self._restore_latest(prefetch)
        if not prefetch:
            self.prefetch_marker.unlink(missing_ok=True)
        return done

    def _restore_latest(self, prefetch: bool) -> str:
        latest = self.s3.get_json(self.bucket, self.prefix + LATEST_NAME)
        existing = self.seqs_in_s3()
        candidates: list[int] = []
        if isinstance(latest, dict) and isinstance(latest.get("seq"), int):
            candidates.append(int(latest["seq"]))
        self.next_seq = max([0, *existing, *candidates]) + 1  # never reuse a folder, even an incomplete one
        if not candidates:
            log.info("restore: no checkpoint at %s", self.spec.checkpoint_uri)
            return ""
        # If the latest fails verification, fall back to earlier complete checkpoints.
        candidates += sorted((s for s in existing if s < candidates[0]), reverse=True)[:3]
        for seq in candidates:
            try:
                self._download(seq, remember=prefetch)
            except (S3Error, IntegrityError, OSError) as exc:
                log.warning("restore: checkpoint %d unusable: %s", seq, exc)
                continue
            self.last_seq = seq
            self.last_fingerprint = fingerprint(self.folder)  # do not upload what we just downloaded
            log.info("restore: checkpoint %d restored into %s", seq, self.folder)
            return str(self.folder)
        log.warning("restore: no usable checkpoint; starting from scratch")
        return ""

    def _prefetched(self, seq: int) -> dict[str, Any]:
        """{path: [size, sha256, mtime_ns]} of what a prefetch of checkpoint `seq` downloaded ({} for none)."""
        with contextlib.suppress(OSError, ValueError):
            marker = json.loads(self.prefetch_marker.read_text())
            if isinstance(marker, dict) and marker.get("seq") == seq and isinstance(marker.get("files"), dict):
                return dict(marker["files"])
        return {}

    def _unchanged(self, entry: dict[str, Any], known: Any) -> bool:
        """The prefetched file is still the one the manifest names, untouched since (size and mtime)."""
        try:
            st = (self.folder / str(entry["path"])).stat()
        except OSError:
            return False
        return (
            isinstance(known, list)
            and known == [int(entry["size"]), entry["sha256"], st.st_mtime_ns]
            and st.st_size == int(entry["size"])
        )

    def _download(self, seq: int, *, remember: bool = False) -> None:
        folder_key = self.prefix + checkpoint_folder(seq)
        manifest = self.s3.get_json(self.bucket, folder_key + MANIFEST_NAME)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
            raise IntegrityError(f"{folder_key}{MANIFEST_NAME} is missing or malformed")
        # Every name is checked before the first download: a refused checkpoint writes nothing.
        check_paths([str(entry["path"]) for entry in manifest["files"]])
        prefetched = self._prefetched(seq)
        kept: dict[str, list[Any]] = {}
        for entry in manifest["files"]:
            rel = str(entry["path"])
            if self._unchanged(entry, prefetched.get(rel)):
                kept[rel] = prefetched[rel]
                continue
            size, sha = self.s3.download_file(self.bucket, folder_key + rel, self.folder / rel)
            if size != int(entry["size"]) or sha != entry["sha256"]:
                raise IntegrityError(
                    f"{rel}: got {size} bytes sha256 {sha}, manifest says {entry['size']} {entry['sha256']}"
                )
            kept[rel] = [size, sha, (self.folder / rel).stat().st_mtime_ns]
        if remember:
            write_atomic(self.prefetch_marker, json.dumps({"seq": seq, "files": kept}).encode())

    def changed(self) -> bool:
        current = fingerprint(self.folder)
        return bool(current) and current != self.last_fingerprint

    def _snapshot(self) -> Fingerprint:
        """A consistent copy of the folder: hard links (the trainer renames new files in, so a linked inode never
        changes), a copy across filesystems; repeated until the folder did not change while we took it."""
        current: Fingerprint = ()
        for _ in range(5):
            before = fingerprint(self.folder)
            shutil.rmtree(self.snapshot_dir, ignore_errors=True)
            self.snapshot_dir.mkdir(parents=True)
            complete = True
            for rel, *_ in before:
                source, target = self.folder / rel, self.snapshot_dir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    try:
                        os.link(source, target)
                    except OSError:
                        shutil.copy2(source, target)
                except FileNotFoundError:
                    complete = False
                    break
            current = fingerprint(self.folder)
            if complete and current == before:
                return before
            time.sleep(0.1)
        log.warning("checkpoint: the folder kept changing while snapshotting; uploading the last snapshot")
        return current

    def upload(self, *, force: bool = False) -> int | None:
        """Upload the folder as a new checkpoint if it changed; returns its seq (None: nothing new)."""
        if not force and not self.changed():
            return None
        taken = self._snapshot()
        files = sorted(p.relative_to(self.snapshot_dir).as_posix() for p in self.snapshot_dir.rglob("*") if p.is_file())
        if not files:
            return None
        seq = self.next_seq
        self.next_seq += 1  # even if this upload fails half-way: a later one never mixes into its folder
        folder_key = self.prefix + checkpoint_folder(seq)
        entries: list[dict[str, Any]] = []
        try:
            for rel in files:
                if rel == MANIFEST_NAME:
                    log.warning("checkpoint: skipping the trainer's own %s (reserved name)", rel)
                    continue
                size, sha = self.s3.put_file(self.bucket, folder_key + rel, self.snapshot_dir / rel)
                entries.append({"path": rel, "size": size, "sha256": sha})
            manifest = {
                "seq": seq,
                "job": self.spec.job,
                "attempt": self.spec.attempt,
                "instance_id": self.instance_id,
                "created_at": now_iso(),
                "files": entries,
            }
            self.s3.put_json(self.bucket, folder_key + MANIFEST_NAME, manifest)  # after every file
            self.s3.put_json(self.bucket, self.prefix + LATEST_NAME, {"seq": seq, "prefix": checkpoint_folder(seq)})
        finally:
            shutil.rmtree(self.snapshot_dir, ignore_errors=True)
        self.last_seq = seq
        self.last_fingerprint = taken
        self.last_uploaded_at = now_iso()
        log.info("checkpoint %d uploaded (%d files, %d bytes)", seq, len(entries), sum(e["size"] for e in entries))
        return seq

    def verify(self, seq: int) -> tuple[bool, str]:
        """Re-read the manifest, list the folder, compare every size, and check LATEST points here."""
        folder_key = self.prefix + checkpoint_folder(seq)
        manifest = self.s3.get_json(self.bucket, folder_key + MANIFEST_NAME)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
            return False, "manifest missing"
        listed = {obj.key: obj.size for obj in self.s3.list_objects(self.bucket, folder_key)}
        for entry in manifest["files"]:
            key = folder_key + str(entry["path"])
            if listed.get(key) != int(entry["size"]):
                return False, f"{key}: size {listed.get(key)} in S3, {entry['size']} in the manifest"
        latest = self.s3.get_json(self.bucket, self.prefix + LATEST_NAME)
        if not isinstance(latest, dict) or latest.get("seq") != seq:
            return False, f"LATEST.json is {latest!r}, not seq {seq}"
        return True, f"{len(manifest['files'])} files verified"


# -- process helpers --------------------------------------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie is dead for our purposes
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        return state != "Z"
    return True


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def killpg(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def keep_instance_reason(*, keep_instance: bool, upload_error: str | None) -> str | None:
    """Why the instance stays after its job ended, or None: shut it down. A failed final upload keeps it whatever
    the spec says: the checkpoint or the log then exists only on the instance's disk, which a terminate deletes."""
    if upload_error:
        return f"kept: {upload_error}; the instance's disk holds the only copy"
    if keep_instance:
        return "kept: keep_instance is set; end it yourself or with teardown"
    return None


# -- the agent ----------------------------------------------------------------------------------------------------
class Agent:
    """Runs one job attempt: restore, start, sync, watch IMDS, finish (see the module docstring)."""

    def __init__(
        self,
        spec: AgentSpec,
        *,
        s3: S3Client | None = None,
        imds: Imds | None = None,
        job_dir: Path | None = None,
    ) -> None:
        self.spec = spec
        self.imds = imds or Imds()
        self.s3 = s3 or S3Client(region=self._region(), credentials=CredentialProvider(self.imds))
        self.job_dir = job_dir or on_instance(instance_job_dir(spec.job))
        self.workdir = on_instance(spec.workdir)
        self.checkpoint_dir = on_instance(spec.checkpoint_dir)
        self.instance_id = spec.instance_id or ""
        self.checkpoints: Checkpoints | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at: str | None = None
        self.ended_at: str | None = None
        self.exit_code: int | None = None
        self.reason = ""
        self.sync_lock = threading.RLock()  # one upload at a time (periodic, rebalance, exit, interruption)
        self.end_lock = threading.Lock()
        self.ending: str | None = None  # who finishes the attempt: "exit" (main loop) or "interruption"
        self.stop_requested = threading.Event()
        self.sync_requested = threading.Event()
        self.interruption_done = threading.Event()
        self.finished = threading.Event()
        self.stop_grace = DEFAULT_STOP_GRACE
        self.job_bucket = spec.bucket
        self.keep_instance = spec.keep_instance  # a stop request may set it too
        self.instance_action: str | None = None  # once the job ended: "shutdown" | "keep"
        self.instance_action_reason = ""
        self.shutdown_commands: tuple[tuple[str, ...], ...] = SHUTDOWN_COMMANDS

    def _region(self) -> str:
        """AWS_REGION / AWS_DEFAULT_REGION, else the instance's region (an SSM command's environment has none)."""
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if not region:
            try:
                region = (self.imds.get("meta-data/placement/region") or "").strip()
            except (OSError, http.client.HTTPException) as exc:
                log.warning("region from IMDS: %s", exc)
        return region or "us-east-1"

    # -- paths and records ---------------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        return self.job_dir / name

    def _key(self, uri: str) -> str:
        return split_s3_uri(uri)[1]

    def status_document(self, status: str) -> dict[str, Any]:
        ckpt = self.checkpoints
        return {
            "job": self.spec.job,
            "attempt": self.spec.attempt,
            "instance_id": self.instance_id,
            "status": status,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "updated_at": now_iso(),
            "pid": self.proc.pid if self.proc else None,
            "agent_pid": os.getpid(),
            "checkpoint_uri": self.spec.checkpoint_uri,
            "checkpoint_seq": ckpt.last_seq if ckpt else None,
            "checkpoint_uploaded_at": ckpt.last_uploaded_at if ckpt else None,
            "log_uri": log_uri(self.job_bucket, self.spec.job, self.spec.attempt),
            "instance_action": self.instance_action,
            "instance_action_reason": self.instance_action_reason,
        }

    def publish(self, status: str) -> bool:
        """Write the status locally and to S3, and upload the log (best effort: S3 errors are logged). True when
        both reached S3."""
        document = self.status_document(status)
        write_atomic(self.path(STATUS_FILE), json.dumps(document, indent=2).encode())
        try:
            log_path = self.path(LOG_FILE)
            if log_path.exists():
                self.s3.put_file(
                    self.job_bucket, self._key(log_uri(self.job_bucket, self.spec.job, self.spec.attempt)), log_path
                )
            self.s3.put_json(
                self.job_bucket, self._key(status_uri(self.job_bucket, self.spec.job, self.spec.attempt)), document
            )
        except (S3Error, OSError) as exc:
            log.error("publishing status %s failed: %s", status, exc)
            return False
        return True

    def note(self, text: str, *, level: int = logging.INFO) -> None:
        """A line of the agent's own in the job log (uploaded with it), and in the agent log."""
        log.log(level, "%s", text)
        with contextlib.suppress(OSError), self.path(LOG_FILE).open("ab") as job_log:
            job_log.write(f"trainctl-agent: {text}\n".encode())

    def _decide(self, keep: str | None, status: str) -> None:
        self.instance_action = "keep" if keep else "shutdown"
        self.instance_action_reason = keep or f"the job ended ({status}): shutting the instance down"
        self.note(self.instance_action_reason)

    def finish(self, status: str, *, upload_error: str | None = None) -> None:
        """The attempt's end: publish the final status (and log), then shut the instance down unless it must stay
        (module docstring, "When the job ends"). Called once, after the final checkpoint upload."""
        keep = keep_instance_reason(keep_instance=self.keep_instance, upload_error=upload_error)
        self._decide(keep, status)
        published = self.publish(status)
        if keep is None and not published:
            self._decide("kept: the final status or log could not be written to S3", status)
            self.publish(status)  # once more: the reason gets through if S3 is back
            return
        if keep is None and not self.shut_down():
            self.publish(status)

    def shut_down(self) -> bool:
        """Run the first shutdown command that works (it returns at once; the machine goes down after). When none
        does, the decision becomes `keep` with the errors as its reason."""
        failures: list[str] = []
        for argv in self.shutdown_commands:
            try:
                done = subprocess.run(
                    list(argv), stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                failures.append(f"{argv[0]}: {exc}")
                continue
            if done.returncode == 0:
                log.info("%s: the instance is shutting down", " ".join(argv))
                return True
            detail = done.stderr.decode(errors="replace").strip()[:200]
            failures.append(f"{' '.join(argv)}: exit code {done.returncode} {detail}".strip())
        self._decide(f"kept: the shutdown failed ({'; '.join(failures)})", "")
        return False

    def heartbeat(self) -> None:
        """Rewrite the running status in S3 (the document only, not the log): its LastModified tells teardown the
        agent is alive, whatever the sync interval. Best effort, like every status write."""
        try:
            self.s3.put_json(
                self.job_bucket,
                self._key(status_uri(self.job_bucket, self.spec.job, self.spec.attempt)),
                self.status_document("running"),
            )
        except (S3Error, OSError) as exc:
            log.error("heartbeat failed: %s", exc)

    def sync(self, *, why: str) -> int | None:
        """Upload the checkpoint if it changed, then the log and the running status."""
        with self.sync_lock:
            if self.ending == "interruption":
                return None  # the watcher owns the last upload
            seq = None
            try:
                assert self.checkpoints is not None
                seq = self.checkpoints.upload()
            except (S3Error, OSError) as exc:
                log.error("checkpoint upload (%s) failed: %s", why, exc)
            self.publish("running")
            return seq

    # -- main ------------------------------------------------------------------------------------------------
    def run(self) -> int:
        self.job_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path(SPEC_COPY_FILE), json.dumps(asdict(self.spec), indent=2).encode())
        for stale in (EXIT_CODE_FILE, PID_FILE, STOP_REQUEST_FILE):
            with contextlib.suppress(FileNotFoundError):
                self.path(stale).unlink()
        if not self.instance_id:
            try:
                self.instance_id = (self.imds.get("meta-data/instance-id") or "").strip()
            except (OSError, urllib.error.URLError) as exc:
                log.warning("instance id from IMDS: %s", exc)
            self.instance_id = self.instance_id or socket.gethostname()
        log.info(
            "agent %d for job %s attempt %d on %s", os.getpid(), self.spec.job, self.spec.attempt, self.instance_id
        )
        self.checkpoints = Checkpoints(self.s3, self.spec, self.checkpoint_dir, self.instance_id)
        secrets = self._resolve_secrets()
        if secrets is None:
            return 1
        try:
            resume_from = self.checkpoints.restore()
        except (S3Error, OSError) as exc:
            log.error("restore failed: %s", exc)
            self.reason = f"restore failed: {exc}"
            self.exit_code = None
            self.ended_at = now_iso()
            self.finish("failed")
            return 1
        if not self._start(resume_from, secrets):
            return 1
        self.publish("running")
        watcher = threading.Thread(target=self._watch, name="spot-watcher", daemon=True)
        watcher.start()
        code = self._supervise()
        self.finished.set()
        watcher.join(timeout=self.spec.imds_poll_s + 5)
        return code

    def _resolve_secrets(self) -> dict[str, str] | None:
        """The secret_env values, for the trainer's environment only; None (the attempt failed) when one cannot be
        read. The failure names the references, never a value."""
        if not self.spec.secret_env:
            return {}
        try:
            return resolve_secrets(self.spec.secret_env, region=self.s3.region, credentials=self.s3.credentials)
        except SecretError as exc:
            self._fail_to_start(f"cannot start the command: {exc}", 126)
            return None

    def _fail_to_start(self, reason: str, exit_code: int) -> None:
        """The trainer never ran: say why in its log and the status, and write the exit code a shell would."""
        self.note(reason, level=logging.ERROR)
        self.exit_code = exit_code
        self.reason = reason
        self.ended_at = now_iso()
        write_atomic(self.path(EXIT_CODE_FILE), f"{self.exit_code}\n".encode())
        self.finish("failed")

    def _start(self, resume_from: str, secrets: dict[str, str]) -> bool:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(self.spec.env)
        env.update(secrets)
        env.update(
            {
                "TRAINCTL_JOB": self.spec.job,
                "TRAINCTL_ATTEMPT": str(self.spec.attempt),
                "TRAINCTL_CHECKPOINT_DIR": str(self.checkpoint_dir),
                "TRAINCTL_RESUME_FROM": resume_from,
            }
        )
        self.started_at = now_iso()
        try:
            with self.path(LOG_FILE).open("ab") as job_log:
                # No shell: the argv runs exactly as given, whatever characters it holds.
                self.proc = subprocess.Popen(
                    self.spec.command,
                    cwd=str(self.workdir),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=job_log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: SIGTERM reaches the whole tree
                    close_fds=True,
                )
        except OSError as exc:
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            self._fail_to_start(f"cannot start the command {self.spec.command!r}: {exc}", code)
            return False
        write_atomic(self.path(PID_FILE), f"{self.proc.pid}\n".encode())
        log.info("started pid %d: %s (cwd %s)", self.proc.pid, self.spec.command, self.workdir)
        return True

    def _claim(self, who: str) -> bool:
        with self.end_lock:
            if self.ending is None:
                self.ending = who
            return self.ending == who

    def _supervise(self) -> int:
        assert self.proc is not None
        proc = self.proc
        started = time.monotonic()
        next_sync = started + self.spec.sync_interval_s
        next_beat = started + self.spec.heartbeat_s
        stopping = False
        while proc.poll() is None:
            if self.ending == "interruption":
                break
            now = time.monotonic()
            over_time = self.spec.max_runtime_s is not None and now - started > self.spec.max_runtime_s
            if not stopping and (self.stop_requested.is_set() or over_time):
                stopping = True
                self.reason = "stop requested" if self.stop_requested.is_set() else "max_runtime_s exceeded"
                self._load_stop_request()
                log.info("%s: SIGTERM to the job, SIGKILL after %.0f s", self.reason, self.stop_grace)
                self._terminate(time.monotonic() + self.stop_grace)
                continue
            if now >= next_sync or self.sync_requested.is_set():
                why = "rebalance recommendation" if self.sync_requested.is_set() else "interval"
                self.sync_requested.clear()
                self.sync(why=why)
                next_sync = time.monotonic() + self.spec.sync_interval_s
                next_beat = time.monotonic() + self.spec.heartbeat_s  # the sync wrote the status too
            elif now >= next_beat:
                with self.sync_lock:  # never after the interruption's final status
                    if self.ending is None:
                        self.heartbeat()
                next_beat = time.monotonic() + self.spec.heartbeat_s
            time.sleep(0.2)
        if not self._claim("exit"):
            self.interruption_done.wait()
            log.info("attempt ended by the interruption")
            return 0
        self.exit_code = exit_status(proc.wait())
        self.ended_at = now_iso()
        write_atomic(self.path(EXIT_CODE_FILE), f"{self.exit_code}\n".encode())
        log.info("job exited with %d", self.exit_code)
        if self.exit_code == 0:
            status = "succeeded"
        elif stopping and self.stop_requested.is_set():
            status = "stopped"
        else:
            status = "failed"
            self.reason = self.reason or f"exit code {self.exit_code}"
        with self.sync_lock:
            upload_error: str | None = None
            try:
                assert self.checkpoints is not None
                self.checkpoints.upload()
            except (S3Error, OSError) as exc:
                log.error("final checkpoint upload failed: %s", exc)
                upload_error = f"the final checkpoint upload failed ({exc})"
            self.finish(status, upload_error=upload_error)
        return 0

    def _load_stop_request(self) -> None:
        with contextlib.suppress(OSError, ValueError, TypeError):
            request = json.loads(self.path(STOP_REQUEST_FILE).read_text())
            self.stop_grace = float(request.get("grace", self.stop_grace))
            self.keep_instance = self.keep_instance or request.get("keep_instance") is True

    def _terminate(self, deadline: float) -> tuple[int | None, str | None]:
        """SIGTERM the group now; SIGKILL it at the deadline if it has not exited. Returns (returncode,
        sigkill_sent_at)."""
        assert self.proc is not None
        killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=max(0.0, deadline - time.monotonic())), None
        except subprocess.TimeoutExpired:
            killed_at = now_iso()
            log.warning("the job did not exit in time: SIGKILL")
            killpg(self.proc.pid, signal.SIGKILL)
            try:
                return self.proc.wait(timeout=10), killed_at
            except subprocess.TimeoutExpired:
                return None, killed_at

    # -- the spot watcher ----------------------------------------------------------------------------------------
    def _watch(self) -> None:
        last_rebalance: str | None = None
        failures = 0
        while not self.finished.is_set():
            try:
                action = self.imds.get("meta-data/spot/instance-action")
                rebalance = self.imds.get("meta-data/events/recommendations/rebalance")
                failures = 0
            except Exception as exc:  # IMDS hiccups must never kill the watcher
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("IMDS poll failed (%d times): %s", failures, exc)
                self.finished.wait(self.spec.imds_poll_s)
                continue
            if action:
                self._on_notice(action)
                return
            if rebalance and rebalance != last_rebalance:
                last_rebalance = rebalance
                log.info("rebalance recommendation %s: uploading a checkpoint early", rebalance.strip())
                self.sync_requested.set()
            self.finished.wait(self.spec.imds_poll_s)

    def _on_notice(self, raw: str) -> None:
        seen_at = time.time()
        try:
            notice = json.loads(raw)
        except ValueError:
            notice = {"action": "terminate", "time": ""}
        if not self._claim("interruption"):
            log.info("spot notice %s after the job ended; nothing to do", raw.strip())
            return
        assert self.proc is not None and self.checkpoints is not None
        notice_epoch = parse_time(str(notice.get("time", ""))) or seen_at + 120.0
        # Two minutes is all AWS promises; keep the margin for the upload, but give the trainer at least 1 s.
        deadline_epoch = max(notice_epoch - self.spec.margin_s, time.time() + 1.0)
        sigterm_sent_at = now_iso()
        log.warning("spot notice %s: SIGTERM to the job's process group %d", raw.strip(), self.proc.pid)
        returncode, sigkill_sent_at = self._terminate(time.monotonic() + (deadline_epoch - time.time()))
        job_exited_at = now_iso()
        self.exit_code = exit_status(returncode) if returncode is not None else None
        self.ended_at = job_exited_at
        self.reason = f"spot interruption ({notice.get('action')} at {notice.get('time')})"
        if self.exit_code is not None:
            write_atomic(self.path(EXIT_CODE_FILE), f"{self.exit_code}\n".encode())
        with self.sync_lock:
            uploaded_at: str | None = None
            verified, detail = False, "no checkpoint"
            try:
                seq = self.checkpoints.upload()
                if seq is not None:
                    uploaded_at = self.checkpoints.last_uploaded_at
                seq = self.checkpoints.last_seq
                if seq is not None:
                    verified, detail = self.checkpoints.verify(seq)
            except (S3Error, OSError) as exc:
                detail = f"upload/verify failed: {exc}"
                log.error("interruption checkpoint: %s", detail)
            record = {
                "job": self.spec.job,
                "instance_id": self.instance_id,
                "attempt": self.spec.attempt,
                "action": notice.get("action"),
                "notice_time": notice.get("time"),
                "notice_seen_at": datetime.fromtimestamp(seen_at, timezone.utc).isoformat(timespec="milliseconds"),  # noqa: UP017
                "sigterm_sent_at": sigterm_sent_at,
                "sigkill_sent_at": sigkill_sent_at,
                "job_exited_at": job_exited_at,
                "exit_code": self.exit_code,
                "checkpoint_seq": self.checkpoints.last_seq,
                "checkpoint_uploaded_at": uploaded_at or self.checkpoints.last_uploaded_at,
                "verified": verified,
                "verify_detail": detail,
                "recorded_at": now_iso(),
            }
            log.info("interruption: checkpoint %s verified=%s (%s)", record["checkpoint_seq"], verified, detail)
            # No shutdown: AWS ends the instance at the notice time, and a shutdown of our own would replace the
            # StateReason (Server.SpotInstanceTermination) that spot-watch reads.
            self._decide(f"kept: the spot interruption ends the instance at {notice.get('time')}", "interrupted")
            self.publish("interrupted")
            try:
                self.s3.put_json(
                    self.job_bucket,
                    self._key(interruption_uri(self.job_bucket, self.spec.job, self.instance_id)),
                    record,
                )
            except (S3Error, OSError) as exc:
                log.error("interruption record upload failed: %s", exc)
        self.interruption_done.set()


# -- command line -------------------------------------------------------------------------------------------------
def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s [%(threadName)s] %(message)s"
    )


def _detach(job_dir: Path) -> int | None:
    """Double fork + setsid. Returns the daemon's pid in the caller, None in the daemon itself."""
    read_end, write_end = os.pipe()
    first = os.fork()
    if first > 0:  # the caller: learn the daemon's pid from the intermediate child
        os.close(write_end)
        os.waitpid(first, 0)
        with os.fdopen(read_end, "rb") as pipe:
            data = pipe.read().strip()
        return int(data) if data else -1
    try:
        os.close(read_end)
        os.setsid()  # no controlling terminal, no SSM session: survives the command that started us
        second = os.fork()
        if second > 0:
            os.write(write_end, str(second).encode())
            os._exit(0)
        os.close(write_end)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        out = os.open(str(job_dir / AGENT_LOG_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.closerange(3, 4096)  # nothing of the SSM command's pipes stays open here
        os.chdir(str(job_dir))
        os.umask(0o022)
    except BaseException:
        os._exit(1)
    return None


def cmd_run(args: argparse.Namespace) -> int:
    try:
        spec = AgentSpec.load(args.spec)
    except SpecError as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 2
    job_dir = on_instance(instance_job_dir(spec.job))
    job_dir.mkdir(parents=True, exist_ok=True)
    running = read_int(job_dir / AGENT_PID_FILE)
    if running and running != os.getpid() and pid_alive(running):
        print(json.dumps({"error": f"an agent of job {spec.job} is already running (pid {running})"}), file=sys.stderr)
        return 1
    if not args.foreground:
        sys.stdout.flush()
        sys.stderr.flush()
        daemon = _detach(job_dir)
        if daemon is not None:
            print(
                json.dumps(
                    {
                        "job": spec.job,
                        "agent_pid": daemon,
                        "job_dir": str(job_dir),
                        "agent_log": str(job_dir / AGENT_LOG_FILE),
                    }
                )
            )
            return 0 if daemon > 0 else 1
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
    _setup_logging()
    write_atomic(job_dir / AGENT_PID_FILE, f"{os.getpid()}\n".encode())
    agent = Agent(spec, job_dir=job_dir)

    def on_signal(signum: int, frame: Any) -> None:  # `stop`, or the machine shutting down
        log.info("signal %d: stopping the job", signum)
        agent.stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        return agent.run()
    except Exception:
        log.exception("agent crashed")
        return 1
    finally:
        log.info("agent exits")


def local_status(job: str) -> dict[str, Any]:
    job_dir = on_instance(instance_job_dir(job))
    pid = read_int(job_dir / PID_FILE)
    agent_pid = read_int(job_dir / AGENT_PID_FILE)
    exit_code = read_int(job_dir / EXIT_CODE_FILE)
    document: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        document = json.loads((job_dir / STATUS_FILE).read_text())
    trainer_alive = bool(pid and pid_alive(pid))
    agent_alive = bool(agent_pid and pid_alive(agent_pid))
    status = document.get("status")
    if status is None:
        if trainer_alive:
            status = "running"
        elif exit_code is not None:
            status = "succeeded" if exit_code == 0 else "failed"
        else:
            status = "unknown"
    return {
        **document,
        "job": job,
        "job_dir": str(job_dir),
        "status": status,
        "pid": pid,
        "trainer_alive": trainer_alive,
        "agent_pid": agent_pid,
        "agent_alive": agent_alive,
        "exit_code": exit_code if exit_code is not None else document.get("exit_code"),
    }


def log_chunk(job: str, offset: int, limit: int) -> dict[str, Any]:
    """The job log from byte `offset` (at most `limit` bytes): the chunk, where the next read starts, the size."""
    chunk, size = b"", 0
    with contextlib.suppress(OSError), (on_instance(instance_job_dir(job)) / LOG_FILE).open("rb") as log_file:
        size = log_file.seek(0, os.SEEK_END)
        log_file.seek(min(max(offset, 0), size))
        chunk = log_file.read(max(limit, 0))
    return {"offset": max(offset, 0) + len(chunk), "size": size, "chunk": chunk.decode("utf-8", "replace")}


def poll_document(job: str, offset: int = 0, limit: int = 0) -> dict[str, Any]:
    """What `poll` prints: the local state, that the agent is installed, and a chunk of the log."""
    return {**local_status(job), "installed": True, **log_chunk(job, offset, limit)}


def _job_arg_ok(job: str) -> bool:
    """A --job that is a job name; else the error as JSON on stderr (exit 2)."""
    try:
        validate_job_name(job)
    except SpecError as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return False
    return True


def cmd_poll(args: argparse.Namespace) -> int:
    if not _job_arg_ok(args.job):
        return 2
    print(json.dumps(poll_document(args.job, args.offset, args.limit)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if not _job_arg_ok(args.job):
        return 2
    print(json.dumps(local_status(args.job), indent=2))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    if not _job_arg_ok(args.job):
        return 2
    _setup_logging()
    job_dir = on_instance(instance_job_dir(args.job))
    agent_pid = read_int(job_dir / AGENT_PID_FILE)
    if agent_pid and pid_alive(agent_pid):
        request = {"grace": args.grace, "keep_instance": args.keep_instance, "requested_at": now_iso()}
        write_atomic(job_dir / STOP_REQUEST_FILE, json.dumps(request).encode())
        os.kill(agent_pid, signal.SIGTERM)
        deadline = time.monotonic() + args.grace + args.upload_timeout
        while pid_alive(agent_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    else:
        _stop_without_agent(job_dir, args.grace, keep_instance=args.keep_instance)
    print(json.dumps(poll_document(args.job)))
    return 0


def cmd_prefetch(args: argparse.Namespace) -> int:
    """Download the job's latest complete checkpoint before its trainer starts (core/jobs.py layout): the
    replacement of an interrupted attempt does this while the old instance serves its notice, so the restore at
    the start finds it in place."""
    try:
        spec = AgentSpec.load(args.spec)
    except SpecError as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 2
    _setup_logging()
    agent = Agent(spec, job_dir=on_instance(instance_job_dir(spec.job)))
    checkpoints = Checkpoints(agent.s3, spec, agent.checkpoint_dir, spec.instance_id or "unknown")
    started = time.monotonic()
    try:
        folder = checkpoints.restore(prefetch=True)
    except (S3Error, OSError) as exc:
        print(json.dumps({"job": spec.job, "error": f"prefetch failed: {exc}"}), file=sys.stderr)
        return 1
    seconds = round(time.monotonic() - started, 2)
    print(json.dumps({"job": spec.job, "prefetched": checkpoints.last_seq, "folder": folder, "seconds": seconds}))
    return 0


def _stop_without_agent(job_dir: Path, grace: float, *, keep_instance: bool) -> None:
    """The agent is gone (crashed, killed): stop the trainer and flush its checkpoint from the spec copy, then end
    the attempt as the agent would have (final status, and the shutdown unless the instance is kept)."""
    pid = read_int(job_dir / PID_FILE)
    if pid and pid_alive(pid):
        killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            killpg(pid, signal.SIGKILL)
    try:
        spec = AgentSpec.from_dict(json.loads((job_dir / SPEC_COPY_FILE).read_text()))
    except (OSError, ValueError) as exc:
        log.error("no usable spec copy in %s: %s", job_dir, exc)
        return
    agent = Agent(spec, job_dir=job_dir)
    agent.instance_id = spec.instance_id or ""
    agent.checkpoints = Checkpoints(agent.s3, spec, agent.checkpoint_dir, agent.instance_id or "unknown")
    try:
        agent.checkpoints.next_seq = max([0, *agent.checkpoints.seqs_in_s3()]) + 1
    except (S3Error, OSError) as exc:
        log.error("listing checkpoints failed: %s", exc)
        return
    agent.exit_code = read_int(job_dir / EXIT_CODE_FILE)
    agent.ended_at = now_iso()
    agent.reason = "stopped without an agent"
    agent.keep_instance = agent.keep_instance or keep_instance
    upload_error: str | None = None
    try:
        agent.checkpoints.upload(force=True)
    except (S3Error, OSError) as exc:
        log.error("checkpoint flush failed: %s", exc)
        upload_error = f"the final checkpoint upload failed ({exc})"
    agent.finish("stopped", upload_error=upload_error)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainctl_agent", description="trainctl on-instance agent")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run a job attempt (detaches)")
    run.add_argument("--spec", required=True)
    run.add_argument("--foreground", action="store_true", help="do not detach (debugging)")
    status = sub.add_parser("status", help="print the job's local state as JSON")
    status.add_argument("--job", required=True)
    poll = sub.add_parser("poll", help="print the job's local state and a chunk of its log as one JSON line")
    poll.add_argument("--job", required=True)
    poll.add_argument("--offset", type=int, default=0)
    poll.add_argument("--limit", type=int, default=12_000)
    prefetch = sub.add_parser("prefetch", help="download the latest checkpoint before the trainer starts")
    prefetch.add_argument("--spec", required=True)
    stop = sub.add_parser("stop", help="stop the job: SIGTERM, grace, SIGKILL, flush the checkpoint")
    stop.add_argument("--job", required=True)
    stop.add_argument("--grace", type=float, default=DEFAULT_STOP_GRACE)
    stop.add_argument("--keep-instance", action="store_true", help="do not shut the instance down after the stop")
    stop.add_argument("--upload-timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": cmd_run,
        "status": cmd_status,
        "poll": cmd_poll,
        "prefetch": cmd_prefetch,
        "stop": cmd_stop,
    }
    return handlers[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
