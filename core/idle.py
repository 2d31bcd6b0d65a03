"""Idle GPUs: what one sample of an instance's GPUs says, the short history cost-watch keeps between its passes,
and the decision which instances have been idle long enough to stop. Pure: tasks/gpu.py samples, the flow acts.

One sample (`SAMPLE_SCRIPT`, sent over SSM to every instance at once) runs

    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits

and lists, for each job folder on the instance (core/jobs.py layout), the job's progress counter: the step the
trainer last wrote to its progress file (`TRAINCTL_PROGRESS_FILE`, core/jobs.py PROGRESS_FILE) when it writes one,
else the size of its log (a trainer that still makes steps prints; examples/train.py does both every step). A job
whose counter changes source between two samples (it started writing its step) counts as moving.

An instance is idle when, over the whole window, every sample read every GPU below the threshold and no job's
progress moved. A sample that could not read the GPUs (no answer over SSM, no GPU, nvidia-smi failed) is never an
idle one, and a window the samples do not cover (too new, a gap between passes) is not idle either.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from core.jobs import INSTANCE_JOBS_DIR, JOB_NAME, LOG_FILE, PROGRESS_FILE
from core.shell import on_instance

NVIDIA_SMI_QUERY = "nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits"
_GPU_MARK, _EXIT_MARK, _JOBS_MARK = "# trainctl-gpu", "# trainctl-gpu-exit", "# trainctl-jobs"

# No user input in it: the same script goes to every instance in one SendCommand.
SAMPLE_SCRIPT: list[str] = [
    f"echo '{_GPU_MARK}'",
    f'{NVIDIA_SMI_QUERY} 2>&1; echo "{_EXIT_MARK} $?"',
    f"echo '{_JOBS_MARK}'",
    f"for folder in {on_instance(INSTANCE_JOBS_DIR)}/*/; do",
    '  folder="${folder%/}"',
    f'  if [ -f "$folder/{LOG_FILE}" ]; then printf "%s %s\\n" "${{folder##*/}}" "$(wc -c < "$folder/{LOG_FILE}")"; fi',
    f'  if [ -f "$folder/{PROGRESS_FILE}" ]; then',
    f'    printf "%s step %s\\n" "${{folder##*/}}" "$(head -c 64 "$folder/{PROGRESS_FILE}" | tr -d "[:space:]")"',
    "  fi",
    "done",
]
_STEP = "step"
_COUNT = re.compile(r"[0-9]{1,18}")  # a size or a step as the script prints it

# Passes run every 15 minutes: two samples further apart than a pass and some slack mean a pass was missed, and
# the time between them was not seen.
DEFAULT_MAX_GAP = timedelta(minutes=20)


class GpuUse(BaseModel):
    """One GPU as nvidia-smi reported it."""

    model_config = ConfigDict(frozen=True)

    utilization: float = Field(ge=0, le=100, description="utilization.gpu, percent")
    memory_used_mib: int = Field(ge=0, description="memory.used, MiB")


class GpuReading(BaseModel):
    """One instance at one time: its GPUs (state `ok`), or why there is no reading (`no-gpu`: nvidia-smi found no
    GPU or failed; `no-answer`: SSM could not run the command there), and each job's progress counter."""

    model_config = ConfigDict(frozen=True)

    instance_id: str
    at: datetime
    state: Literal["ok", "no-gpu", "no-answer"]
    gpus: list[GpuUse] = Field(default_factory=list)
    progress: dict[str, int] = Field(
        default_factory=dict, description="job -> bytes of its trainer's log on the instance (grows while it trains)"
    )
    steps: dict[str, int] = Field(
        default_factory=dict, description="job -> the step its trainer last wrote (TRAINCTL_PROGRESS_FILE), if any"
    )
    detail: str = ""

    @property
    def busiest(self) -> float | None:
        """The highest utilisation of its GPUs; None when there is no GPU reading."""
        return max((g.utilization for g in self.gpus), default=None) if self.state == "ok" else None


def parse_nvidia_smi(text: str) -> list[GpuUse]:
    """The rows of `NVIDIA_SMI_QUERY` (`<util>, <memory>` per GPU). ValueError on anything else: a reading that
    does not parse is no reading (it must never count as an idle GPU)."""
    gpus: list[GpuUse] = []
    for line in text.strip().splitlines():
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != 2:
            raise ValueError(f"not a utilization.gpu,memory.used row: {line!r}")
        gpus.append(GpuUse(utilization=float(cells[0]), memory_used_mib=int(float(cells[1]))))
    return gpus


def _sections(stdout: str) -> tuple[list[str], int | None, list[str]]:
    """(nvidia-smi's lines, its exit code, the job lines) of SAMPLE_SCRIPT's output."""
    gpu: list[str] = []
    jobs: list[str] = []
    exit_code: int | None = None
    current: list[str] | None = None
    for line in stdout.splitlines():
        if line == _GPU_MARK:
            current = gpu
        elif line.startswith(_EXIT_MARK + " "):
            exit_code, current = int(line.rsplit(" ", 1)[1]), None
        elif line == _JOBS_MARK:
            current = jobs
        elif current is not None:
            current.append(line)
    return gpu, exit_code, jobs


def _progress(lines: Iterable[str]) -> tuple[dict[str, int], dict[str, int]]:
    """(job -> log size, job -> step) of the job lines: `<job> <bytes>` and `<job> step <step>`; a line that is
    neither (a step file holding no number, for one) is left out."""
    progress: dict[str, int] = {}
    steps: dict[str, int] = {}
    for line in lines:
        cells = line.split()
        if not cells or not JOB_NAME.match(cells[0]) or not _COUNT.fullmatch(cells[-1]):
            continue
        if len(cells) == 2:
            progress[cells[0]] = int(cells[1])
        elif len(cells) == 3 and cells[1] == _STEP:
            steps[cells[0]] = int(cells[2])
    return progress, steps


def parse_sample(instance_id: str, at: datetime, stdout: str) -> GpuReading:
    """The reading SAMPLE_SCRIPT's output gives for one instance."""
    try:
        gpu, exit_code, jobs = _sections(stdout)
    except ValueError:
        return GpuReading(instance_id=instance_id, at=at, state="no-gpu", detail="the sample's output does not parse")
    progress, steps = _progress(jobs)
    read = {"instance_id": instance_id, "at": at, "progress": progress, "steps": steps}
    said = " ".join(gpu).strip()[:200]
    if exit_code is None:
        return GpuReading(**read, state="no-answer", detail="no output")
    if exit_code != 0:
        return GpuReading(**read, state="no-gpu", detail=f"nvidia-smi exit code {exit_code}: {said or 'no output'}")
    try:
        gpus = parse_nvidia_smi("\n".join(gpu))
    except ValueError as exc:
        return GpuReading(**read, state="no-gpu", detail=str(exc))
    if not gpus:
        return GpuReading(**read, state="no-gpu", detail="no GPU listed")
    return GpuReading(**read, state="ok", gpus=gpus)


# -- the history kept between passes (JSON, e.g. in S3 beside the job records) ------------------------------------


class IdleSample(BaseModel):
    """What one pass keeps of a reading: enough to decide idleness over a window."""

    model_config = ConfigDict(frozen=True)

    at: datetime
    busiest_gpu: float | None = Field(description="the highest GPU utilisation, percent; None: no GPU reading")
    progress: dict[str, int] = Field(default_factory=dict)
    steps: dict[str, int] = Field(default_factory=dict)

    @classmethod
    def of(cls, reading: GpuReading) -> IdleSample:
        return cls(at=reading.at, busiest_gpu=reading.busiest, progress=reading.progress, steps=reading.steps)

    def counters(self) -> dict[str, tuple[str, int]]:
        """job -> its progress counter: ("step", n) when its trainer writes one, else ("log", bytes)."""
        return {
            **{job: ("log", size) for job, size in self.progress.items()},
            **{j: (_STEP, n) for j, n in self.steps.items()},
        }


class IdleHistory(BaseModel):
    """instance -> its samples, oldest first. `IdleHistory.model_validate_json` / `model_dump_json` store it."""

    version: Literal[1] = 1
    instances: dict[str, list[IdleSample]] = Field(default_factory=dict)


def merge_history(
    history: IdleHistory, readings: Iterable[GpuReading], *, now: datetime, window: timedelta
) -> IdleHistory:
    """The history with this pass's readings added. Instances not read this pass are gone (the flow reads every
    running one) and are dropped; of the samples older than the window only the newest stays, the one that shows
    the window's start is covered."""
    instances: dict[str, list[IdleSample]] = {}
    for reading in readings:
        kept = [s for s in history.instances.get(reading.instance_id, []) if s.at != reading.at]
        samples = sorted([*kept, IdleSample.of(reading)], key=lambda s: s.at)
        older = [s for s in samples if s.at <= now - window]
        instances[reading.instance_id] = older[-1:] + [s for s in samples if s.at > now - window]
    return IdleHistory(instances=instances)


class IdleVerdict(BaseModel):
    """Whether one instance is idle, and why (or why not), in words a report shows."""

    model_config = ConfigDict(frozen=True)

    instance_id: str
    idle: bool
    reason: str
    jobs: list[str] = Field(default_factory=list, description="the jobs its latest sample found on it")


def idle_verdicts(
    history: IdleHistory,
    *,
    now: datetime,
    below_percent: float,
    minutes: float,
    max_gap: timedelta = DEFAULT_MAX_GAP,
) -> list[IdleVerdict]:
    """A verdict per instance in the history: idle iff its samples cover the last `minutes` (one at or before the
    window's start, none further apart than `max_gap`, the newest within `max_gap` of `now`), every one of them
    read every GPU below `below_percent`, and no job's progress counter changed between them."""
    verdicts = []
    for instance_id, samples in sorted(history.instances.items()):
        why_not = _why_not_idle(samples, now=now, below=below_percent, window=timedelta(minutes=minutes), gap=max_gap)
        jobs = sorted(samples[-1].counters()) if samples else []
        reason = why_not or f"every GPU below {below_percent:g} % for {minutes:g} min, no training progress"
        verdicts.append(IdleVerdict(instance_id=instance_id, idle=why_not is None, reason=reason, jobs=jobs))
    return verdicts


def _why_not_idle(
    samples: list[IdleSample], *, now: datetime, below: float, window: timedelta, gap: timedelta
) -> str | None:
    start = now - window
    before = [s for s in samples if s.at <= start]
    if not before:
        return f"sampled only since {samples[0].at:%H:%M:%S}, not since {start:%H:%M:%S}" if samples else "no sample"
    seen = [before[-1], *(s for s in samples if start < s.at <= now)]
    if now - seen[-1].at > gap:
        return f"no sample since {seen[-1].at:%H:%M:%S}"
    for earlier, later in pairwise(seen):
        if later.at - earlier.at > gap:
            return f"no sample between {earlier.at:%H:%M:%S} and {later.at:%H:%M:%S}"
    for sample in seen:
        if sample.busiest_gpu is None:
            return f"no GPU reading at {sample.at:%H:%M:%S}"
        if sample.busiest_gpu >= below:
            return f"a GPU at {sample.busiest_gpu:g} % at {sample.at:%H:%M:%S}"
    first = seen[0].counters()
    counts = [s.counters() for s in seen[1:]]
    moved = sorted({job for c in counts for job in first.keys() | c.keys() if c.get(job) != first.get(job)})
    if moved:
        return f"training still moves ({', '.join(moved)})"
    return None
