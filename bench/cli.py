"""How long `trainctl` commands take as a user runs them: each one a whole process, timed from outside.

    make bench-cli
    python -m bench.cli --runs 5 --flow-runs 3

Against a sandbox this process starts (with a managed instance, a managed data volume and a job record in S3), it
times `trainctl --help`, `resources list`, `ebs attach` then `ebs detach` of the volume (a real attach and detach
cycle: each run attaches and detaches again), `train status` and a `teardown --job` dry run, in two settings:

- no server: PREFECT_API_URL unset and TRAINCTL_PREFECT_SERVER=temporary, so a flow command starts Prefect's
  temporary server in its own process (without the opt-out it would start the local server, `trainctl server up`);
- server up: a `prefect server start` this bench starts on a free port (its own temporary PREFECT_HOME), with
  PREFECT_API_URL pointing at it.

Each figure is the median of the runs, with min and max; one warm-up run of each command is not counted.
Targets (issue 17): a command that runs no flow ≤ 1.5 s wall; a flow command's overhead beyond its AWS work ≤ 3 s
with the server up. That overhead is the process's wall time minus the flow run's own run time as the Prefect API
recorded it (start to end of the run): imports, reaching the API, creating the run and exiting are counted, but the
Prefect work inside the run (recording its task runs) counts as the flow's, so the figure is a lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.processes import stop_group

if TYPE_CHECKING:
    from sandbox import Sandbox

NO_FLOW_TARGET_S = 1.5
FLOW_OVERHEAD_TARGET_S = 3.0
JOB = "bench-cli"
BUCKET = "bench-cli-records"
TEARDOWN_FLOW = "safe-teardown"
MODES = ("no server", "server up")
SERVER_START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Command:
    """One measured command: its name in the report, its arguments, and whether it runs a Prefect flow."""

    name: str
    args: tuple[str, ...]
    flow: bool = False


@dataclass
class Timing:
    """The runs of one command in one mode: wall seconds, and (server up, flow commands) each flow run's own time."""

    command: Command
    mode: str
    walls: list[float] = field(default_factory=list)
    flow_runs: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float

    def text(self) -> str:
        return f"{self.median:6.2f} s ({self.low:.2f}–{self.high:.2f})"


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("no runs to summarize")
    return Summary(statistics.median(values), min(values), max(values))


def commands(volume: str, instance: str) -> list[Command]:
    """The commands of the issue, in the order they are run (attach before detach: one cycle per run)."""
    return [
        Command("--help", ("--help",)),
        Command("resources list", ("resources", "list")),
        Command("ebs attach", ("ebs", "attach", volume, instance)),
        Command("ebs detach", ("ebs", "detach", volume)),
        Command("train status", ("train", "status", JOB, "--bucket", BUCKET)),
        Command("teardown dry run", ("teardown", "--job", JOB, "--bucket", BUCKET), flow=True),
    ]


def overheads(timing: Timing) -> list[float]:
    """Per run: the process's wall time minus the flow run's own time (a run without a flow time has none)."""
    return [wall - flow for wall, flow in zip(timing.walls, timing.flow_runs, strict=False)]


def verdict(timing: Timing) -> str:
    """The target this row is held to, and whether its median meets it."""
    if not timing.command.flow:
        ok = summarize(timing.walls).median <= NO_FLOW_TARGET_S
        return f"{'ok' if ok else 'MISSED'} (target ≤ {NO_FLOW_TARGET_S:g} s)"
    if timing.mode != "server up":
        return "(no target without a server)"
    if not timing.flow_runs:
        return "no flow run time from the API"
    overhead = summarize(overheads(timing))
    ok = overhead.median <= FLOW_OVERHEAD_TARGET_S
    return f"overhead {overhead.median:.2f} s: {'ok' if ok else 'MISSED'} (target ≤ {FLOW_OVERHEAD_TARGET_S:g} s)"


def report_lines(timings: Sequence[Timing], runs: int, flow_runs: int) -> list[str]:
    lines = [
        f"trainctl commands, each a whole process: median (min–max) wall seconds of {runs} runs "
        f"({flow_runs} for the flow command), one warm-up run each not counted",
        f"{'command':<18} {'mode':<10} {'wall':<26} {'flow run (API)':<24} verdict",
    ]
    for timing in timings:
        flow = summarize(timing.flow_runs).text() if timing.flow_runs else ""
        wall = summarize(timing.walls).text()
        lines.append(f"{timing.command.name:<18} {timing.mode:<10} {wall:<26} {flow:<24} {verdict(timing)}")
    lines.append(
        "overhead = process wall time − the flow run's own time (start to end, as the Prefect API recorded it): "
        "imports, reaching the API, creating the run and exiting; Prefect's work inside the run counts as the flow's."
    )
    return lines


def run_seconds(flow_run: dict[str, Any]) -> float:
    """A flow run's own time from its API document: end_time − start_time."""
    start, end = flow_run.get("start_time"), flow_run.get("end_time")
    if not start or not end:
        raise ValueError(
            f"flow run {flow_run.get('name')!r} has no start and end time (state {flow_run.get('state_type')})"
        )
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def latest_flow_run_filter(flow_name: str) -> dict[str, Any]:
    """The body of POST /flow_runs/filter for the newest run of `flow_name`."""
    return {"flows": {"name": {"any_": [flow_name]}}, "sort": "START_TIME_DESC", "limit": 1}


# -- the impure part: processes, the sandbox, the server -----------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _post_json(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(  # noqa: S310 - http to our own local server
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - our own local server
        return json.loads(answer.read())


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as answer:  # noqa: S310 - our own server
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """`prefect server start` on a free port of 127.0.0.1 with `home` as PREFECT_HOME; yields its API URL."""
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    prefect = Path(sys.executable).with_name("prefect")
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped with everything it started
    )
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not _healthy(api_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start (log: {home / 'server.log'})")
            time.sleep(0.5)
        yield api_url
    finally:
        stop_group(proc, term_wait_s=20.0, kill_wait_s=10.0)
        log.close()


def _trainctl() -> list[str]:
    """The console script users run (the venv's), else the module."""
    script = Path(sys.executable).with_name("trainctl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]


def time_command(command: Command, env: dict[str, str]) -> float:
    """Wall seconds of one whole `trainctl` process; a failed command stops the bench with its output."""
    started = time.perf_counter()
    done = subprocess.run([*_trainctl(), *command.args], env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"`trainctl {' '.join(command.args)}` exited {done.returncode}:\n{done.stderr[-2000:]}")
    return elapsed


def _flow_run_time(api_url: str) -> float:
    runs = _post_json(f"{api_url}/flow_runs/filter", latest_flow_run_filter(TEARDOWN_FLOW))
    if not runs or runs[0].get("state_type") != "COMPLETED":
        raise RuntimeError(f"no completed {TEARDOWN_FLOW} run in the API: {runs[:1]}")
    return run_seconds(runs[0])


def measure_mode(mode: str, cmds: list[Command], env: dict[str, str], runs: int, flow_runs: int) -> list[Timing]:
    """Every command of `mode`, warm-up first; attach and detach alternate, so each run is a real cycle."""
    timings = {c.name: Timing(c, mode) for c in cmds}
    api_url = env.get("PREFECT_API_URL")
    for command in cmds:  # warm-up: caches, bytecode, the temporary server's database
        time_command(command, env)
    for n in range(runs):
        for command in cmds:
            if command.flow and n >= flow_runs:
                continue
            timings[command.name].walls.append(time_command(command, env))
            if command.flow and api_url:
                timings[command.name].flow_runs.append(_flow_run_time(api_url))
        print(f"  {mode}: run {n + 1}/{runs} done", file=sys.stderr, flush=True)
    return list(timings.values())


def make_scene(cloud: Sandbox) -> tuple[str, str]:
    """A managed running instance, a managed data volume in its AZ, and the job's record in S3: (volume, instance)."""
    from core import tags as t
    from core.jobs import AttemptRecord, JobRecord, JobStatus
    from tasks.jobs import write_record

    ec2 = cloud.client("ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance = ec2.run_instances(
        ImageId=image,
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        Placement={"AvailabilityZone": "us-east-1a"},
        TagSpecifications=t.tag_specifications("instance", t.managed_tags(job=JOB, role=t.Role.TRAIN, bucket=BUCKET)),
    )["Instances"][0]["InstanceId"]
    volume = ec2.create_volume(
        AvailabilityZone="us-east-1a",
        Size=10,
        TagSpecifications=t.tag_specifications(
            "volume", t.managed_tags(job=JOB, role=t.Role.DATA, name=f"{JOB}-data", persistent=True)
        ),
    )["VolumeId"]
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    now = datetime.now(UTC)
    attempt = AttemptRecord(number=1, instance_id=instance, created_at=now)
    record = JobRecord(name=JOB, bucket=BUCKET, status=JobStatus.RUNNING, attempts=[attempt], created_at=now)
    write_record.fn(record, expected_etag=None)
    return str(volume), str(instance)


def _isolated_env(home: Path) -> None:
    """No real AWS configuration or Prefect profile reaches the commands (as tests/conftest.py does)."""
    for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_API_KEY"):
        os.environ.pop(key, None)
    os.environ.update(
        {
            "AWS_CONFIG_FILE": str(home / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "TRAINCTL_CACHE_DIR": str(home / "cache"),
        }
    )


def measure(runs: int, flow_runs: int, modes: Sequence[str] = MODES) -> list[Timing]:
    home = Path(tempfile.mkdtemp(prefix="trainctl-bench-cli-"))
    _isolated_env(home)
    from blocks.aws import clear_client_cache
    from sandbox import Sandbox

    try:
        with Sandbox(boot_delay=0.2) as cloud:
            os.environ.update(cloud.env)
            clear_client_cache()
            volume, instance = make_scene(cloud)
            cmds = commands(volume, instance)
            timings: list[Timing] = []
            if "no server" in modes:
                (home / "temporary").mkdir()
                # Prefect's temporary server per command (the CLI's opt-out), never the user's local server.
                env = {**os.environ, "PREFECT_HOME": str(home / "temporary"), "TRAINCTL_PREFECT_SERVER": "temporary"}
                env["TRAINCTL_DATA_HOME"] = str(home / "data")
                timings += measure_mode("no server", cmds, env, runs, flow_runs)
            if "server up" in modes:
                (home / "server").mkdir()
                with prefect_server(home / "server") as api_url:
                    env = {**os.environ, "PREFECT_HOME": str(home / "server"), "PREFECT_API_URL": api_url}
                    timings += measure_mode("server up", cmds, env, runs, flow_runs)
            return timings
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="Counted runs of each command (default 5).")
    parser.add_argument("--flow-runs", type=int, default=3, help="Counted runs of the flow command (default 3).")
    parser.add_argument("--mode", choices=[*MODES, "both"], default="both", help="Which settings to measure.")
    args = parser.parse_args(argv)
    modes = MODES if args.mode == "both" else (args.mode,)
    timings = measure(max(1, args.runs), max(1, min(args.flow_runs, args.runs)), modes)
    print("\n".join(report_lines(timings, args.runs, args.flow_runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
