"""GPU utilisation of running instances, read over SSM: one command for all of them (core/idle.py SAMPLE_SCRIPT:
nvidia-smi's utilization.gpu and memory.used per GPU, and each job's progress counter). cost-watch keeps the
readings across passes (core/idle.py merge_history) and stops what stays idle (tasks/jobs.py checkpoint_then_stop).
"""

from __future__ import annotations

from datetime import UTC, datetime

from core.idle import SAMPLE_SCRIPT, GpuReading, parse_sample
from tasks.aws import aws_task
from tasks.ssm import run_script_on_instances


@aws_task(name="sample-gpus", tags=["aws-ssm"])
def sample_gpus(instance_ids: list[str], *, timeout_s: int = 60, account: str | None = None) -> list[GpuReading]:
    """One reading per instance, in the order given, all taken at the same time (`at`: when the command was sent).

    An instance whose GPUs could not be read is reported as such, never as an idle one: `no-answer` (not Online in
    SSM, or the command failed or did not finish within `timeout_s`) or `no-gpu` (nvidia-smi found no GPU or
    failed). The script only reads, so a retry of the task is safe."""
    at = datetime.now(UTC)
    unique = list(dict.fromkeys(instance_ids))
    results = run_script_on_instances(
        unique, SAMPLE_SCRIPT, timeout_s=timeout_s, comment="trainctl: GPU sample", account=account
    )
    readings: list[GpuReading] = []
    for instance_id in unique:
        result = results.get(instance_id)
        if result is None:
            reading = GpuReading(instance_id=instance_id, at=at, state="no-answer", detail="not Online in SSM")
        elif not result.ok:
            reading = GpuReading(instance_id=instance_id, at=at, state="no-answer", detail=result.describe_failure())
        else:
            reading = parse_sample(instance_id, at, result.stdout)
        readings.append(reading)
    return readings
