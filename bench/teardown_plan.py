"""How fast the teardown planner is, against building the inventory itself (the baseline), same data, one run.

The planner runs on every teardown and sweep; it must stay cheap next to the inventory it reads. Target: a
1,000-resource plan in well under a second.

    .venv/bin/python bench/teardown_plan.py [--sizes 1000 5000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial

from core import tags as t
from core.jobs import TrainingState
from core.models import Instance, Inventory, Snapshot, Volume, VolumeAttachment
from core.teardown import Scope, plan_teardown

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def scene(resources: int) -> tuple[list[Instance], list[Volume], list[Snapshot]]:
    """30 % instances, 60 % volumes (half persistent, most attached), 10 % snapshots."""
    n_inst, n_vol = resources * 3 // 10, resources * 6 // 10
    instances = [
        Instance(
            id=f"i-{n:017x}",
            tags={t.MANAGED: "true", t.JOB: f"job-{n % 40}", t.ROLE: "train"},
            created_at=NOW - timedelta(hours=3),
            state="running",
            availability_zone="us-east-1a",
            instance_type="g5.xlarge",
        )
        for n in range(1, n_inst + 1)
    ]
    volumes = [
        Volume(
            id=f"vol-{n:017x}",
            tags={t.MANAGED: "true", t.JOB: f"job-{n % 40}", **({t.PERSISTENT: "true"} if n % 2 else {})},
            created_at=NOW - timedelta(hours=3),
            state="in-use",
            availability_zone="us-east-1a",
            size_gib=100,
            volume_type="gp3",
            attachments=[
                VolumeAttachment(
                    instance_id=instances[n % n_inst].id, device=f"/dev/sd{'fghij'[n % 5]}", state="attached"
                )
            ],
        )
        for n in range(1, n_vol + 1)
    ]
    snapshots = [
        Snapshot(
            id=f"snap-{n:017x}",
            tags={t.MANAGED: "true"},
            created_at=NOW - timedelta(hours=3),
            state="completed",
            volume_id=volumes[n % n_vol].id,
        )
        for n in range(1, resources - n_inst - n_vol + 1)
    ]
    return instances, volumes, snapshots


def best_of(runs: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    ok = True
    for size in args.sizes:
        instances, volumes, snapshots = scene(size)
        assemble = partial(
            Inventory.assemble,
            region="us-east-1",
            taken_at=NOW,
            instances=instances,
            volumes=volumes,
            snapshots=snapshots,
        )
        idle = {i.id: TrainingState(instance_id=i.id, status="idle") for i in instances}
        plan = partial(plan_teardown, assemble(), scope=Scope(all_managed=True), now=NOW, training=idle, sweep=True)
        baseline = best_of(args.runs, assemble)
        planned = best_of(args.runs, plan)
        print(
            f"{size:6d} resources: inventory assembly {baseline * 1000:8.1f} ms, plan {planned * 1000:8.1f} ms, "
            f"plan / assembly {planned / baseline:5.2f}x"
        )
        if size <= 1000 and planned >= 1.0:
            ok = False
    print(f"target: a 1,000-resource plan in under 1 s -> {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
