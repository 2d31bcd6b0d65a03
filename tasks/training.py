"""Is training running on an instance? One SSM command per instance (DESIGN.md section 3, rule 2).

The check reads every job's pid file under the jobs folder (core/jobs.py) and asks `kill -0`, and looks for
training-like processes the seeds name (`python.*train`, `python.*training`, `python.*main.py`) that a user may
have started by hand. The exit_code file is deliberately not consulted: a live pid is the only proof that matters
(an exit_code written by a previous attempt says nothing about the process running now).

Also the two actions on a running job that teardown needs: stop it (SIGTERM to its process group: the trainer's
contract is "save now and exit") and flush its checkpoint (SIGTERM to the agent, which uploads the last
checkpoint, manifest last, before it exits; DESIGN.md section 5).
"""

from __future__ import annotations

import time

from core import jobs
from core.jobs import TrainingState
from core.shell import on_instance, quote
from tasks.aws import aws_task
from tasks.ssm import run_script

# `[p]ython`: the pattern never matches the command line of the process that holds it. In the sandbox every
# instance shares the host's process table, so a process counts only if its environment carries this instance's
# TRAINCTL_ROOT (on AWS the root is empty and every process of the machine counts).
# `train` must end a word so `trainctl` (our own paths, the agent) is not training; `train.py`, `train_gpt.py`,
# `training/` and `main.py` are.
TRAINING_PROCESS = r"[p]ython[^ ]*( .*)?(train(ing)?([^a-z]|$)|main\.py)"


def check_script() -> list[str]:
    jobs_dir = on_instance(jobs.INSTANCE_JOBS_DIR)
    return [
        f"jobs_dir={jobs_dir}",
        'root="${TRAINCTL_ROOT:-}"',
        'for f in "$jobs_dir"/*/' + jobs.PID_FILE + "; do",
        '  [ -f "$f" ] || continue',
        '  job=$(basename "$(dirname "$f")")',
        "  pid=$(tr -cd '0-9' < \"$f\")",
        '  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "pid $job $pid alive"; '
        'else echo "pid $job ${pid:-none} dead"; fi',
        "done",
        # One `ps` for the whole table (a fork per process would cost seconds on a busy host).
        f"ps -eo pid=,args= 2>/dev/null | grep -E {quote(TRAINING_PROCESS)} | while read -r pid cmd; do",
        '  [ "$pid" = "$$" ] && continue',
        '  if [ -n "$root" ]; then',
        "    tr '\\0' '\\n' < \"/proc/$pid/environ\" 2>/dev/null | grep -qxF \"TRAINCTL_ROOT=$root\" || continue",
        "  fi",
        '  echo "proc $pid $cmd"',
        "done",
        "echo checked",
    ]


def parse_check(instance_id: str, stdout: str) -> TrainingState:
    """The check's output as a TrainingState; without the final `checked` line the result is unknown."""
    lines = stdout.splitlines()
    if "checked" not in lines:
        return TrainingState(instance_id=instance_id, status="unknown", detail="the check did not finish")
    alive = sorted({line.split()[1] for line in lines if line.startswith("pid ") and line.endswith(" alive")})
    procs = [
        line.split(" ", 2)[2].strip() for line in lines if line.startswith("proc ") and len(line.split(" ", 2)) > 2
    ]
    status = "running" if alive or procs else "idle"
    return TrainingState(instance_id=instance_id, status=status, jobs=alive, processes=procs)


def detect_training_fn(instance_id: str, *, timeout_s: int = 60, account: str | None = None) -> TrainingState:
    """Plain function behind `detect_training`: never raises for an unreachable instance (status unknown)."""
    try:
        result = run_script(
            instance_id, check_script(), timeout_s=timeout_s, comment="trainctl: training check", account=account
        )
    except Exception as exc:  # SSM refused or unreachable: the planner treats unknown as possibly running
        return TrainingState(instance_id=instance_id, status="unknown", detail=str(exc)[:300])
    if not result.ok:
        return TrainingState(instance_id=instance_id, status="unknown", detail=result.describe_failure()[:300])
    return parse_check(instance_id, result.stdout)


@aws_task(name="detect-training", tags=["aws-ssm"], retries=0)
def detect_training(instance_id: str, *, timeout_s: int = 60, account: str | None = None) -> TrainingState:
    """Training state of one instance (one SSM command): running jobs (live pid) and training-like processes."""
    return detect_training_fn(instance_id, timeout_s=timeout_s, account=account)


@aws_task(name="wait-training-done", tags=["aws-ssm"], retries=0)
def wait_training_done(
    instance_id: str, *, timeout_s: float, poll_s: float = 5.0, account: str | None = None
) -> TrainingState:
    """Poll until nothing trains on the instance; returns the last state (still running = timed out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = detect_training_fn(instance_id, account=account)
        if state.status == "idle" or time.monotonic() > deadline:
            return state
        time.sleep(poll_s)


def _signal_script(pid_file: str, grace_s: int) -> list[str]:
    """SIGTERM the process group a pid file names, wait up to `grace_s` for it to exit, then SIGKILL."""
    return [
        f"f={pid_file}",
        '[ -f "$f" ] || { echo "no pid file"; exit 0; }',
        "pid=$(tr -cd '0-9' < \"$f\")",
        '[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || { echo "not running"; exit 0; }',
        'kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true',
        f'for i in $(seq 1 {int(grace_s) * 5}); do kill -0 "$pid" 2>/dev/null || {{ echo stopped; exit 0; }}; '
        "sleep 0.2; done",
        'kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true',
        'echo "killed after the grace period"',
    ]


def _job_pid_files(file_name: str) -> str:
    return on_instance(jobs.INSTANCE_JOBS_DIR) + "/*/" + file_name


def stop_jobs_script(grace_s: int) -> list[str]:
    """Every job on the instance (each pid file), stopped the trainer's way: SIGTERM = save now and exit."""
    return [
        f"for f in {_job_pid_files(jobs.PID_FILE)}; do",
        '  [ -f "$f" ] || continue',
        '  echo "job $(basename "$(dirname "$f")")"',
        "  (",
        *[f"    {line}" for line in _signal_script('"$f"', grace_s)],
        "  )",
        "done",
        "echo done",
    ]


def flush_script(grace_s: int) -> list[str]:
    """Ask each job's agent to upload the last checkpoint and exit (SIGTERM), and wait for it."""
    return [
        f"for f in {_job_pid_files(jobs.AGENT_PID_FILE)}; do",
        '  [ -f "$f" ] || continue',
        '  echo "agent $(basename "$(dirname "$f")")"',
        "  (",
        *[f"    {line}" for line in _signal_script('"$f"', grace_s)],
        "  )",
        "done",
        "echo done",
    ]


@aws_task(name="stop-jobs", tags=["aws-ssm"], retries=0)
def stop_jobs(instance_id: str, *, grace_s: int = 120, account: str | None = None) -> str:
    """Stop every job on the instance (idempotent: a stopped job is "not running"). Returns the script's log."""
    from tasks.ssm import CommandFailedError

    result = run_script(instance_id, stop_jobs_script(grace_s), timeout_s=grace_s + 60, account=account)
    if not result.ok:
        raise CommandFailedError(result, "stopping the training jobs")
    return result.stdout


@aws_task(name="flush-checkpoints", tags=["aws-ssm"], retries=0)
def flush_checkpoints(instance_id: str, *, grace_s: int = 300, account: str | None = None) -> str:
    """Let each job's agent upload its last checkpoint and exit (idempotent: no agent = nothing to flush)."""
    from tasks.ssm import CommandFailedError

    result = run_script(instance_id, flush_script(grace_s), timeout_s=grace_s + 60, account=account)
    if not result.ok:
        raise CommandFailedError(result, "flushing the checkpoints")
    return result.stdout
