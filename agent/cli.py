"""The agent's command line, run on the instance as `python3 <job dir>/agent/trainctl_agent.py <verb> ...`.

Verbs:
    run --spec PATH [--foreground]
        Validate the spec (agent/spec.py), detach (double fork + setsid, stdin /dev/null, stdout/stderr appended to
        agent.log), write agent.pid, print {"job", "agent_pid", "job_dir", "agent_log"} as JSON and exit 0. The
        detached agent runs the attempt (agent/runner.py) and exits when the job ends. Exit 2 on an invalid spec,
        1 when an agent of the job is already running. --foreground: no detaching.
    status --job JOB
        Print the job's local state as JSON (status document, pids and whether they live, exit code).
    poll --job JOB [--offset N] [--limit L]
        One JSON line: the local state (as `status`, plus "installed": true) and the job log from byte `offset`
        (at most `limit` bytes, default 12000): "chunk", "offset" (where the next poll starts), "size". The one
        reader of the job's on-instance state for the flows, `train logs` and teardown's training check.
    prefetch --spec PATH
        Download the latest complete checkpoint before the trainer starts (agent/prefetch.py); one JSON line.
    stop --job JOB [--grace SECONDS] [--keep-instance]
        Ask the agent to stop the job: the trainer's process group gets SIGTERM, SIGKILL after the grace
        (default 30 s), then the checkpoint and log are flushed to S3 and the status becomes `stopped`. When no
        agent is alive, does that itself from the agent's copy of the spec. Prints the final state as `poll` does
        (one JSON line, no log). --keep-instance: the instance is not shut down after this stop (agent/runner.py,
        "When the job ends"); without it, the answer may be lost as the instance goes down (the status in S3 says
        what happened).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import S3Error, SpecError
from .host import log, pid_alive, read_int, setup_logging, write_atomic
from .layout import AGENT_LOG_FILE, AGENT_PID_FILE, instance_job_dir, on_instance, validate_job_name
from .prefetch import prefetch_checkpoint
from .runner import DEFAULT_STOP_GRACE, Agent
from .spec import AgentSpec
from .state import local_status, poll_document
from .stop import stop_job


def _spec_or_error(path: str) -> AgentSpec | None:
    """The spec at `path`; else None, with the error as JSON on stderr (exit 2)."""
    try:
        return AgentSpec.load(path)
    except SpecError as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return None


def _job_arg_ok(job: str) -> bool:
    """A --job that is a job name; else the error as JSON on stderr (exit 2)."""
    try:
        validate_job_name(job)
    except SpecError as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return False
    return True


def _detach(job_dir: Path) -> int | None:
    """Double fork + setsid. Returns the daemon's pid in the caller, None in the daemon itself."""
    read_end, write_end = os.pipe()
    first = os.fork()
    if first > 0:  # the caller: learn the daemon's pid from the intermediate child
        os.close(write_end)
        os.waitpid(first, 0)
        with os.fdopen(read_end, "rb") as pipe:
            data = pipe.read().strip()
        return int(data) if data else -1
    try:
        os.close(read_end)
        os.setsid()  # no controlling terminal, no SSM session: survives the command that started us
        second = os.fork()
        if second > 0:
            os.write(write_end, str(second).encode())
            os._exit(0)
        os.close(write_end)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        out = os.open(str(job_dir / AGENT_LOG_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.closerange(3, 4096)  # nothing of the SSM command's pipes stays open here
        os.chdir(str(job_dir))
        os.umask(0o022)
    except BaseException:
        os._exit(1)
    return None


def cmd_run(args: argparse.Namespace) -> int:
    spec = _spec_or_error(args.spec)
    if spec is None:
        return 2
    job_dir = on_instance(instance_job_dir(spec.job))
    job_dir.mkdir(parents=True, exist_ok=True)
    running = read_int(job_dir / AGENT_PID_FILE)
    if running and running != os.getpid() and pid_alive(running):
        print(json.dumps({"error": f"an agent of job {spec.job} is already running (pid {running})"}), file=sys.stderr)
        return 1
    if not args.foreground:
        sys.stdout.flush()
        sys.stderr.flush()
        daemon = _detach(job_dir)
        if daemon is not None:
            print(
                json.dumps(
                    {
                        "job": spec.job,
                        "agent_pid": daemon,
                        "job_dir": str(job_dir),
                        "agent_log": str(job_dir / AGENT_LOG_FILE),
                    }
                )
            )
            return 0 if daemon > 0 else 1
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
    setup_logging()
    write_atomic(job_dir / AGENT_PID_FILE, f"{os.getpid()}\n".encode())
    agent = Agent(spec, job_dir=job_dir)

    def on_signal(signum: int, frame: Any) -> None:  # `stop`, or the machine shutting down
        log.info("signal %d: stopping the job", signum)
        agent.stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        return agent.run()
    except Exception:
        log.exception("agent crashed")
        return 1
    finally:
        log.info("agent exits")


def cmd_poll(args: argparse.Namespace) -> int:
    if not _job_arg_ok(args.job):
        return 2
    print(json.dumps(poll_document(args.job, args.offset, args.limit)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if not _job_arg_ok(args.job):
        return 2
    print(json.dumps(local_status(args.job), indent=2))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    if not _job_arg_ok(args.job):
        return 2
    setup_logging()
    job_dir = on_instance(instance_job_dir(args.job))
    stop_job(job_dir, grace=args.grace, keep_instance=args.keep_instance, upload_timeout=args.upload_timeout)
    print(json.dumps(poll_document(args.job)))
    return 0


def cmd_prefetch(args: argparse.Namespace) -> int:
    spec = _spec_or_error(args.spec)
    if spec is None:
        return 2
    setup_logging()
    try:
        answer = prefetch_checkpoint(spec)
    except (S3Error, OSError) as exc:
        print(json.dumps({"job": spec.job, "error": f"prefetch failed: {exc}"}), file=sys.stderr)
        return 1
    print(json.dumps(answer))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainctl_agent", description="trainctl on-instance agent")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run a job attempt (detaches)")
    run.add_argument("--spec", required=True)
    run.add_argument("--foreground", action="store_true", help="do not detach (debugging)")
    status = sub.add_parser("status", help="print the job's local state as JSON")
    status.add_argument("--job", required=True)
    poll = sub.add_parser("poll", help="print the job's local state and a chunk of its log as one JSON line")
    poll.add_argument("--job", required=True)
    poll.add_argument("--offset", type=int, default=0)
    poll.add_argument("--limit", type=int, default=12_000)
    prefetch = sub.add_parser("prefetch", help="download the latest checkpoint before the trainer starts")
    prefetch.add_argument("--spec", required=True)
    stop = sub.add_parser("stop", help="stop the job: SIGTERM, grace, SIGKILL, flush the checkpoint")
    stop.add_argument("--job", required=True)
    stop.add_argument("--grace", type=float, default=DEFAULT_STOP_GRACE)
    stop.add_argument("--keep-instance", action="store_true", help="do not shut the instance down after the stop")
    stop.add_argument("--upload-timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": cmd_run,
        "status": cmd_status,
        "poll": cmd_poll,
        "prefetch": cmd_prefetch,
        "stop": cmd_stop,
    }
    return handlers[args.cmd](args)
