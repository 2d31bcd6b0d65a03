"""One cost-watch pass over 1,000 managed resources in the sandbox: the AWS calls it makes and our own CPU seconds.

    make bench-inventory
    python -m bench.inventory --resources 1000      # instances, volumes and snapshots, a third each
    python -m bench.inventory --resources 30        # a smoke run

The resources are made with batched public calls (RunInstances of 50 at a time, then one CreateVolume and one
CreateSnapshot each), managed-tagged at creation, spread over a few jobs and instance types (one type without a
price). The pass is flows/cost_watch.cost_pass — plain functions, no Prefect run, so Prefect's overhead is not
counted: inventory → job records → price book → costs per resource and job → thresholds and their state in S3.

Calls are counted with botocore's `before-call` event on the session every client comes from. CPU is this
thread's CPU time (time.thread_time) over the pass: the sandbox answers in its own threads of this process, and
waiting costs none, so what is counted is our code and the SDK's work for it. Targets (issue 16): at most 10
calls per resource type (DescribeInstances, DescribeVolumes, DescribeSnapshots), plus cached price look-ups, and
at most 1 s of CPU. The baseline is the same pass over `--baseline` resources, measured first in this process,
after a warm-up pass (imports, first price look-ups).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox import Sandbox

BUCKET = "bench-inventory"
TYPES = ["t3.micro", "m5.large", "g5.xlarge", "c5.large", "m6i.large"]  # m6i.large: no price in the sandbox
JOBS = 10
BATCH = 50
TARGET_CALLS_PER_TYPE = 10
TARGET_CPU_S = 1.0
RESOURCE_CALLS = {"DescribeInstances": "instances", "DescribeVolumes": "volumes", "DescribeSnapshots": "snapshots"}


@dataclass
class Measure:
    resources: int
    calls: Counter[str]
    cpu_s: float
    wall_s: float
    priced: int
    unknown: int


class CallCounter:
    """Counts every AWS call by `service.Operation`, from botocore's before-call event."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __call__(self, model: Any, **_: Any) -> None:
        self.calls[f"{model.service_model.service_name}.{model.name}"] += 1

    @contextmanager
    def counting(self) -> Iterator[Counter[str]]:
        self.calls = Counter()
        yield self.calls


def _isolate() -> None:
    """Dummy AWS settings and a private price cache (before boto3 is imported), as tests/conftest.py does."""
    home = Path(tempfile.mkdtemp(prefix="trainctl-bench-inventory-"))
    for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "PREFECT_API_URL"):
        os.environ.pop(key, None)
    os.environ.update(
        {
            "AWS_CONFIG_FILE": str(home / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "TRAINCTL_CACHE_DIR": str(home / "cache"),
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )


def create_resources(cloud: Sandbox, count: int, start: int = 0) -> None:
    """`count` managed resources (a third instances, volumes, snapshots), numbered from `start` (job per number)."""
    from core import tags as t

    ec2 = cloud.client("ec2", retries=3)
    instances = count - 2 * (count // 3)
    made = 0
    while made < instances:
        n = min(BATCH, instances - made)
        job = f"job-{(start + made) % JOBS}"
        tags = t.managed_tags(job=job, role=t.Role.TRAIN, attempt=1)
        ec2.run_instances(
            ImageId="ami-12c6146b",
            InstanceType=TYPES[(start + made) // BATCH % len(TYPES)],
            MinCount=n,
            MaxCount=n,
            TagSpecifications=t.tag_specifications("instance", tags),
        )
        made += n
    for k in range(count // 3):
        tags = t.managed_tags(job=f"job-{(start + k) % JOBS}", role=t.Role.DATA, persistent=True)
        volume = ec2.create_volume(
            AvailabilityZone="us-east-1a",
            Size=10 + k % 50,
            VolumeType="gp3" if k % 2 else "gp2",
            TagSpecifications=t.tag_specifications("volume", tags),
        )["VolumeId"]
        ec2.create_snapshot(VolumeId=volume, TagSpecifications=t.tag_specifications("snapshot", tags))


def one_pass(counter: CallCounter, resources: int) -> Measure:
    """cost_pass as the deployment runs it, with the default policy: counted and timed."""
    from blocks.policies import CostPolicy
    from flows.cost_watch import CostWatchRequest, cost_pass

    request, policy = CostWatchRequest(buckets=[BUCKET]), CostPolicy()
    with counter.counting() as calls:
        wall, cpu = time.perf_counter(), time.thread_time()
        result = cost_pass(request, policy, now=datetime.now(UTC))
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    lines = result.view.lines
    unknown = sum(1 for line in lines if line.unknown)
    return Measure(resources, Counter(calls), cpu, wall, len(lines) - unknown, unknown)


def _ratio(value: float, base: float) -> str:
    return f"×{value / base:.1f}" if base else "-"


def report(base: Measure, big: Measure) -> bool:
    """Print the calls per operation and the CPU seconds against the baseline and the targets; True when met."""
    print(f"\none cost-watch pass: {big.resources} managed resources (baseline: {base.resources})")
    print(f"  priced lines {big.priced}, price unknown {big.unknown} (baseline {base.priced} / {base.unknown})")
    print(f"  {'AWS call':42} {'calls':>6} {'baseline':>9} {'ratio':>7}  target")
    met = True
    for name in sorted(set(big.calls) | set(base.calls)):
        operation = name.split(".", 1)[1]
        target = ""
        if operation in RESOURCE_CALLS:
            ok = big.calls[name] <= TARGET_CALLS_PER_TYPE
            met = met and ok
            target = f"≤ {TARGET_CALLS_PER_TYPE} ({RESOURCE_CALLS[operation]}) {'ok' if ok else 'MISSED'}"
        elif name.startswith("pricing.") or operation == "DescribeSpotPriceHistory":
            target = "price look-up (cached for a day)"
        print(
            f"  {name:42} {big.calls[name]:>6} {base.calls[name]:>9} {_ratio(big.calls[name], base.calls[name]):>7}  "
            f"{target}"
        )
    ok = big.cpu_s <= TARGET_CPU_S
    met = met and ok
    print(
        f"  {'CPU seconds of our code (this thread)':42} {big.cpu_s:>6.3f} {base.cpu_s:>9.3f} "
        f"{_ratio(big.cpu_s, base.cpu_s):>7}  ≤ {TARGET_CPU_S:g} s {'ok' if ok else 'MISSED'}"
    )
    print(
        f"  {'wall seconds (the sandbox answering included)':42} {big.wall_s:>6.2f} {base.wall_s:>9.2f} "
        f"{_ratio(big.wall_s, base.wall_s):>7}"
    )
    return met


def measure(cloud: Sandbox, resources: int, baseline: int) -> tuple[Measure, Measure]:
    """Warm-up and baseline over `baseline` resources, then the pass over `resources` (the rest created between)."""
    from blocks.aws import clear_client_cache, load_account

    clear_client_cache()
    counter = CallCounter()
    load_account().session().events.register("before-call", counter)  # every client is made from this session
    cloud.client("s3").create_bucket(Bucket=BUCKET)
    create_resources(cloud, baseline)
    one_pass(counter, baseline)  # warm-up: imports, the price book's first look-ups
    base = one_pass(counter, baseline)
    print(f"creating {resources - baseline} more managed resources …", flush=True)
    create_resources(cloud, resources - baseline, start=baseline)
    return base, one_pass(counter, resources)


@contextmanager
def sandbox() -> Iterator[Sandbox]:
    from blocks.aws import clear_client_cache
    from sandbox import Sandbox

    with Sandbox(boot_delay=0.0) as cloud:
        os.environ.update(cloud.env)
        clear_client_cache()
        yield cloud


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources", type=int, default=1000, help="managed resources in the measured pass")
    parser.add_argument("--baseline", type=int, default=10, help="managed resources in the baseline pass")
    args = parser.parse_args(argv)
    if not 3 <= args.baseline < args.resources:
        parser.error("expected 3 <= --baseline < --resources")
    _isolate()
    print(f"starting the sandbox; {args.baseline} managed resources …", flush=True)
    with sandbox() as cloud:
        base, big = measure(cloud, args.resources, args.baseline)
    return 0 if report(base, big) else 1


if __name__ == "__main__":
    raise SystemExit(main())
