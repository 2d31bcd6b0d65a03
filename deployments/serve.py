"""Every flow as a Prefect deployment, served from this process: `python -m deployments.serve`.

Scheduling needs a real Prefect server (the ephemeral one has no scheduler): run `prefect server start`, set
`PREFECT_API_URL`, then serve. For work pools (process, ECS, Kubernetes) use `prefect deploy --all` with
deployments/prefect.yaml instead. spot-watch (every minute) and cost-watch (every 15 minutes) join this list
with their schedules when those flows are written.
"""

from __future__ import annotations

from typing import cast

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.prewarm import prewarm
from flows.teardown import safe_teardown
from flows.train_launch import train_launch
from flows.transfer import transfer

TAGS = ["trainctl"]


def deployments() -> list[RunnerDeployment]:
    """One deployment per flow; parameters are the flows' pydantic models, so the UI renders their forms."""
    # to_deployment is sync-compatible: called from sync code it returns the deployment itself.
    return [
        cast(RunnerDeployment, prewarm.to_deployment(name="prewarm", tags=TAGS)),
        cast(RunnerDeployment, train_launch.to_deployment(name="train-launch", tags=TAGS)),
        cast(RunnerDeployment, transfer.to_deployment(name="transfer", tags=TAGS)),
        cast(RunnerDeployment, safe_teardown.to_deployment(name="safe-teardown", tags=TAGS)),
    ]


if __name__ == "__main__":
    serve(*deployments())
