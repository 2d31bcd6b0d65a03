"""Every trainctl deployment, defined once: `serve` (deployments/serve.py), `trainctl deploy` (deployments/setup.py)
and the repository root's prefect.yaml (rendered by deployments/render.py) all come from `DEFINITIONS`.

A definition names the flow; the entrypoint and the description are derived from it (the flow's file, the first
paragraph of its docstring), so they cannot drift from the code.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from prefect import Flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.runner.storage import LocalStorage
from prefect.schedules import Cron, Interval, Schedule

from flows.cost_watch import cost_watch
from flows.prewarm import prewarm
from flows.spot_watch import spot_watch
from flows.teardown import safe_teardown
from flows.train_launch import train_launch
from flows.transfer import transfer

# The repository root: entrypoints are relative to it, and a worker runs flows from it (set_working_directory).
ROOT = Path(__file__).resolve().parents[1]
TAGS = ("trainctl",)
WORK_POOL = "trainctl"
SPOT_WATCH_INTERVAL_S = 60  # a spot notice gives 2 minutes: a pass a minute sees it while the instance still runs
COST_WATCH_CRON = "*/15 * * * *"  # flows/cost_watch.py PASS_INTERVAL: a budget is checked against the next pass
NIGHTLY_SWEEP_CRON = "0 3 * * *"  # 03:00 UTC, when few launches are in flight
TIMEZONE = "UTC"
# An interval schedule counts from an anchor; without one Prefect takes "now", and every deploy would change it.
ANCHOR = datetime(2026, 1, 1, tzinfo=UTC)
# The watches' collision rule: one pass at a time, and a pass due while one still runs is cancelled, not queued
# (two passes would race for the same record claims; the next one sees everything anyway).
ONE_AT_A_TIME = ConcurrencyLimitStrategy.CANCEL_NEW


@dataclass(frozen=True)
class Definition:
    """One deployment: its name, its flow, default parameters, an interval (s) or cron schedule, and whether only
    one run at a time may go (CANCEL_NEW)."""

    name: str
    flow: Flow[..., Any]
    parameters: dict[str, Any] = field(default_factory=dict)
    interval_s: int | None = None
    cron: str | None = None
    one_at_a_time: bool = False
    note: str = ""  # a sentence added to the description (what to fill in)
    summary: str | None = None  # instead of the flow's docstring, when the deployment is one use of the flow

    @property
    def full_name(self) -> str:
        return f"{self.flow.name}/{self.name}"

    @property
    def entrypoint(self) -> str:
        source = inspect.getsourcefile(self.flow.fn)
        assert source is not None
        return f"{Path(source).resolve().relative_to(ROOT).as_posix()}:{self.flow.fn.__name__}"

    @property
    def description(self) -> str:
        return " ".join(filter(None, [self.summary or first_paragraph(self.flow), self.note]))

    def schedules(self) -> list[Schedule]:
        if self.interval_s is not None:
            return [Interval(self.interval_s, anchor_date=ANCHOR, timezone=TIMEZONE)]
        if self.cron is not None:
            return [Cron(self.cron, timezone=TIMEZONE)]
        return []


def first_paragraph(flow: Flow[..., Any]) -> str:
    """The flow's docstring up to its first blank line, as one line: the deployment's description."""
    doc = inspect.getdoc(flow.fn)
    if not doc:
        raise ValueError(f"flow {flow.name!r} has no docstring: its deployment would be described as 'None'")
    return " ".join(doc.split("\n\n")[0].split())


WATCH_NOTE = "List your job buckets in request.buckets so that jobs with no instance left are watched too."
DEFINITIONS: tuple[Definition, ...] = (
    Definition("prewarm", prewarm),
    Definition("train-launch", train_launch),
    Definition("transfer", transfer),
    Definition("safe-teardown", safe_teardown),
    Definition(
        "nightly-sweep",
        safe_teardown,
        parameters={"request": {"sweep": True, "dry_run": True}},
        cron=NIGHTLY_SWEEP_CRON,
        one_at_a_time=True,
        summary="safe-teardown's orphan sweep, nightly and in dry run: the plan of what no job needs (and why) is "
        "published as artifacts; nothing is deleted. Add request.bucket to sweep a job bucket's leftovers too.",
    ),
    Definition(
        "spot-watch",
        spot_watch,
        parameters={"request": {"buckets": []}},
        interval_s=SPOT_WATCH_INTERVAL_S,
        one_at_a_time=True,
        note=WATCH_NOTE,
    ),
    Definition(
        "cost-watch",
        cost_watch,
        parameters={"request": {"buckets": []}},
        cron=COST_WATCH_CRON,
        one_at_a_time=True,
        note=WATCH_NOTE,
    ),
)


def by_name(name: str) -> Definition:
    return next(d for d in DEFINITIONS if d.name == name)


def runner_deployment(definition: Definition, *, on_work_pool: bool) -> RunnerDeployment:
    """The definition as a Prefect RunnerDeployment. On a work pool, a worker runs it from the repository root (the
    pull step `prefect deploy` records when run from there); served, this process runs it where it stands."""
    limit = ConcurrencyLimitConfig(limit=1, collision_strategy=ONE_AT_A_TIME) if definition.one_at_a_time else None
    # to_deployment dispatches on the caller (a coroutine inside an event loop): _sync asks for the deployment.
    deployment = cast(
        RunnerDeployment,
        definition.flow.to_deployment(  # type: ignore[call-arg]
            _sync=True,
            name=definition.name,
            description=definition.description,
            tags=list(TAGS),
            parameters=definition.parameters,
            schedules=definition.schedules(),
            concurrency_limit=limit,
        ),
    )
    deployment.entrypoint = definition.entrypoint
    if on_work_pool:
        deployment.storage = LocalStorage(str(ROOT))
    return deployment


def yaml_document() -> dict[str, Any]:
    """The prefect.yaml for `prefect deploy --all` from the repository root. No `pull:` section: Prefect then
    records a set_working_directory to the directory deploy runs from (the root), so the worker needs nothing set."""
    return {
        "name": "trainctl",
        "prefect-version": "3.8.8",
        "deployments": [_yaml_entry(d) for d in DEFINITIONS],
    }


def _yaml_entry(definition: Definition) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": definition.name,
        "entrypoint": definition.entrypoint,
        "description": definition.description,
        "tags": list(TAGS),
        "work_pool": {"name": WORK_POOL},
    }
    if definition.parameters:
        entry["parameters"] = definition.parameters
    if definition.interval_s is not None:
        entry["schedules"] = [
            {"interval": definition.interval_s, "anchor_date": ANCHOR.isoformat(), "timezone": TIMEZONE}
        ]
    elif definition.cron is not None:
        entry["schedules"] = [{"cron": definition.cron, "timezone": TIMEZONE}]
    if definition.one_at_a_time:
        entry["concurrency_limit"] = {"limit": 1, "collision_strategy": ONE_AT_A_TIME.value}
    return entry
