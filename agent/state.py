"""The job's state on this instance as `status` and `poll` print it: the status document, the pids and whether
they live, the exit code, and a chunk of the job log."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from .host import pid_alive, read_int
from .layout import AGENT_PID_FILE, EXIT_CODE_FILE, LOG_FILE, PID_FILE, STATUS_FILE, instance_job_dir, on_instance


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
