"""Each data strategy's time to the first batch, measured in the sandbox, next to the advice's estimate.

    make bench-data                                  # 200 files, 300 MB in all
    python -m bench.data --files 50 --mb 40          # a quicker run
    python -m bench.data --files 20 --mb 2 --boot 0.2  # a smoke run

One process: a Prefect test server, a sandbox, one dataset in S3 (`--files` objects of random bytes, `--mb` MB in
all), and examples/train_data.py launched through train-launch (wait) once per strategy, each job on the same
instance type (`--instance-type`, one with an instance store, so local-cache can run): direct-s3, local-cache,
prewarmed-ebs twice (the first prewarms a new volume, the second reuses it: no prewarm instance), existing-ebs (the
prewarmed volume, named by the job), after one unmeasured warm-up launch. Measured: from the launch request (the
bench's clock just before train_launch) to the trainer's first batch (its `first_batch_at`, on the same machine's
clock). The launch's own part (instance, SSM online, code and agent, the trainer's start) is the same for every
strategy: direct-s3's launch → trainer start is taken as it, and "data" is the measured time less it (so a few
seconds of the launches' own variation show in it). The advice's estimate for the same inputs (dataset, instance
type, AZ, 1 run, 1 epoch; the volumes that exist at that moment) is asked just before each launch, the way
train-launch asks it. The ratio is data / estimate.

The estimate uses AWS's figures (S3 at 85 MB/s per connection and 0.1 s per first byte, gp3 throughput, instance
store NVMe, a 300 s prewarm overhead, ...). The sandbox is one machine: its S3 is moto on localhost, its volumes are
folders, its instances boot in `--boot` seconds. So the ratios say how far this machine is from AWS's figures, not
whether the advice is right on AWS; what carries over is the order of the strategies and what each one waits for.
Every trainer's checksums are compared with S3's (each strategy delivers the same files).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.recovery import _isolate, sandbox

if TYPE_CHECKING:
    from core.jobs import JobSpec
    from sandbox import Sandbox

BUCKET = "bench-data-jobs"
DATA_BUCKET = "bench-data"
SOURCE = f"s3://{DATA_BUCKET}/set/"
ZONE = "us-east-1a"
TRAINER = Path(__file__).resolve().parents[1] / "examples" / "train_data.py"


@dataclass
class Options:
    files: int = 200
    mb: float = 300.0
    instance_type: str = "g4dn.xlarge"  # 125 GB of NVMe instance store: local-cache can run
    boot: float = 2.0
    workers: int = 8


@dataclass
class Row:
    """One launch: what was asked, what ran, when its trainer read the first batch, and what the advice said."""

    label: str
    asked: str
    ran: str = ""
    why: str = ""
    launched_at: float = 0.0
    first_batch_at: float = 0.0
    trainer_first_batch_s: float = 0.0  # from the trainer's start to its first batch (its own clock)
    data_step_s: float = 0.0  # the launch's data step (a prewarm, when one ran)
    estimate_s: float | None = None
    files_match: bool = False
    volume_id: str | None = None

    @property
    def measured_s(self) -> float:
        return self.first_batch_at - self.launched_at

    @property
    def trainer_started_after_s(self) -> float:
        """Launch request → the trainer's start (the launch, plus a data step or a copy before the trainer)."""
        return self.measured_s - self.trainer_first_batch_s


@dataclass
class Run:
    options: Options
    rows: list[Row] = field(default_factory=list)
    in_s3: dict[str, str] = field(default_factory=dict)
    prewarm_instances: int = 0


def upload_dataset(cloud: Sandbox, options: Options) -> dict[str, str]:
    """`files` objects of random bytes, `mb` MB in all (sizes spread from half to one and a half the mean, as a
    real dataset's are); returns relative key → sha256."""
    s3 = cloud.client("s3")
    for bucket in (BUCKET, DATA_BUCKET):
        s3.create_bucket(Bucket=bucket)
    mean = options.mb * 1_000_000 / options.files
    sums = {}
    for i in range(options.files):
        size = max(1, int(mean * (0.5 + i / max(1, options.files - 1))))
        body = os.urandom(size)
        rel = f"shard-{i // 50:02d}/sample-{i:05d}.bin"
        s3.put_object(Bucket=DATA_BUCKET, Key=f"set/{rel}", Body=body)
        sums[rel] = hashlib.sha256(body).hexdigest()
    return sums


def _spec(options: Options, code_dir: str, name: str, **fields: Any) -> JobSpec:
    from core.jobs import JobSpec, TemplateSpec

    base: dict[str, Any] = {
        "name": name,
        "bucket": BUCKET,
        "template": TemplateSpec(instance_type=options.instance_type, availability_zone=ZONE),
        "code_dir": code_dir,
        "command": ["python3", "train_data.py", "--epochs", "1", "--batch", "4", "--workers", str(options.workers)],
        "data": SOURCE,
        "sync_interval_s": 60,
    }
    return JobSpec(**{**base, **fields})


def _estimate(options: Options, strategy: str, volume_id: str | None) -> float | None:
    """The advice's time to the first batch for this strategy, asked as train-launch asks it (same inputs)."""
    from core.data import AdviceRequest
    from core.jobs import DataStrategy
    from flows.data import advise_data

    request = AdviceRequest(
        dataset_uri=SOURCE,
        instance_type=options.instance_type,
        availability_zone=ZONE,
        volume_id=volume_id,
        strategy=DataStrategy(strategy),
    )
    estimate = advise_data(request).estimate(DataStrategy(strategy))
    return estimate.first_batch_s if estimate.possible else None


def _trainer_summary(cloud: Sandbox, log_uri: str) -> dict[str, Any]:
    """The trainer's `data {...}` line, the last of its log in S3."""
    bucket, _, key = log_uri[len("s3://") :].partition("/")
    text = cloud.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    lines = [line for line in text.splitlines() if line.startswith("data {")]
    if not lines:
        raise SystemExit(f"the trainer printed no data summary; its log ({log_uri}) ends:\n{text[-2000:]}")
    summary: dict[str, Any] = json.loads(lines[-1].removeprefix("data "))
    return summary


def launch(cloud: Sandbox, run: Run, code_dir: str, label: str, strategy: str, volume_id: str | None = None) -> Row:
    """One job through train-launch (wait), measured from the request to the trainer's first batch."""
    from core.launch import LaunchOptions
    from flows.train_launch import train_launch

    name = f"bench-{label.replace(' ', '-').replace('(', '').replace(')', '')}"
    fields: dict[str, Any] = {"data_strategy": strategy}
    if volume_id:
        fields["data_volume_id"] = volume_id
    spec = _spec(run.options, code_dir, name, **fields)
    row = Row(label=label, asked=strategy, estimate_s=_estimate(run.options, strategy, volume_id))
    if label != "warm-up":
        print(f"  {label}: launching …", flush=True)
    row.launched_at = time.time()
    report = train_launch(spec, LaunchOptions(wait=True))
    if report.status != "succeeded" or report.data is None:
        raise SystemExit(f"{label}: the job ended {report.status} (exit {report.exit_code}); its log: {report.log_uri}")
    summary = _trainer_summary(cloud, report.log_uri)
    row.ran, row.why, row.volume_id = report.data.strategy.value, report.data.why, report.volume_id
    row.data_step_s = report.data.seconds
    row.first_batch_at = float(summary["first_batch_at"])
    row.trainer_first_batch_s = float(summary["first_batch_s"])
    row.files_match = summary["sha256"] == run.in_s3
    run.rows.append(row)
    return row


def _prewarm_instances(cloud: Sandbox) -> int:
    from core import tags as t

    found = cloud.client("ec2").describe_instances(Filters=[{"Name": f"tag:{t.ROLE}", "Values": ["prewarm"]}])
    return sum(len(r["Instances"]) for r in found["Reservations"])


def measure(cloud: Sandbox, options: Options) -> Run:
    """Every strategy on the same dataset and instance type, in a sandbox whose environment is exported."""
    run = Run(options=options)
    print(f"uploading {options.files} files, {options.mb:g} MB …", flush=True)
    run.in_s3 = upload_dataset(cloud, options)
    work = Path(tempfile.mkdtemp(prefix="trainctl-bench-data-"))
    try:
        code = work / "code"
        code.mkdir()
        shutil.copy(TRAINER, code / "train_data.py")
        # The process's first launch pays once for imports, Prefect's first runs and moto's first calls: unmeasured.
        print("  warm-up launch (not measured) …", flush=True)
        warm_up = Run(options=options, in_s3=run.in_s3)
        launch(cloud, warm_up, str(code), "warm-up", "direct-s3")
        launch(cloud, run, str(code), "direct-s3", "direct-s3")
        launch(cloud, run, str(code), "local-cache", "local-cache")
        first = launch(cloud, run, str(code), "prewarmed-ebs (new prewarm)", "prewarmed-ebs")
        launch(cloud, run, str(code), "prewarmed-ebs (reused)", "prewarmed-ebs")
        launch(cloud, run, str(code), "existing-ebs", "existing-ebs", volume_id=first.volume_id)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    run.prewarm_instances = _prewarm_instances(cloud)
    return run


# -- the table ---------------------------------------------------------------------------------------------------


def launch_overhead_s(run: Run) -> float:
    """The launch's part that is not data: direct-s3's launch request → trainer start (nothing before its trainer
    reads the data)."""
    direct = next(r for r in run.rows if r.ran == "direct-s3")
    return direct.trainer_started_after_s


def table(run: Run) -> list[list[str]]:
    """strategy, ran, measured launch → first batch, data (less the launch's own part), advised, ratio."""
    overhead = launch_overhead_s(run)
    rows = []
    for r in run.rows:
        data = max(0.0, r.measured_s - overhead)
        ratio = f"{data / r.estimate_s:.2f}" if r.estimate_s else "n/a"
        advised = f"{r.estimate_s:.1f}" if r.estimate_s is not None else "n/a"
        same = "yes" if r.files_match else "NO"
        trainer = f"{r.trainer_first_batch_s:.1f}"
        rows.append([r.label, f"{r.measured_s:.1f}", trainer, f"{data:.1f}", advised, ratio, same])
    return rows


HEADER = [
    "strategy",
    "launch → 1st batch (s)",
    "trainer start → 1st batch (s)",
    "data (s)",
    "advised (s)",
    "data / advised",
    "same files",
]


def report(run: Run) -> None:
    o = run.options
    print(
        f"\ndata strategies: {o.files} files, {o.mb:g} MB ({SOURCE}), {o.instance_type} in {ZONE}, "
        f"{o.workers} loader workers, {o.boot:g} s simulated boot"
    )
    rows = [HEADER, *table(run)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    for n, row in enumerate(rows):
        print(
            "  "
            + "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
    print(
        f"\n  the launch's own part (instance, SSM online, code, agent, trainer start; direct-s3's launch → trainer "
        f'start): {launch_overhead_s(run):.1f} s, taken off every row\'s "data"'
    )
    for r in run.rows:
        print(f"  {r.label}: ran {r.ran}; data step in the launch {r.data_step_s:.1f} s; {r.why}")
    print(f"  prewarm instances launched in all: {run.prewarm_instances} (the reuse and existing-ebs launch none)")
    print(
        "\n  The advice's estimates use AWS's figures (S3 85 MB/s per connection and 0.1 s per first byte, gp3 "
        "throughput, NVMe instance store, a 300 s prewarm overhead, 15 s attach); the sandbox's throughputs are NOT "
        "AWS's (moto on localhost, volumes as folders, instances booting in seconds), so the ratios measure this "
        "machine against AWS's figures, not the advice against AWS."
    )


def teardown(cloud: Sandbox) -> None:
    """Whatever is still running (nothing should: every job ends its instance) goes with the sandbox; the data
    volume is persistent and the sandbox's end removes it."""
    ec2 = cloud.client("ec2")
    live = [
        i["InstanceId"]
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] in {"pending", "running"}
    ]
    if live:
        print(f"terminating what is still running: {', '.join(live)}")
        ec2.terminate_instances(InstanceIds=live)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Options()
    parser.add_argument("--files", type=int, default=default.files, help="objects in the dataset")
    parser.add_argument("--mb", type=float, default=default.mb, help="the dataset's size in MB")
    parser.add_argument("--instance-type", default=default.instance_type, help="one with an instance store")
    parser.add_argument("--boot", type=float, default=default.boot, help="simulated boot: launch → SSM Online (s)")
    parser.add_argument("--workers", type=int, default=default.workers, help="the trainer's loader threads")
    args = parser.parse_args(argv)
    if args.files < 1 or args.mb <= 0:
        parser.error("--files must be at least 1 and --mb more than 0")
    options = Options(
        files=args.files, mb=args.mb, instance_type=args.instance_type, boot=args.boot, workers=args.workers
    )
    _isolate()
    from prefect.testing.utilities import prefect_test_harness

    print("starting a Prefect test server and the sandbox …", flush=True)
    with prefect_test_harness(server_startup_timeout=120), sandbox(options.boot) as cloud:
        try:
            report(measure(cloud, options))
        finally:
            teardown(cloud)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
