"""Teardown's training check (tasks/jobs.py): each job's liveness comes from its agent's `poll`."""

from __future__ import annotations

import subprocess
from pathlib import Path

from core import jobs
from core.launch import AGENT_SCRIPT
from tasks.jobs import check_script, parse_check
from tests.conftest import ship_agent


def _job(root: Path, job: str, *, agent: bool | bytes = True, pid: int | None = None) -> None:
    """`agent`: True ships the agent as train-launch does, bytes replace its entry script, False ships none."""
    job_dir = root / jobs.instance_job_dir(job).lstrip("/")
    job_dir.mkdir(parents=True)
    if agent is not False:
        ship_agent(job_dir)
    if isinstance(agent, bytes):
        (job_dir / AGENT_SCRIPT).write_bytes(agent)
    if pid is not None:
        (job_dir / jobs.PID_FILE).write_text(f"{pid}\n")


def _check(root: Path) -> str:
    """The check as SSM runs it: a script file (`bash -c` would put the script's own text in `ps`)."""
    script = root / "check.sh"
    script.write_text("\n".join(check_script()))
    env = {"TRAINCTL_ROOT": str(root), "PATH": "/usr/bin:/bin"}
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env).stdout


def test_the_check_asks_each_jobs_agent(tmp_path: Path) -> None:
    trainer = subprocess.Popen(["sleep", "60"])
    try:
        _job(tmp_path, "live", pid=trainer.pid)
        _job(tmp_path, "ended", pid=2**22 + 7)  # a pid no process has
        _job(tmp_path, "no-agent", agent=False, pid=trainer.pid)  # no agent shipped: never a trainer of ours
        state = parse_check("i-0123456789abcdef0", _check(tmp_path))
        assert (state.status, state.jobs) == ("running", ["live"])
        trainer.kill()
        trainer.wait()
        state = parse_check("i-0123456789abcdef0", _check(tmp_path))
        assert (state.status, state.jobs) == ("idle", [])
        # An agent that cannot answer: nobody can say the job is not running.
        _job(tmp_path, "broken", agent=b"raise SystemExit(3)\n")
        state = parse_check("i-0123456789abcdef0", _check(tmp_path))
        assert state.status == "unknown" and "broken" in state.detail
    finally:
        trainer.kill()
