"""core.idle: one GPU sample parsed, the history kept across cost-watch passes, and which instances are idle — a
table of sample series → verdict, with a fixed clock (a pass every 15 minutes, a 30-minute window)."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.idle import (
    SAMPLE_SCRIPT,
    GpuReading,
    GpuUse,
    IdleHistory,
    IdleSample,
    idle_verdicts,
    merge_history,
    parse_nvidia_smi,
    parse_sample,
)

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
PASS = timedelta(minutes=15)
NOW = T0 + 2 * PASS
A, B = "i-0123456789abcdef0", "i-0fedcba9876543210"


def output(gpu_lines: str, exit_code: int = 0, jobs: str = "llm 120") -> str:
    return f"# trainctl-gpu\n{gpu_lines}\n# trainctl-gpu-exit {exit_code}\n# trainctl-jobs\n{jobs}\n"


def test_a_sample_reads_every_gpu_and_each_jobs_progress() -> None:
    reading = parse_sample(A, T0, output("3, 512\n97, 20000", jobs="llm 120\nbert 4096\nNot_A_Job 5\nllm-2 x"))
    assert reading.state == "ok" and reading.busiest == 97
    assert reading.gpus == [GpuUse(utilization=3, memory_used_mib=512), GpuUse(utilization=97, memory_used_mib=20000)]
    assert reading.progress == {"llm": 120, "bert": 4096}  # only job names with a size


def test_a_sample_reads_a_trainers_step_and_counts_it_before_the_log_size() -> None:
    jobs = "llm 120\nllm step 7\nbert 4096\nbert step\nvit 5\nvit step 12abc\nNot_A_Job step 3"
    reading = parse_sample(A, T0, output("3, 512", jobs=jobs))
    assert reading.progress == {"llm": 120, "bert": 4096, "vit": 5}
    assert reading.steps == {"llm": 7}  # an empty or unreadable step file is no step
    assert IdleSample.of(reading).counters() == {"llm": ("step", 7), "bert": ("log", 4096), "vit": ("log", 5)}


@pytest.mark.parametrize(
    ("stdout", "state", "says"),
    [
        pytest.param(
            output("NVIDIA-SMI has failed because it couldn't communicate", 9), "no-gpu", "exit code 9", id="no-driver"
        ),
        pytest.param(output("bash: nvidia-smi: command not found", 127), "no-gpu", "not found", id="no-nvidia-smi"),
        pytest.param(output("No devices were found", 6), "no-gpu", "exit code 6", id="no-device"),
        pytest.param(output(""), "no-gpu", "no GPU listed", id="no-rows"),
        pytest.param(output("[N/A], 0"), "no-gpu", "N/A", id="not-a-number"),
        pytest.param(output("3 %, 512 MiB, 7"), "no-gpu", "not a utilization", id="other-format"),
        pytest.param(output("130, 5"), "no-gpu", "less than or equal to 100", id="out-of-range"),
        pytest.param("", "no-answer", "no output", id="no-output"),
        pytest.param("# trainctl-gpu\n3, 512\n", "no-answer", "no output", id="cut-short"),
    ],
)
def test_a_sample_without_a_gpu_reading_is_never_a_busiest_of_zero(stdout: str, state: str, says: str) -> None:
    reading = parse_sample(A, T0, stdout)
    assert (reading.state, reading.busiest, reading.gpus) == (state, None, [])
    assert says in reading.detail


def test_the_sample_script_runs_as_the_parser_reads_it(tmp_path: Path) -> None:
    """SAMPLE_SCRIPT in a real shell, with a stand-in nvidia-smi and the job layout under TRAINCTL_ROOT."""
    jobs = tmp_path / "root/var/lib/trainctl/jobs"
    (jobs / "llm").mkdir(parents=True)
    (jobs / "llm/job.log").write_text("starting from scratch\n")
    (jobs / "no-log-yet").mkdir()
    (jobs / "bert").mkdir()
    (jobs / "bert/job.log").write_text("x\n")
    (jobs / "bert/progress").write_text("42\n")
    (jobs / "vit").mkdir()
    (jobs / "vit/job.log").write_text("ab")
    (jobs / "vit/progress").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text('#!/bin/sh\necho "4, 100"\necho "0, 0"\n')
    (bin_dir / "nvidia-smi").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "TRAINCTL_ROOT": str(tmp_path / "root")}
    run = subprocess.run(["sh", "-c", "\n".join(SAMPLE_SCRIPT)], capture_output=True, text=True, env=env, check=True)
    reading = parse_sample(A, T0, run.stdout)
    assert (reading.state, reading.busiest, reading.progress) == ("ok", 4, {"llm": 22, "bert": 2, "vit": 2})
    assert reading.steps == {"bert": 42}
    (bin_dir / "nvidia-smi").unlink()
    run = subprocess.run(["sh", "-c", "\n".join(SAMPLE_SCRIPT)], capture_output=True, text=True, env=env, check=True)
    assert parse_sample(A, T0, run.stdout).state == "no-gpu"


def test_parse_nvidia_smi_refuses_what_it_does_not_know() -> None:
    assert parse_nvidia_smi(" 0, 0 \n100, 81559\n") == [
        GpuUse(utilization=0, memory_used_mib=0),
        GpuUse(utilization=100, memory_used_mib=81559),
    ]
    with pytest.raises(ValueError):
        parse_nvidia_smi("utilization.gpu [%], memory.used [MiB]")


# -- the decision, from series of samples -----------------------------------------------------------------------


def s(minutes: float, busiest: float | None = 2.0, **progress: int) -> IdleSample:
    return IdleSample(at=T0 + timedelta(minutes=minutes), busiest_gpu=busiest, progress=progress or {"llm": 100})


def stepped(minutes: float, step: int | None, log: int) -> IdleSample:
    """A sample of job llm whose trainer wrote `step` (None: it writes none) and whose log is `log` bytes."""
    steps = {} if step is None else {"llm": step}
    return IdleSample(at=T0 + timedelta(minutes=minutes), busiest_gpu=2.0, progress={"llm": log}, steps=steps)


def verdict(samples: list[IdleSample], *, below: float = 10, minutes: float = 30) -> tuple[bool, str]:
    (found,) = idle_verdicts(IdleHistory(instances={A: samples}), now=NOW, below_percent=below, minutes=minutes)
    return found.idle, found.reason


@pytest.mark.parametrize(
    ("samples", "idle", "says"),
    [
        pytest.param([s(0), s(15), s(30)], True, "every GPU below 10 % for 30 min", id="idle-whole-window"),
        pytest.param([s(-40), s(-20), s(0), s(15), s(30)], True, "below", id="idle-longer"),
        pytest.param([s(-5), s(10), s(25)], True, "below", id="covering-sample-before-start"),
        pytest.param([s(0), s(15, 55), s(30)], False, "a GPU at 55 % at 12:15:00", id="busy-in-between"),
        pytest.param([s(0), s(15), s(30, 10)], False, "a GPU at 10 %", id="at-threshold-is-busy"),
        pytest.param([s(0), s(15, None), s(30)], False, "no GPU reading at 12:15:00", id="no-reading-in-between"),
        pytest.param([s(0), s(15), s(30, None)], False, "no GPU reading at 12:30:00", id="no-reading-now"),
        pytest.param([s(5), s(15), s(30)], False, "sampled only since 12:05:00", id="too-new"),
        pytest.param([], False, "no sample", id="never-sampled"),
        pytest.param([s(0), s(30)], False, "no sample between", id="gap-covers-nothing"),
        pytest.param([s(-40), s(-20)], False, "no sample since 11:40:00", id="stale"),
        pytest.param([s(0), s(15, llm=150), s(30, llm=150)], False, "training still moves (llm)", id="log-grew"),
        pytest.param([s(0), s(15), s(30, llm=100, bert=3)], False, "still moves (bert)", id="a-job-started"),
        pytest.param([s(0, llm=7), s(15, llm=7), s(30, llm=7)], True, "below", id="still-log"),
        pytest.param(
            [stepped(0, 5, 100), stepped(15, 6, 100), stepped(30, 6, 100)], False, "still moves (llm)", id="step-moved"
        ),
        pytest.param(
            [stepped(0, 5, 100), stepped(15, 5, 200), stepped(30, 5, 300)], True, "below", id="step-still-log-grows"
        ),
        pytest.param(
            [stepped(0, None, 1), stepped(15, 1, 1), stepped(30, 1, 1)], False, "still moves (llm)", id="step-appears"
        ),
    ],
)
def test_idle_only_when_every_sample_of_the_window_says_so(samples: list[IdleSample], idle: bool, says: str) -> None:
    found_idle, reason = verdict(samples)
    assert found_idle is idle
    assert says in reason


def test_the_thresholds_are_the_callers() -> None:
    series = [s(0, 30), s(10, 30), s(20, 30), s(30, 30)]
    assert verdict(series) == (False, "a GPU at 30 % at 12:00:00")
    assert verdict(series, below=40)[0] is True
    assert verdict([s(20), s(30)], minutes=10)[0] is True
    assert verdict([s(20), s(30)], minutes=30)[0] is False


def reading(instance: str, minutes: float, *, busiest: float | None = 2.0, llm: int = 100) -> GpuReading:
    at = T0 + timedelta(minutes=minutes)
    if busiest is None:
        return GpuReading(instance_id=instance, at=at, state="no-answer", progress={"llm": llm})
    gpus = [GpuUse(utilization=busiest, memory_used_mib=10), GpuUse(utilization=0, memory_used_mib=0)]
    return GpuReading(instance_id=instance, at=at, state="ok", gpus=gpus, progress={"llm": llm})


def test_passes_merge_into_a_history_that_decides_and_stays_small() -> None:
    window = timedelta(minutes=30)
    history = IdleHistory()
    for minutes in (-45, -30, -15, 0, 15, 30):
        now = T0 + timedelta(minutes=minutes)
        passed = [reading(A, minutes), reading(B, minutes, busiest=None if minutes == 15 else 1)]
        # Stored between passes as JSON (in S3 beside the job records): each pass reads back what the last wrote.
        history = IdleHistory.model_validate_json(
            merge_history(history, passed, now=now, window=window).model_dump_json()
        )
    # Of what is older than the window only the sample at its start stays: the history does not grow pass by pass.
    assert [x.at for x in history.instances[A]] == [T0, T0 + PASS, NOW]
    verdicts = {v.instance_id: v for v in idle_verdicts(history, now=NOW, below_percent=10, minutes=30)}
    assert verdicts[A].idle and verdicts[A].jobs == ["llm"]
    assert not verdicts[B].idle and "no GPU reading at 12:15:00" in verdicts[B].reason
    # An instance not read by a pass is gone: it leaves the history. A pass read again replaces its sample.
    again = merge_history(history, [reading(B, 30, busiest=50)], now=NOW, window=window)
    assert list(again.instances) == [B] and again.instances[B][-1].busiest_gpu == 50
    assert len(again.instances[B]) == len(history.instances[B])
