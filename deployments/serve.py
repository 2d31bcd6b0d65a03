"""Every flow as a Prefect deployment, served from this process: `python -m deployments.serve`.

Scheduling needs a real Prefect server (the ephemeral one has no scheduler): run `prefect server start`, set
`PREFECT_API_URL`, then serve. For work pools (process, ECS, Kubernetes) use `prefect deploy --all` with
deployments/prefect.yaml instead. spot-watch runs every minute, one run at a time: a run due while one still runs
is cancelled (CANCEL_NEW), never queued behind it; cost-watch runs every 15 minutes, one run at a time too.
"""

from __future__ import annotations

from typing import cast

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment

from flows.cost_watch import PASS_INTERVAL, cost_watch
from flows.prewarm import prewarm
from flows.spot_watch import spot_watch
from flows.teardown import safe_teardown
from flows.train_launch import train_launch
from flows.transfer import transfer

TAGS = ["trainctl"]
SPOT_WATCH_INTERVAL_S = 60
COST_WATCH_INTERVAL_S = int(PASS_INTERVAL.total_seconds())  # 900: a budget is checked against the next pass
# One pass at a time: two would each read the records and race for the same claims (harmless, but wasted).
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)


def deployments() -> list[RunnerDeployment]:
    """One deployment per flow; parameters are the flows' pydantic models, so the UI renders their forms."""
    # to_deployment is sync-compatible: called from sync code it returns the deployment itself.
    return [
        cast(RunnerDeployment, prewarm.to_deployment(name="prewarm", tags=TAGS)),
        cast(RunnerDeployment, train_launch.to_deployment(name="train-launch", tags=TAGS)),
        cast(RunnerDeployment, transfer.to_deployment(name="transfer", tags=TAGS)),
        cast(RunnerDeployment, safe_teardown.to_deployment(name="safe-teardown", tags=TAGS)),
        cast(
            RunnerDeployment,
            spot_watch.to_deployment(
                name="spot-watch", tags=TAGS, interval=SPOT_WATCH_INTERVAL_S, concurrency_limit=ONE_AT_A_TIME
            ),
        ),
        cast(
            RunnerDeployment,
            cost_watch.to_deployment(
                name="cost-watch", tags=TAGS, interval=COST_WATCH_INTERVAL_S, concurrency_limit=ONE_AT_A_TIME
            ),
        ),
    ]


if __name__ == "__main__":
    serve(*deployments())
