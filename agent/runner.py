"""The job runner: one attempt of a job on this instance — restore the checkpoint, start the command, sync
checkpoint/log/status, heartbeat, watch IMDS for a spot notice or a rebalance recommendation, and end the attempt.

Files it writes in the job dir besides the core layout: `agent-spec.json` (its copy of the spec, used by `stop`
when the agent is gone), `status.json` (the last status document), `stop_request.json` (from `stop`). The trainer
may write its step to `progress` (TRAINCTL_PROGRESS_FILE, an integer, replaced atomically): the status carries it
as `step`, cost-watch's idle check reads it on the instance.

When the job ends (exit 0, non-zero, stopped, or it could not start), the agent uploads the final checkpoint and
the log, writes the final status, and then shuts the instance down (`shutdown -h now`, else `poweroff`, else
`systemctl poweroff`): the flow launches training instances with InstanceInitiatedShutdownBehavior=terminate and
the data volume with DeleteOnTermination off, so nothing bills after the job and nothing persistent is lost, with
or without Prefect. The instance is kept (and the status says why in `instance_action_reason`) when the spec or
the stop request says keep_instance, or when the final checkpoint, the log or the status could not be uploaded:
the instance's disk then holds the only copy, for the sweep's heartbeat rule or a human. After a spot notice the
agent never shuts down: AWS ends the instance at the notice time, and a shutdown of our own would replace the
StateReason (Server.SpotInstanceTermination) that spot-watch reads. The decision is written to the job log.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .checkpoints import Checkpoints
from .credentials import CredentialProvider
from .data_cache import DataCache, DataCacheError, prepare
from .errors import IntegrityError, S3Error, SecretError
from .host import exit_status, killpg, log, now_iso, parse_time, write_atomic
from .imds import Imds
from .layout import (
    EXIT_CODE_FILE,
    LOG_FILE,
    PID_FILE,
    PROGRESS_FILE,
    SPEC_COPY_FILE,
    STATUS_FILE,
    STOP_REQUEST_FILE,
    instance_job_dir,
    interruption_uri,
    log_uri,
    on_instance,
    split_s3_uri,
    status_uri,
)
from .s3 import S3Client
from .secret_env import resolve_secrets
from .spec import AgentSpec

DEFAULT_STOP_GRACE = 30.0
# Tried in order until one succeeds: what a stock AMI has (systemd's shutdown, then its aliases).
SHUTDOWN_COMMANDS = (("shutdown", "-h", "now"), ("poweroff",), ("systemctl", "poweroff"))


def keep_instance_reason(*, keep_instance: bool, upload_error: str | None) -> str | None:
    """Why the instance stays after its job ended, or None: shut it down. A failed final upload keeps it whatever
    the spec says: the checkpoint or the log then exists only on the instance's disk, which a terminate deletes."""
    if upload_error:
        return f"kept: {upload_error}; the instance's disk holds the only copy"
    if keep_instance:
        return "kept: keep_instance is set; end it yourself or with teardown"
    return None


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
            "step": self.trainer_step(),
            "log_uri": log_uri(self.job_bucket, self.spec.job, self.spec.attempt),
            "instance_action": self.instance_action,
            "instance_action_reason": self.instance_action_reason,
        }

    def trainer_step(self) -> int | None:
        """The step the trainer last wrote to its progress file; None when there is none or it is not a number."""
        try:
            with self.path(PROGRESS_FILE).open("rb") as f:
                text = f.read(64).strip()
        except OSError:
            return None
        return int(text) if text.isdigit() and len(text) <= 18 else None

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
        if self.spec.data_cache is not None and not self._cache_data(self.spec.data_cache):
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

    def _cache_data(self, cache: DataCache) -> bool:
        """local-cache: the dataset onto the instance store, verified, before the trainer starts (which then reads
        it at TRAINCTL_DATA_DIR); a failure fails the attempt before the trainer runs."""
        try:
            done = prepare(cache, self.s3)
        except (DataCacheError, IntegrityError, S3Error, OSError, subprocess.TimeoutExpired) as exc:
            self._fail_to_start(f"local-cache: {exc}", 1)
            return False
        self.spec.env["TRAINCTL_DATA_DIR"] = cache.mount
        self.note(
            f"local-cache: {done.files} files ({done.bytes} bytes) of {cache.uri} copied onto the instance store "
            f"{done.device} at {cache.mount} with {done.tool} and verified in {done.seconds} s"
        )
        return True

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
        if env.get("TRAINCTL_DATA_DIR"):  # an instance path, like the checkpoint dir (the sandbox's root prefix)
            env["TRAINCTL_DATA_DIR"] = str(on_instance(env["TRAINCTL_DATA_DIR"]))
        env.update(secrets)
        env.update(
            {
                "TRAINCTL_JOB": self.spec.job,
                "TRAINCTL_ATTEMPT": str(self.spec.attempt),
                "TRAINCTL_CHECKPOINT_DIR": str(self.checkpoint_dir),
                "TRAINCTL_RESUME_FROM": resume_from,
                "TRAINCTL_PROGRESS_FILE": str(self.path(PROGRESS_FILE)),
            }
        )
        # The step shown is this attempt's: a file left by an earlier run in this folder is not.
        with contextlib.suppress(OSError):
            self.path(PROGRESS_FILE).unlink(missing_ok=True)
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
        self._end_after_exit(proc, stopping)
        return 0

    def _end_after_exit(self, proc: subprocess.Popen[bytes], stopping: bool) -> None:
        """The trainer exited (by itself, stopped, or over its runtime): its exit code and the status it makes,
        then the final checkpoint upload and the attempt's end."""
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
            uploaded_at, verified, detail = self._interruption_checkpoint(self.checkpoints)
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

    def _interruption_checkpoint(self, checkpoints: Checkpoints) -> tuple[str | None, bool, str]:
        """Upload what the trainer saved on SIGTERM, then verify the latest checkpoint: (uploaded_at of this upload,
        verified, detail)."""
        uploaded_at: str | None = None
        verified, detail = False, "no checkpoint"
        try:
            seq = checkpoints.upload()
            if seq is not None:
                uploaded_at = checkpoints.last_uploaded_at
            seq = checkpoints.last_seq
            if seq is not None:
                verified, detail = checkpoints.verify(seq)
        except (S3Error, OSError) as exc:
            detail = f"upload/verify failed: {exc}"
            log.error("interruption checkpoint: %s", detail)
        return uploaded_at, verified, detail
