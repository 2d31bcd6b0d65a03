"""Is training running on an instance? One SSM command per instance (DESIGN.md section 3, rule 2).

Each job's liveness comes from its agent (the one reader of a job's on-instance state: core.launch
every_agent_poll_script, the agent's `poll`); besides, the check looks for training-like processes the seeds name
(`python.*train`, `python.*training`, `python.*main.py`) that a user may have started by hand. Stopping a job is
tasks/jobs.py's (always through its agent, so it checkpoints).
"""

from __future__ import annotations

import time

from pydantic import ValidationError

from core.jobs import AgentPoll, TrainingState
from core.launch import every_agent_poll_script
from core.shell import quote
from tasks.aws import aws_task
from tasks.ssm import run_script

# `[p]ython`: the pattern never matches the command line of the process that holds it. In the sandbox every
# instance shares the host's process table, so a process counts only if its environment carries this instance's
# TRAINCTL_ROOT (on AWS the root is empty and every process of the machine counts).
# `train` must end a word so `trainctl` (our own paths, the agent) is not training; `train.py`, `train_gpt.py`,
# `training/` and `main.py` are.
TRAINING_PROCESS = r"[p]ython[^ ]*( .*)?(train(ing)?([^a-z]|$)|main\.py)"


def check_script() -> list[str]:
    return [
        *every_agent_poll_script(),
        'root="${TRAINCTL_ROOT:-}"',
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
    """The check's output as a TrainingState; without the final `checked` line, or with an agent that did not
    answer, the result is unknown (possibly running)."""
    lines = stdout.splitlines()
    if "checked" not in lines:
        return TrainingState(instance_id=instance_id, status="unknown", detail="the check did not finish")
    alive: set[str] = set()
    mute: list[str] = []
    for line in lines:
        if not line.startswith("agent "):
            continue
        _, job, answer = [*line.split(" ", 2), ""][:3]
        try:
            if AgentPoll.model_validate_json(answer).alive:
                alive.add(job)
        except (ValidationError, ValueError):
            mute.append(job)
    procs = [
        line.split(" ", 2)[2].strip() for line in lines if line.startswith("proc ") and len(line.split(" ", 2)) > 2
    ]
    status = "running" if alive or procs else "unknown" if mute else "idle"
    detail = f"the agent of {', '.join(mute)} did not answer" if mute else ""
    return TrainingState(instance_id=instance_id, status=status, jobs=sorted(alive), processes=procs, detail=detail)


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
    """Training state of one instance (one SSM command): jobs their agents report alive, training-like processes."""
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
