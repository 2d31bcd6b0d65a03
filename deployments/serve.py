"""Every trainctl deployment served from this process, no worker needed: `python -m deployments.serve`.

The deployments are deployments/definitions.py's, the same `trainctl deploy` and the root prefect.yaml put on the
work pool. Serving and a work pool cannot share a deployment name (Prefect keys a deployment by flow and name:
the second one silently takes over the first's schedules). So serve refuses, before registering anything, when a
deployment of that name is on a work pool: the work pool is the product's way (`make up`, `trainctl deploy`;
it scales out to ECS or Kubernetes), serve is for a quick look on one machine. `trainctl deploy` refuses the
other way round. Scheduling needs a real Prefect server (`trainctl server up`, or PREFECT_API_URL).
"""

from __future__ import annotations

import asyncio
import sys

from prefect import serve
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from core.errors import UsageError
from deployments.definitions import DEFINITIONS, runner_deployment


async def on_work_pools() -> dict[str, str]:
    """The definitions' deployments that exist on a work pool: full name → pool."""
    found: dict[str, str] = {}
    async with get_client() as client:
        for definition in DEFINITIONS:
            try:
                existing = await client.read_deployment_by_name(definition.full_name)
            except ObjectNotFound:
                continue
            if existing.work_pool_name:
                found[definition.full_name] = existing.work_pool_name
    return found


def check_servable(on_pools: dict[str, str]) -> None:
    if on_pools:
        names = ", ".join(f"{name} (pool {pool})" for name, pool in sorted(on_pools.items()))
        raise UsageError(
            f"these deployments are on a work pool, and serving them would take them over: {names}",
            fix="Start a worker instead (`prefect worker start --pool trainctl`), or delete them first "
            "(`prefect deployment delete NAME`) to serve",
        )


def main() -> int:
    try:
        check_servable(asyncio.run(on_work_pools()))
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    serve(*[runner_deployment(d, on_work_pool=False) for d in DEFINITIONS])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
