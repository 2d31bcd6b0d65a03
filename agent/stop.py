"""Stopping a job on this instance: ask its agent (SIGTERM, the grace, SIGKILL, the checkpoint flushed), or, when
no agent is alive, do what it would have done from its copy of the spec."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from .checkpoints import Checkpoints
from .errors import S3Error
from .host import killpg, log, now_iso, pid_alive, read_int, write_atomic
from .layout import AGENT_PID_FILE, EXIT_CODE_FILE, PID_FILE, SPEC_COPY_FILE, STOP_REQUEST_FILE
from .runner import Agent
from .spec import AgentSpec


def stop_job(job_dir: Path, *, grace: float, keep_instance: bool, upload_timeout: float) -> None:
    """Stop the job and wait until its agent ended the attempt (at most grace + upload_timeout)."""
    agent_pid = read_int(job_dir / AGENT_PID_FILE)
    if agent_pid and pid_alive(agent_pid):
        request = {"grace": grace, "keep_instance": keep_instance, "requested_at": now_iso()}
        write_atomic(job_dir / STOP_REQUEST_FILE, json.dumps(request).encode())
        os.kill(agent_pid, signal.SIGTERM)
        deadline = time.monotonic() + grace + upload_timeout
        while pid_alive(agent_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    else:
        _stop_without_agent(job_dir, grace, keep_instance=keep_instance)


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
