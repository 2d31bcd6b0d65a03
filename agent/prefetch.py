"""Prefetch: the job's latest complete checkpoint downloaded before its trainer starts. The replacement of an
interrupted attempt does this while the old instance serves its notice, so the restore at the start finds it in
place (agent/checkpoints.py remembers what was prefetched)."""

from __future__ import annotations

import time
from typing import Any

from .checkpoints import Checkpoints
from .layout import instance_job_dir, on_instance
from .runner import Agent
from .spec import AgentSpec


def prefetch_checkpoint(spec: AgentSpec) -> dict[str, Any]:
    """Download the checkpoint into the job's checkpoint folder; what `prefetch` prints. Raises S3Error, OSError."""
    agent = Agent(spec, job_dir=on_instance(instance_job_dir(spec.job)))
    checkpoints = Checkpoints(agent.s3, spec, agent.checkpoint_dir, spec.instance_id or "unknown")
    started = time.monotonic()
    folder = checkpoints.restore(prefetch=True)
    seconds = round(time.monotonic() - started, 2)
    return {"job": spec.job, "prefetched": checkpoints.last_seq, "folder": folder, "seconds": seconds}
