"""Spot notice → training resumed, measured in the sandbox: each stage in seconds, from the records the system writes.

    make bench-recovery                                    # 1 GB checkpoint, 2-minute notice window
    python -m bench.recovery --ckpt-mb 256 --window 30     # a quicker run
    python -m bench.recovery --ckpt-mb 1 --window 5 --boot 1   # a smoke run (~1 min)

One process: a Prefect test server, a sandbox (its instances "boot" in `--boot` seconds, then show SSM Online),
and examples/train.py launched through train-launch (no wait) with a data volume. After its first step the trainer
writes a `--ckpt-mb` MB blob into its checkpoint folder; the agent syncs only every hour, so the blob first goes to
S3 in the upload the notice triggers. Then a spot notice (`cloud.interrupt_spot`, termination `--window` seconds
later) and spot-watch passes every `--period` seconds (the minute schedule, faster) until attempt 2's trainer
finishes its first resumed step.

Where each time comes from (never the bench's own guess): the agent's interruption record (notice_seen_at,
sigterm_sent_at, checkpoint_uploaded_at, recorded_at = after the verification), the agents' statuses
(started_at), the trainer's state.json (first_step_at, resumed_from_step), and EC2 states and SSM Online as a
thread polling every 0.2 s saw them (±0.2 s). "Notice" is when the bench injected it.

Figures: notice → trainer SIGTERM; notice → checkpoint verified in S3; notice → replacement Online; old instance
terminated → replacement's first resumed step; notice → first resumed step; our own overhead = notice → first
resumed step minus the notice window and minus the part of the simulated boot the window did not hide (the
sandbox's waits, which AWS imposes too). Baseline: attempt 1 itself, a fresh launch of the same job spec (launch
call → first step), and the ratio "termination → resumed step" / "fresh launch → first step".
Everything runs on this machine's cores (moto, the agents, the trainers, Prefect): AWS's figures will differ.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox import Sandbox

JOB = "bench-recovery"
BUCKET = "bench-recovery"
ZONE = "us-east-1a"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train.py"
POLL_S = 0.2
# The targets of issue 14 (in the sandbox); the checkpoint one is for a 1 GB checkpoint.
TARGET_SIGTERM_S = 6.0
TARGET_VERIFIED_S = 30.0
TARGET_OWN_OVERHEAD_S = 20.0


@dataclass
class Options:
    ckpt_mb: int = 1024
    window: float = 120.0
    period: float = 2.0
    boot: float = 20.0
    step_seconds: float = 0.5
    instance_type: str = "t3.micro"
    timeout: float = 600.0


class Watcher(threading.Thread):
    """Polls EC2 (the job's instances) and SSM (Online) and keeps when each instance was first seen in each state."""

    def __init__(self, cloud: Sandbox) -> None:
        super().__init__(name="bench-watcher", daemon=True)
        self.ec2, self.ssm = cloud.client("ec2", retries=3), cloud.client("ssm", retries=3)
        self.states: dict[str, dict[str, float]] = {}
        self.online: dict[str, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self._look()
            except Exception as exc:  # a missed look costs ±0.2 s of precision, never the run
                print(f"watcher: {exc}")
            self.done.wait(POLL_S)

    def _look(self) -> None:
        from core import tags as t

        now = time.time()
        found = self.ec2.describe_instances(Filters=[{"Name": f"tag:{t.JOB}", "Values": [JOB]}])
        for reservation in found["Reservations"]:
            for instance in reservation["Instances"]:
                self.states.setdefault(instance["InstanceId"], {}).setdefault(instance["State"]["Name"], now)
        for info in self.ssm.describe_instance_information()["InstanceInformationList"]:
            if info.get("PingStatus") == "Online":
                self.online.setdefault(info["InstanceId"], now)

    def first(self, instance_id: str, *states: str) -> float | None:
        seen = [t for s, t in self.states.get(instance_id, {}).items() if s in states]
        return min(seen) if seen else None


@dataclass
class Run:
    """What one run saw: times are epoch seconds."""

    options: Options
    launched_at: float = 0.0  # train_launch called
    volume_id: str = ""
    old_id: str = ""
    new_id: str = ""
    notice_at: float = 0.0
    first_step: dict[str, Any] = field(default_factory=dict)  # attempt 1's trainer state
    resumed: dict[str, Any] = field(default_factory=dict)  # attempt 2's trainer state
    saved: dict[str, Any] = field(default_factory=dict)  # the trainer state in the checkpoint the notice uploaded
    interruption: dict[str, Any] = field(default_factory=dict)
    agents: dict[int, dict[str, Any]] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)  # job.json at the end
    passes: list[tuple[float, float, str]] = field(default_factory=list)  # start, end, acts


def _epoch(value: Any) -> float | None:
    if not value:
        return None
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def _get_json(cloud: Sandbox, uri: str) -> dict[str, Any]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    try:
        found: dict[str, Any] = json.loads(cloud.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())
    except Exception:
        return {}
    return found


def _trainer_state(cloud: Sandbox, instance_id: str, checkpoint_dir: str) -> dict[str, Any]:
    """The trainer's state.json on the instance's disk (the sandbox keeps each instance's root in a folder)."""
    path = Path(cloud.runtime.instance_root(instance_id)) / checkpoint_dir.lstrip("/") / "state.json"
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state


def _job_spec(options: Options, code_dir: str, volume_id: str) -> Any:
    from core.jobs import JobSpec, TemplateSpec

    command = ["python3", "train.py", "--steps", "100000", "--step-seconds", str(options.step_seconds)]
    return JobSpec(
        name=JOB,
        bucket=BUCKET,
        template=TemplateSpec(instance_type=options.instance_type),
        code_dir=code_dir,
        command=[*command, "--blob-mb", str(options.ckpt_mb)],
        data_volume_id=volume_id,
        sync_interval_s=3600,  # so the blob is first uploaded by the notice's upload
    )


def _launch(cloud: Sandbox, run: Run, work: Path) -> str:
    """Attempt 1 through train-launch (no wait), until its trainer ran two steps (so the blob is written).
    Returns the trainer's checkpoint folder on the instance."""
    from core.ebs import VolumeSpec
    from flows.train_launch import train_launch
    from tasks.ebs import create_volume

    cloud.client("s3").create_bucket(Bucket=BUCKET)
    volume = create_volume.fn(VolumeSpec(name="bench-data", size_gib=10), availability_zone=ZONE)
    code = work / "code"
    code.mkdir()
    shutil.copy(EXAMPLE, code / "train.py")
    run.volume_id = volume.id
    spec = _job_spec(run.options, str(code), volume.id)
    run.launched_at = time.time()
    run.old_id = train_launch(spec).instance_id or ""
    # Step 2 is saved after the blob (written once, after step 1) is in the folder.
    blob_s = run.options.ckpt_mb / 50 + 30  # generous: 1 GB of random bytes written and fsynced
    if not cloud.wait_for(
        lambda: _trainer_state(cloud, run.old_id, spec.resolved_checkpoint_dir).get("step", 0) >= 2, blob_s, 0.1
    ):
        raise SystemExit(f"attempt 1's trainer on {run.old_id} did not reach step 2 within {blob_s:.0f} s")
    run.first_step = _trainer_state(cloud, run.old_id, spec.resolved_checkpoint_dir)
    return str(spec.resolved_checkpoint_dir)


def _resumed_state(cloud: Sandbox, checkpoint_dir: str) -> tuple[str, dict[str, Any]]:
    """Attempt 2's instance and its trainer's state once it finished a step (else {})."""
    from core import jobs

    record = _get_json(cloud, jobs.job_record_uri(BUCKET, JOB))
    attempts = record.get("attempts") or []
    second = next((a for a in attempts if a.get("number") == 2), None)
    instance_id = (second or {}).get("instance_id") or ""
    if not instance_id:
        return "", {}
    state = _trainer_state(cloud, instance_id, checkpoint_dir)
    return instance_id, state if str(state.get("attempt")) == "2" and state.get("first_step_at") else {}


def _watch_until_resumed(cloud: Sandbox, run: Run, checkpoint_dir: str) -> None:
    """spot-watch passes, one every `period` seconds (or right after the previous one, if it ran longer), until
    attempt 2's trainer reports its first step."""
    from flows.spot_watch import SpotWatchRequest, spot_watch

    deadline = run.notice_at + run.options.window + run.options.timeout
    next_pass = time.time()
    while time.time() < deadline:
        if time.time() >= next_pass:
            start = time.time()
            report = spot_watch(SpotWatchRequest(buckets=[BUCKET]))
            run.passes.append((start, time.time(), "; ".join(j.act for j in report.jobs)))
            while next_pass <= time.time():
                next_pass += run.options.period
        run.new_id, run.resumed = _resumed_state(cloud, checkpoint_dir)
        if run.resumed:
            return
        time.sleep(0.1)
    raise SystemExit(f"attempt 2 did not report a resumed step within {run.options.timeout:.0f} s of the window")


def measure(cloud: Sandbox, options: Options) -> Run:
    """The scenario, in a sandbox whose environment is exported (AWS_ENDPOINT_URL …) and with a Prefect API."""
    from core import jobs

    run = Run(options=options)
    work = Path(tempfile.mkdtemp(prefix="trainctl-bench-recovery-"))
    try:
        checkpoint_dir = _launch(cloud, run, work)
        run.notice_at = time.time()
        cloud.interrupt_spot(run.old_id, delay_seconds=options.window)
        _watch_until_resumed(cloud, run, checkpoint_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    run.interruption = _get_json(cloud, jobs.interruption_uri(BUCKET, JOB, run.old_id))
    run.agents = {n: _get_json(cloud, jobs.status_uri(BUCKET, JOB, n)) for n in (1, 2)}
    run.record = _get_json(cloud, jobs.job_record_uri(BUCKET, JOB))
    seq = run.interruption.get("checkpoint_seq")
    if isinstance(seq, int):
        folder = jobs.default_checkpoint_uri(BUCKET, JOB) + jobs.checkpoint_folder(seq)
        run.saved = _get_json(cloud, folder + "state.json")
    time.sleep(POLL_S * 2)  # the watcher's last look
    return run


# -- figures -------------------------------------------------------------------------------------------------------


@dataclass
class Figures:
    timeline: list[tuple[str, float | None]]  # (event, seconds since the notice)
    stages: list[tuple[str, float | None]]  # (figure, seconds)
    targets: list[tuple[str, float | None, float]]  # (target, seconds, limit)
    notes: list[str]


def _since(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


SIGTERM, VERIFIED, LAUNCHED, ONLINE = (
    "trainer SIGTERM sent",
    "checkpoint verified in S3",
    "replacement launched",
    "replacement SSM Online",
)
TERMINATED, RESUMED = "old instance terminated", "first resumed step"


def _moments(run: Run, watcher: Watcher) -> dict[str, float | None]:
    """When each event happened (epoch seconds), from the record that says it; None: not recorded."""
    rec = run.interruption
    claimed = next((a.get("created_at") for a in run.record.get("attempts", []) if a.get("number") == 2), None)
    return {
        "notice injected": run.notice_at,
        "agent saw the notice": _epoch(rec.get("notice_seen_at")),
        SIGTERM: _epoch(rec.get("sigterm_sent_at")),
        "trainer exited": _epoch(rec.get("job_exited_at")),
        "checkpoint uploaded": _epoch(rec.get("checkpoint_uploaded_at")),
        VERIFIED: _epoch(rec.get("recorded_at")),  # the agent records right after its verification
        "attempt 2 claimed by spot-watch (job.json)": _epoch(claimed),
        LAUNCHED: watcher.first(run.new_id, "pending", "running"),
        ONLINE: watcher.online.get(run.new_id),
        TERMINATED: watcher.first(run.old_id, "shutting-down", "terminated"),
        "attempt 2's trainer started (checkpoint restored)": _epoch(run.agents.get(2, {}).get("started_at")),
        RESUMED: _epoch(run.resumed.get("first_step_at")),
    }


def figures(run: Run, watcher: Watcher) -> Figures:
    o, notice, rec = run.options, run.notice_at, run.interruption
    at = _moments(run, watcher)
    launched2, terminated = at[LAUNCHED], at[TERMINATED]
    exposed_boot = (
        None if launched2 is None or terminated is None else min(o.boot, max(0.0, launched2 + o.boot - terminated))
    )
    term_to_step = _since(terminated, at[RESUMED])
    own = None if term_to_step is None or exposed_boot is None else term_to_step - exposed_boot
    baseline = _since(run.launched_at, _epoch(run.first_step.get("first_step_at")))
    timeline = [(event, _since(notice, when)) for event, when in at.items()]
    stages = [
        ("notice → trainer SIGTERM", _since(notice, at[SIGTERM])),
        ("notice → checkpoint verified in S3", _since(notice, at[VERIFIED])),
        ("notice → replacement Online", _since(notice, at[ONLINE])),
        ("old instance terminated → first resumed step", term_to_step),
        ("notice → first resumed step", _since(notice, at[RESUMED])),
        ("  the notice window (simulated)", o.window),
        ("  the boot the window did not hide (simulated)", exposed_boot),
        ("own overhead: terminated → step − that boot", own),
        ("baseline: fresh launch → first step (attempt 1)", baseline),
    ]
    ratio = None if term_to_step is None or not baseline else term_to_step / baseline
    notes = [
        f"termination → resumed step / fresh launch → first step = {ratio:.2f}" if ratio is not None else "ratio: n/a",
        f"attempt 2 resumed from step {run.resumed.get('resumed_from_step')}; attempt 1 saved step "
        f"{run.saved.get('step')} (checkpoint {rec.get('checkpoint_seq')}, verified {rec.get('verified')}: "
        f"{rec.get('verify_detail')})",
        f"spot-watch passes: {len(run.passes)}, the longest {max((e - s for s, e, _ in run.passes), default=0):.1f} s "
        f"(the resuming pass waits in launch_attempt until the old instance lets go); each pass (s after the notice, "
        f"acts): " + ", ".join(f"{s - notice:+.1f}…{e - notice:+.1f} {acts or '-'}" for s, e, acts in run.passes),
    ]
    targets = [
        ("notice → trainer SIGTERM", _since(notice, at[SIGTERM]), TARGET_SIGTERM_S),
        (
            f"notice → checkpoint verified ({o.ckpt_mb} MB; target for 1024)",
            _since(notice, at[VERIFIED]),
            TARGET_VERIFIED_S,
        ),
        ("terminated → resumed step, own overhead beyond the launch", own, TARGET_OWN_OVERHEAD_S),
    ]
    return Figures(timeline, stages, targets, notes)


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:8.1f}"


def report(run: Run, found: Figures) -> None:
    o = run.options
    print(
        f"\nrecovery: {o.ckpt_mb} MB checkpoint, {o.window:g} s notice window, {o.boot:g} s simulated boot, "
        f"spot-watch every {o.period:g} s, {o.instance_type}; {run.old_id} → {run.new_id}"
    )
    print("\ntimeline (s after the notice)")
    for event, at in found.timeline:
        print(f"  {event:<52} {_seconds(at)}")
    print("\nfigures (s)")
    for name, value in found.stages:
        print(f"  {name:<52} {_seconds(value)}")
    print()
    for note in found.notes:
        print(f"  {note}")
    print("\ntargets")
    for name, value, limit in found.targets:
        verdict = "n/a " if value is None else ("pass" if value <= limit else "FAIL")
        print(f"  {verdict}  {name:<60} {_seconds(value)} ≤ {limit:g}")


# -- the process ---------------------------------------------------------------------------------------------------


def _isolate() -> None:
    """A private Prefect home and dummy AWS credentials (as tests/conftest.py): nothing reaches real AWS or the
    user's Prefect. Before prefect or boto3 is imported: both read their settings on import."""
    home = Path(tempfile.mkdtemp(prefix="trainctl-bench-recovery-home-"))
    for key in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        os.environ.pop(key, None)
    os.environ.update(
        {
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
            "AWS_CONFIG_FILE": str(home / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )


@contextmanager
def sandbox(boot: float) -> Iterator[Sandbox]:
    """A sandbox whose endpoint and keys are exported, as a user's `export` would do."""
    from blocks.aws import clear_client_cache
    from sandbox import Sandbox

    with Sandbox(boot_delay=boot) as cloud:
        os.environ.update(cloud.env)
        clear_client_cache()
        yield cloud


def teardown_job(cloud: Sandbox) -> None:
    """End what the run started: the job's instances (its trainer saves first) through safe-teardown."""
    from flows.teardown import TeardownRequest, safe_teardown

    request = TeardownRequest(job=JOB, bucket=BUCKET, dry_run=False, force=True, force_training=True)
    try:
        safe_teardown(request)
    except Exception as exc:  # the sandbox is stopped next anyway: its instances end with it
        print(f"teardown of {JOB}: {exc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Options()
    parser.add_argument("--ckpt-mb", type=int, default=default.ckpt_mb, help="checkpoint blob size (MB)")
    parser.add_argument("--window", type=float, default=default.window, help="notice → termination (s)")
    parser.add_argument("--period", type=float, default=default.period, help="spot-watch pass period (s)")
    parser.add_argument("--boot", type=float, default=default.boot, help="simulated boot: launch → SSM Online (s)")
    parser.add_argument("--step-seconds", type=float, default=default.step_seconds, help="the trainer's step (s)")
    parser.add_argument("--instance-type", default=default.instance_type)
    parser.add_argument("--timeout", type=float, default=default.timeout, help="give up this long after the window")
    args = parser.parse_args(argv)
    options = Options(
        ckpt_mb=args.ckpt_mb,
        window=args.window,
        period=args.period,
        boot=args.boot,
        step_seconds=args.step_seconds,
        instance_type=args.instance_type,
        timeout=args.timeout,
    )
    _isolate()
    from prefect.testing.utilities import prefect_test_harness

    print("starting a Prefect test server and the sandbox …", flush=True)
    with prefect_test_harness(server_startup_timeout=120), sandbox(options.boot) as cloud:
        watcher = Watcher(cloud)
        watcher.start()
        try:
            run = measure(cloud, options)
            report(run, figures(run, watcher))
        finally:  # Ctrl-C included: the job's instances, then the sandbox and the server (the `with`s)
            watcher.done.set()
            print("ending the job …", flush=True)
            teardown_job(cloud)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
