"""`make up` / `make down`: the whole product on this machine — Prefect server, sandbox, deployments, a worker.

    python -m deployments.up          # make up: start what is not running, deploy, print what to open
    python -m deployments.up --down   # make down: stop what `up` started

Up: the Prefect server (PREFECT_API_URL when set — a team server, Prefect Cloud —, else `trainctl server up`, the
CLI's own local server), the sandbox (`trainctl sandbox up --port 0` in the background; its environment is written
to .up/sandbox.env for your shell), the blocks (`prefect block register -m blocks`), `trainctl deploy`, and a
process worker on the `trainctl` pool whose flow runs reach the sandbox. Running it again reuses what still runs.
Everything `up` starts is recorded under .up/ (pid files, logs), so `down` stops exactly that and nothing else.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from deployments.definitions import DEFINITIONS, ROOT, WORK_POOL

STATE = ROOT / ".up"
BIN = Path(sys.executable).parent
SANDBOX_WAIT_S = 60


def _alive(name: str) -> int | None:
    """The pid recorded for `name` if that process still runs."""
    pid_file = STATE / f"{name}.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def _background(name: str, command: list[str], env: dict[str, str], stdout: Path | None = None) -> int:
    """Start `command` in its own session (so `down` ends it and its children), recorded as `name`."""
    log = (STATE / f"{name}.log").open("a")
    out = stdout.open("w") if stdout else log
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=log, start_new_session=True)
    (STATE / f"{name}.pid").write_text(str(process.pid))
    return process.pid


def _api_url(env: dict[str, str]) -> str:
    if env.get("PREFECT_API_URL"):
        return env["PREFECT_API_URL"]
    done = subprocess.run([str(BIN / "trainctl"), "server", "up"], env=env, capture_output=True, text=True)
    found = re.search(r"https?://[^\s'\"]+", done.stdout + done.stderr)
    if done.returncode != 0 or not found:
        sys.exit(
            "error: no Prefect server: `trainctl server up` failed. Set PREFECT_API_URL to a running server's API "
            f"(e.g. http://127.0.0.1:4200/api) and run again.\n{done.stdout}{done.stderr}"
        )
    (STATE / "server.started").write_text(found.group(0))
    url = found.group(0).rstrip("/")
    return url if url.endswith("/api") else f"{url}/api"


def _sandbox(env: dict[str, str]) -> dict[str, str]:
    """The sandbox's environment (AWS_ENDPOINT_URL and credentials), starting the sandbox if it is not running."""
    answer = STATE / "sandbox.json"
    if _alive("sandbox") is None:
        command = [str(BIN / "trainctl"), "sandbox", "up", "--port", "0", "--json"]
        _background("sandbox", [*command, "--state-dir", str(STATE / "sandbox-state")], env, stdout=answer)
    deadline = time.monotonic() + SANDBOX_WAIT_S
    while time.monotonic() < deadline:
        try:
            cloud: dict[str, str] = json.loads(answer.read_text())
        except (OSError, ValueError):
            time.sleep(0.5)
            continue
        lines = [f"export {name}={shlex.quote(value)}" for name, value in sorted(cloud.items())]
        (STATE / "sandbox.env").write_text("\n".join(lines) + "\n")
        return cloud
    sys.exit(f"error: the sandbox did not start within {SANDBOX_WAIT_S} s. See {STATE / 'sandbox.log'}")


def _run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"error: `{' '.join(command)}` failed (exit {done.returncode})")


def up() -> None:
    STATE.mkdir(exist_ok=True)
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env["PREFECT_API_URL"] = _api_url(env)
    env.update(_sandbox(env))
    _run([str(BIN / "prefect"), "block", "register", "-m", "blocks"], env)
    _run([str(BIN / "trainctl"), "deploy"], env)
    if _alive("worker") is None:
        _background("worker", [str(BIN / "prefect"), "worker", "start", "--pool", WORK_POOL, "--type", "process"], env)
    ui = env["PREFECT_API_URL"].removesuffix("/api")
    print(f"\nPrefect UI: {ui}   (deployments: {ui}/deployments)")
    print("deployments: " + ", ".join(d.full_name for d in DEFINITIONS))
    print(f"worker on pool {WORK_POOL}: log {STATE / 'worker.log'}; sandbox: log {STATE / 'sandbox.log'}")
    print(f"to use the sandbox from a shell: source {STATE / 'sandbox.env'}; stop everything: make down")


def down() -> None:
    for name in ("worker", "sandbox"):
        pid = _alive(name)
        if pid is not None:
            os.killpg(pid, signal.SIGTERM)  # its own session: the worker's flow runs go with it
            print(f"{name}: stopped (pid {pid})")
        (STATE / f"{name}.pid").unlink(missing_ok=True)
    if (STATE / "server.started").exists():
        subprocess.run([str(BIN / "trainctl"), "server", "down"], cwd=ROOT)
        (STATE / "server.started").unlink()


if __name__ == "__main__":
    down() if "--down" in sys.argv[1:] else up()
