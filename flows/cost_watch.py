"""cost-watch: one pass over what trainctl runs in a region — price it, check the thresholds, act — every 15 minutes.

A pass (`cost_pass`, plain functions: the CLI and the bench call it without a Prefect run):
1. observes: the managed inventory (one query per resource type and page), the job records of the watched buckets
   (the request's and those the training instances' trainctl:bucket tags name) — only jobs still active or with
   resources left are priced; a finished job with nothing left bills nothing more — and each priced job's
   checkpoint objects (one listing per job). No managed resource and no active job: "nothing running", no price
   is asked for;
2. prices (core/cost.py's one price book, tasks/pricing.py: on-demand for the instance types present, the spot
   history of each (AZ, type) from its earliest launch, cached) each resource and each job across every attempt,
   then the summaries: burn rate, 24 hours, today, month, since creation, projections;
3. checks the CostPolicy thresholds against the state of the previous pass, kept beside the job records in
   `s3://<bucket>/trainctl/cost-watch/state.json` with the idle-GPU history; the new state is written with a
   conditional write before anything is said or done, so a restarted pass never fires a threshold twice, and a
   pass that loses the write to another leaves the events and actions to it.

The flow then emits `trainctl.cost.threshold` once per crossing, takes the actions the policy enables (a job over
budget before the next pass, an instance whose GPUs stayed idle: checkpoint, verified in S3, then stop —
tasks/jobs.checkpoint_then_stop; `trainctl.job.stopped` for each) and writes the table artifact
`cost-watch-<region>-<bucket>` (per job and per resource, by cost, with the price source, the resources whose
price is unknown, and cleanup advice with monthly savings).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import AfterValidator, BaseModel, Field, ValidationError, field_validator

from blocks.aws import check_region, load_account
from blocks.policies import CostPolicy
from core import events as ev
from core import jobs
from core import tags as t
from core.cost import (
    CostLine,
    CostSummary,
    Crossing,
    PriceBook,
    Thresholds,
    ThresholdState,
    by_job,
    check_thresholds,
    inventory_lines,
    job_lines,
    monthly_usd,
    over_budget,
    summarize,
)
from core.errors import InvalidInputError
from core.events import MAX_RELATED
from core.idle import GpuReading, IdleHistory, IdleVerdict, idle_verdicts, merge_history
from core.jobs import JobRecord, StopReason
from core.models import Instance, Inventory, Snapshot, StoredObject, Volume
from core.s3uri import parse_s3_uri, validate_buckets
from core.teardown import TeardownPolicy, find_orphans
from flows.events import emit, emit_job
from flows.reporting import artifact_key
from tasks.gpu import sample_gpus
from tasks.inventory import collect_inventory
from tasks.jobs import CheckpointStopReport, checkpoint_then_stop, list_jobs, read_record_checked
from tasks.pricing import price_book
from tasks.s3 import client, get_tagged, list_objects, put_json_if

PASS_INTERVAL = timedelta(minutes=15)  # the deployment's schedule: a budget is checked against the next pass
STATE_KEY = "trainctl/cost-watch/state.json"


class CostWatchRequest(BaseModel):
    region: str | None = Field(
        default=None,
        description="the region to watch; it must be the account's (one deployment per region). Default: the account's",
    )
    buckets: Annotated[list[str], AfterValidator(validate_buckets)] = Field(
        default_factory=list,
        description="job buckets whose records are priced (trainctl/jobs/); the buckets training instances' "
        "trainctl:bucket tags name are added. The first keeps the pass's state (trainctl/cost-watch/state.json)",
    )
    cost_policy: str | None = Field(
        default=None,
        description="CostPolicy block name; default: $50/hour, $100/day, $500 accumulated, no action taken",
    )
    account: str | None = Field(default=None, description="AwsAccount block name; default: the AWS environment")

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        return None if value is None else check_region(value, "region")


class CostWatchState(BaseModel):
    """What one pass leaves for the next (JSON in S3): the thresholds above their limit, the idle-GPU samples."""

    thresholds: ThresholdState = Field(default_factory=ThresholdState)
    idle: IdleHistory = Field(default_factory=IdleHistory)
    updated_at: datetime | None = None


# -- what a pass reports ------------------------------------------------------------------------------------------


class CostRow(BaseModel):
    """One resource's cost (or a job's, kind `job`); `unknown` says why it has no price (never counted as $0)."""

    id: str
    kind: str
    job: str | None = None
    detail: str = ""
    hourly_usd: float | None = None
    accumulated_usd: float | None = None
    today_usd: float | None = None
    end_of_month_usd: float | None = None
    budget_usd: float | None = None
    source: str | None = None
    unknown: str | None = None


class Totals(BaseModel):
    hourly_usd: float
    accumulated_usd: float
    last_24h_usd: float
    today_usd: float
    month_usd: float
    end_of_day_usd: float
    end_of_month_usd: float
    unknown: int = Field(description="resources whose price is unknown, in no figure above")
    sources: list[str]


class ThresholdRow(BaseModel):
    """A threshold above its limit: `fired` on this pass (a crossing), or still above since an earlier one."""

    key: str
    threshold: str
    limit_usd: float
    amount_usd: float
    job: str | None = None
    fired: bool = False
    since: datetime | None = None
    resources: list[str] = Field(default_factory=list)


class Advice(BaseModel):
    """A resource worth deleting, by the sweep's rules, and what that saves per month (None: price unknown)."""

    id: str
    kind: str
    rule: str
    detail: str
    monthly_savings_usd: float | None


class ActionRow(BaseModel):
    job: str
    reason: str
    outcome: str
    instance_id: str | None = None
    checkpoint_verified: bool = False
    detail: str = ""


class CostReport(BaseModel):
    region: str
    buckets: list[str]
    state_uri: str | None = None
    taken_at: datetime
    nothing_running: bool = False
    totals: Totals | None = None
    jobs: list[CostRow] = Field(default_factory=list)
    resources: list[CostRow] = Field(default_factory=list)
    thresholds: list[ThresholdRow] = Field(default_factory=list)
    idle: list[IdleVerdict] = Field(default_factory=list)
    actions: list[ActionRow] = Field(default_factory=list)
    advice: list[Advice] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    price_problems: dict[str, str] = Field(default_factory=dict)


# -- observe and price (plain functions) ---------------------------------------------------------------------------


@dataclass
class CostView:
    """One pass's observation and its prices."""

    region: str
    now: datetime
    inventory: Inventory
    buckets: list[str]
    records: list[JobRecord]
    book: PriceBook | None
    lines: list[CostLine] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def nothing_running(self) -> bool:
        return not self.inventory.resources() and not any(r.active for r in self.records)

    def total(self) -> CostSummary:
        return summarize(self.lines, now=self.now)

    def by_job(self) -> dict[str, CostSummary]:
        return by_job(self.lines, now=self.now)


def watched_region(region: str | None, account: str | None) -> str:
    """The account's region; a request naming another one is refused before any call."""
    found = load_account(account).resolved_region()
    if region is not None and region != found:
        raise InvalidInputError(
            "region",
            region,
            f"the region of {'AwsAccount ' + account if account else 'the AWS environment'} ({found})",
            fix="Watch another region with an AwsAccount block for it (or AWS_REGION): one deployment per region",
        )
    return found


def _read_records(
    bucket: str, wanted: Callable[[JobRecord], bool], account: str | None, skipped: list[str]
) -> list[JobRecord]:
    found: list[JobRecord] = []
    for name in list_jobs.fn(bucket, account=account):
        record, _, problem = read_record_checked.fn(bucket, name, account=account)
        if problem is not None:
            skipped.append(f"s3://{bucket}/{jobs.JOBS_ROOT}/{name}: {problem}")
        elif record is not None and wanted(record):
            found.append(record)
    return found


def _checkpoints(record: JobRecord, account: str | None) -> list[StoredObject]:
    uri = parse_s3_uri(record.checkpoint_uri or jobs.default_checkpoint_uri(record.bucket, record.name))
    return [
        StoredObject(key=o["Key"], size=int(o["Size"]), last_modified=o["LastModified"])
        for o in list_objects(client(account), uri.bucket, uri.key)
    ]


def _spot_requests(inventory: Inventory, records: Iterable[JobRecord]) -> set[tuple[str, str, datetime]]:
    """(AZ, type, earliest start) per spot (AZ, type): one history from the earliest covers every later start."""
    earliest: dict[tuple[str, str], datetime] = {}
    starts: list[tuple[str | None, str | None, datetime]] = [
        (i.availability_zone, i.instance_type, i.created_at)
        for i in inventory.instances
        if i.lifecycle == "spot" and i.state in {"pending", "running"}
    ]
    starts += [
        (a.availability_zone, a.instance_type, a.launched_at or a.created_at)
        for r in records
        for a in r.attempts
        if a.capacity_type == "spot" and a.instance_id
    ]
    for zone, instance_type, start in starts:
        if zone and instance_type:
            key = (zone, instance_type)
            earliest[key] = min(earliest.get(key, start), start)
    return {(zone, instance_type, start) for (zone, instance_type), start in earliest.items()}


def price_lines(
    inventory: Inventory,
    records: list[JobRecord],
    checkpoints: dict[str, list[StoredObject]],
    book: PriceBook,
    *,
    now: datetime,
) -> list[CostLine]:
    """Every job's lines across its attempts (with its volumes, snapshots, checkpoints), then the other resources."""
    volumes, snapshots = defaultdict(list), defaultdict(list)
    for volume in inventory.volumes:
        volumes[volume.job].append(volume)
    for snapshot in inventory.snapshots:
        snapshots[snapshot.job].append(snapshot)
    lines: list[CostLine] = []
    for record in records:
        lines += job_lines(
            record,
            book,
            now=now,
            volumes=volumes.pop(record.name, []),
            snapshots=snapshots.pop(record.name, []),
            checkpoints=checkpoints.get(record.name, []),
        )
    priced = {line.id for line in lines}
    rest_volumes = [v for group in volumes.values() for v in group]
    rest_snapshots = [s for group in snapshots.values() for s in group]
    return lines + inventory_lines(inventory.instances, rest_volumes, rest_snapshots, book, now=now, priced=priced)


def observe_costs(request: CostWatchRequest, *, job: str | None = None, now: datetime | None = None) -> CostView:
    """Inventory, job records and prices of one region (module docstring, steps 1 and 2). `job`: that job is
    priced whatever its state (the CLI's `--job`)."""
    now = now or datetime.now(UTC)
    account = request.account
    watched = watched_region(request.region, account)
    inventory = collect_inventory(load_account(account), now=now)
    tagged = {i.tags[t.BUCKET] for i in inventory.instances if i.tags.get(t.BUCKET)}
    all_buckets = sorted({*request.buckets, *tagged})
    with_resources = {r.job for r in inventory.resources() if r.job}
    skipped: list[str] = []

    def wanted(record: JobRecord) -> bool:
        return record.name == job or record.active or record.name in with_resources

    records = [r for bucket in all_buckets for r in _read_records(bucket, wanted, account, skipped)]
    if job is not None and job not in with_resources and job not in {r.name for r in records}:
        where = ", ".join(f"s3://{b}/{jobs.JOBS_ROOT}/" for b in all_buckets) or "no bucket given"
        raise InvalidInputError(
            "--job",
            job,
            f"a job with a record in the watched buckets ({where}) or managed resources in {watched}",
            fix="Check the job name (`trainctl train list --bucket B`), --bucket and --region",
        )
    view = CostView(watched, now, inventory, all_buckets, records, None, skipped=skipped)
    if view.nothing_running and job is None:
        return view
    types = {i.instance_type for i in inventory.instances}
    types |= {a.instance_type for r in records for a in r.attempts if a.instance_type and a.instance_id}
    spot = _spot_requests(inventory, records)
    view.book = price_book.fn(watched, sorted(types), sorted(spot), now=now, account=account)
    checkpoints = {r.name: _checkpoints(r, account) for r in records}
    view.lines = price_lines(inventory, records, checkpoints, view.book, now=now)
    return view


# -- the pass's state, thresholds and what to act on -------------------------------------------------------------


def state_uri(bucket: str) -> str:
    return f"s3://{bucket}/{STATE_KEY}"


def read_state(bucket: str, account: str | None) -> tuple[CostWatchState, str | None, str | None]:
    """The stored state, its ETag, and why it was not read (a foreign or corrupt document is started afresh, and
    replaced by a conditional write all the same)."""
    body, etag = get_tagged(state_uri(bucket), account=account)
    if body is None:
        return CostWatchState(), None, None
    try:
        return CostWatchState.model_validate_json(body), etag, None
    except ValidationError as exc:
        return CostWatchState(), etag, f"the stored state was not readable ({str(exc)[:200]}): started afresh"


def thresholds_of(policy: CostPolicy, records: Iterable[JobRecord]) -> Thresholds:
    """The policy's limits with each job's own budget (its spec's budget_usd wins)."""
    budgets = {r.name: r.spec.budget_usd for r in records if r.spec is not None and r.spec.budget_usd is not None}
    return policy.thresholds(budgets)


@dataclass
class PassResult:
    """A pass up to its decisions: the view, the report, and what the flow is to say and do."""

    view: CostView
    report: CostReport
    crossings: list[Crossing] = field(default_factory=list)
    stop_over_budget: list[JobRecord] = field(default_factory=list)
    stop_idle: list[tuple[JobRecord, IdleVerdict]] = field(default_factory=list)


Sampler = Callable[[list[str]], list[GpuReading]]


def cost_pass(
    request: CostWatchRequest,
    policy: CostPolicy,
    *,
    now: datetime | None = None,
    sample: Sampler | None = None,
) -> PassResult:
    """Observe, price, sample the GPUs (when the policy stops idle instances), check the thresholds and keep the
    new state (module docstring). Says and does nothing: the flow emits and acts on the result."""
    view = observe_costs(request, now=now)
    report = build_report(view)
    result = PassResult(view, report)
    if not view.buckets:
        report.notes.append("no bucket to keep the thresholds' state in: give the job buckets (buckets)")
        return result
    home = view.buckets[0]
    report.state_uri = state_uri(home)
    state, etag, problem = read_state(home, request.account)
    if problem:
        report.notes.append(problem)
    if view.nothing_running and not state.thresholds.above and not state.idle.instances:
        return result  # nothing to price, nothing to re-arm: no write
    limits = thresholds_of(policy, view.records)
    total, per_job = view.total(), view.by_job()
    new_thresholds, result.crossings = check_thresholds(state.thresholds, total, per_job, limits)
    idle, sampled_at = IdleHistory(), view.now
    if policy.stop_idle_instances:
        idle, sampled_at = _idle_history(view, policy, state.idle, sample)
    new_state = CostWatchState(thresholds=new_thresholds, idle=idle, updated_at=view.now)
    if (
        put_json_if(report.state_uri, new_state.model_dump(mode="json"), expected_etag=etag, account=request.account)
        is None
    ):
        report.notes.append("another pass wrote the state first: it says and does what this one found")
        result.crossings = []
        return result
    report.thresholds = threshold_rows(new_thresholds, result.crossings, total, per_job, limits)
    active = {r.name: r for r in view.records if r.active and r.instance_id}
    if policy.checkpoint_and_stop_over_budget:
        late = over_budget(per_job, limits, until_next_pass=PASS_INTERVAL)
        result.stop_over_budget = [active[name] for name in late if name in active]
    if policy.stop_idle_instances:
        report.idle = idle_verdicts(
            idle, now=sampled_at, below_percent=policy.idle_gpu_percent, minutes=policy.idle_minutes
        )
        result.stop_idle = _idle_jobs(report.idle, view, {r.name for r in result.stop_over_budget})
    return result


def _training_instances(view: CostView) -> list[str]:
    return [
        i.id for i in view.inventory.instances if i.state == "running" and i.role == t.Role.TRAIN and i.job is not None
    ]


def _idle_history(
    view: CostView, policy: CostPolicy, history: IdleHistory, sample: Sampler | None
) -> tuple[IdleHistory, datetime]:
    """This pass's GPU readings of the running training instances merged into the kept history, and when they
    were taken (the time the verdicts are for: this pass's samples are then inside their window)."""
    instance_ids = _training_instances(view)
    if not instance_ids:
        return IdleHistory(), view.now
    readings = (sample or (lambda ids: sample_gpus.fn(ids)))(instance_ids)
    sampled_at = max((r.at for r in readings), default=view.now)
    window = timedelta(minutes=policy.idle_minutes)
    return merge_history(history, readings, now=sampled_at, window=window), sampled_at


def _idle_jobs(verdicts: list[IdleVerdict], view: CostView, already: set[str]) -> list[tuple[JobRecord, IdleVerdict]]:
    """The job on each idle instance, when its record names that instance as its current attempt's."""
    by_instance = {r.instance_id: r for r in view.records if r.active and r.instance_id}
    found = []
    for verdict in verdicts:
        record = by_instance.get(verdict.instance_id)
        if verdict.idle and record is not None and record.name not in already:
            found.append((record, verdict))
    return found


def threshold_rows(
    state: ThresholdState,
    crossings: list[Crossing],
    total: CostSummary,
    per_job: dict[str, CostSummary],
    limits: Thresholds,
) -> list[ThresholdRow]:
    """Every threshold above its limit now: those that fired on this pass and those still above since earlier."""
    fired = {c.key: c for c in crossings}
    _, above = check_thresholds(ThresholdState(), total, per_job, limits)
    return [
        ThresholdRow(
            key=c.key,
            threshold=c.threshold,
            limit_usd=c.limit_usd,
            amount_usd=c.amount_usd,
            job=c.job,
            fired=c.key in fired,
            since=state.above.get(c.key),
            resources=list(c.resources[:MAX_RELATED]),
        )
        for c in above
    ]


# -- the report ------------------------------------------------------------------------------------------------------


def _row(line: CostLine, now: datetime) -> CostRow:
    if line.unknown:
        return CostRow(id=line.id, kind=line.kind, job=line.job, detail=line.detail, unknown=line.unknown)
    summary = summarize([line], now=now)
    return CostRow(
        id=line.id,
        kind=line.kind,
        job=line.job,
        detail=line.detail,
        hourly_usd=round(line.hourly_usd, 4),
        accumulated_usd=round(summary.accumulated_usd, 4),
        today_usd=round(summary.today_usd, 4),
        end_of_month_usd=round(summary.end_of_month_usd, 2),
        source=line.source,
    )


def _job_row(name: str, summary: CostSummary, records: dict[str, JobRecord]) -> CostRow:
    record = records.get(name)
    budget = record.spec.budget_usd if record is not None and record.spec is not None else None
    detail = (
        f"{record.status.value}; {len(record.attempts)} attempt(s)"
        if record is not None
        else "no record in the watched buckets"
    )
    unknown = f"{summary.unknown} resource(s) of price unknown, not counted" if summary.unknown else None
    return CostRow(
        id=name,
        kind="job",
        job=name,
        detail=detail,
        hourly_usd=round(summary.hourly_usd, 4),
        accumulated_usd=round(summary.accumulated_usd, 4),
        today_usd=round(summary.today_usd, 4),
        end_of_month_usd=round(summary.end_of_month_usd, 2),
        budget_usd=budget,
        source=", ".join(summary.sources) or None,
        unknown=unknown,
    )


def _totals(summary: CostSummary) -> Totals:
    return Totals(
        hourly_usd=round(summary.hourly_usd, 4),
        accumulated_usd=round(summary.accumulated_usd, 4),
        last_24h_usd=round(summary.last_24h_usd, 4),
        today_usd=round(summary.today_usd, 4),
        month_usd=round(summary.month_usd, 4),
        end_of_day_usd=round(summary.end_of_day_usd, 2),
        end_of_month_usd=round(summary.end_of_month_usd, 2),
        unknown=summary.unknown,
        sources=list(summary.sources),
    )


def cleanup_advice(inventory: Inventory, book: PriceBook, *, now: datetime) -> list[Advice]:
    """The sweep's orphan rules (core/teardown.py) and the snapshots beyond its retention per volume, with what
    deleting each saves per month: advice only, `trainctl teardown --sweep` acts."""
    policy = TeardownPolicy()
    found = [
        Advice(
            id=rid,
            kind=resource.kind.value,
            rule=orphan.rule.value,
            detail=orphan.detail,
            monthly_savings_usd=monthly_usd(resource, book),
        )
        for rid, orphan in find_orphans(inventory, [], now=now, policy=policy).items()
        if isinstance(resource := inventory.get(rid), Instance | Volume) and not resource.protected
    ]
    by_volume: dict[str, list[Snapshot]] = defaultdict(list)
    for snapshot in inventory.snapshots:
        if snapshot.volume_id and not snapshot.protected:
            by_volume[snapshot.volume_id].append(snapshot)
    for group in by_volume.values():
        group.sort(key=lambda s: (s.created_at, s.id), reverse=True)
        for snapshot in group[policy.snapshot_retention :]:
            detail = f"older than the {policy.snapshot_retention} newest snapshots of {snapshot.volume_id}"
            found.append(
                Advice(
                    id=snapshot.id,
                    kind="snapshot",
                    rule="old snapshot",
                    detail=detail,
                    monthly_savings_usd=monthly_usd(snapshot, book),
                )
            )
    return sorted(found, key=lambda a: -(a.monthly_savings_usd or 0))


def build_report(view: CostView, *, job: str | None = None) -> CostReport:
    """The pass's figures as rows: jobs and resources by cost, totals, cleanup advice (`job`: that job's only)."""
    report = CostReport(region=view.region, buckets=view.buckets, taken_at=view.now, notes=list(view.skipped))
    if view.nothing_running and not view.lines:
        report.nothing_running = True
        report.notes.append(f"nothing running: no managed resource in {view.region} and no active job")
        return report
    lines = [line for line in view.lines if job is None or line.job == job]
    records = {r.name: r for r in view.records}
    report.totals = _totals(summarize(lines, now=view.now))
    report.jobs = [_job_row(name, s, records) for name, s in by_job(lines, now=view.now).items()]
    report.jobs.sort(key=lambda r: -(r.accumulated_usd or 0))
    ordered = summarize(lines, now=view.now).lines  # priced first, the costliest first; then price unknown
    report.resources = [_row(line, view.now) for line in ordered]
    if view.book is not None:
        report.price_problems = dict(view.book.problems)
        if job is None:
            report.advice = cleanup_advice(view.inventory, view.book, now=view.now)
    return report


def cost_report(request: CostWatchRequest, *, job: str | None = None, now: datetime | None = None) -> CostReport:
    """What `trainctl cost` prints, without a Prefect run: the pass's figures (`job`: that job's, whatever its
    state) and the thresholds above their limit now, since when the stored state says. Reads only: the state
    is cost-watch's to write, and no event is emitted."""
    view = observe_costs(request, job=job, now=now)
    report = build_report(view, job=job)
    if view.lines:
        limits = thresholds_of(CostPolicy.load_or_default(request.cost_policy), view.records)
        state = read_state(view.buckets[0], request.account)[0] if view.buckets else CostWatchState()
        rows = threshold_rows(state.thresholds, [], view.total(), view.by_job(), limits)
        report.thresholds = [r for r in rows if job is None or r.job in {None, job}]
    return report


# -- the flow --------------------------------------------------------------------------------------------------------


@flow(name="cost-watch", flow_run_name="cost-watch", log_prints=True)
def cost_watch(request: CostWatchRequest | None = None) -> CostReport:
    """One pass over what trainctl runs: price it, add up each job's cost across attempts, report thresholds
    crossed (events, a table artifact with cleanup advice) and apply the policy's stops (module docstring).

    Args:
        request: The region and job buckets to price, the CostPolicy block and the AWS account.
    """
    request = request or CostWatchRequest()
    policy = CostPolicy.load_or_default(request.cost_policy)
    result = cost_pass(request, policy, sample=lambda ids: sample_gpus(ids, account=request.account))
    report = result.report
    for crossing in result.crossings:
        _emit_threshold(report, crossing, result.view)
    for record in result.stop_over_budget:
        _stop(report, record, StopReason.BUDGET, request.account, "would pass its budget before the next pass")
    for record, verdict in result.stop_idle:
        _stop(report, record, StopReason.IDLE_GPU, request.account, verdict.reason)
    _report_artifact(report)
    return report


def _emit_threshold(report: CostReport, crossing: Crossing, view: CostView) -> None:
    # The job's bucket rides along: the automation's dry-run teardown then plans with the job's S3 state too.
    bucket = next((r.bucket for r in view.records if crossing.job and r.name == crossing.job), None)
    emit(
        ev.COST_THRESHOLD,
        ev.job_resource(crossing.job) if crossing.job else ev.region_resource(view.region),
        ev.related(crossing.resources),
        {
            "threshold": crossing.threshold,
            "key": crossing.key,
            "amount_usd": crossing.amount_usd,
            "limit_usd": crossing.limit_usd,
            "job": crossing.job,
            "bucket": bucket,
            "region": view.region,
            "resources": list(crossing.resources[:MAX_RELATED]),
        },
    )
    get_run_logger().warning(
        "threshold %s crossed: $%.2f above $%g", crossing.key, crossing.amount_usd, crossing.limit_usd
    )


def _stop(report: CostReport, record: JobRecord, reason: StopReason, account: str | None, why: str) -> None:
    """checkpoint_then_stop (checkpoint verified in S3 before the instance ends) and its event; a failure is
    reported and left to the next pass."""
    try:
        done: CheckpointStopReport = checkpoint_then_stop(record.bucket, record.name, reason, account=account)
    except Exception as exc:
        get_run_logger().warning("job %s not stopped (%s): %s", record.name, reason.value, exc)
        report.actions.append(ActionRow(job=record.name, reason=reason.value, outcome="failed", detail=str(exc)))
        return
    taken = done.model_dump(include={"job", "outcome", "instance_id", "checkpoint_verified"})
    report.actions.append(ActionRow(**taken, reason=reason.value, detail=f"{why}; {done.detail}"))
    if done.outcome != "stopped":
        return
    emit_job(
        ev.JOB_STOPPED,
        record.name,
        bucket=record.bucket,
        resource_ids=[done.instance_id, record.volume_id],
        attempt=record.attempt,
        by="cost-watch",
        reason=reason.value,
        why=why,
        checkpoint_verified=done.checkpoint_verified,
        checkpoint_uri=done.checkpoint_uri,
    )


def _money(value: float | None) -> str:
    return "" if value is None else f"${value:,.4f}"


def report_rows(report: CostReport) -> list[dict[str, str]]:
    """The artifact's table: jobs, then resources by cost (price unknown last), then cleanup advice."""
    rows = [
        {
            "kind": r.kind,
            "id": r.id,
            "job": r.job or "",
            "detail": r.detail,
            "$/hour": _money(r.hourly_usd),
            "since creation": _money(r.accumulated_usd),
            "today": _money(r.today_usd),
            "source": r.source or "",
            "price": f"price unknown: {r.unknown}" if r.unknown and r.kind != "job" else (r.unknown or ""),
        }
        for r in [*report.jobs, *report.resources]
    ]
    rows += [
        {
            "kind": f"advice: {a.kind}",
            "id": a.id,
            "job": "",
            "detail": f"{a.rule}: {a.detail}",
            "$/hour": "",
            "since creation": "",
            "today": "",
            "source": "",
            "price": "price unknown" if a.monthly_savings_usd is None else f"saves ${a.monthly_savings_usd:,.2f}/month",
        }
        for a in report.advice
    ]
    return rows


def report_summary(report: CostReport) -> str:
    """The artifact's description: totals, burn rate, projections, thresholds, sources, what was done."""
    if report.nothing_running or report.totals is None:
        return f"cost-watch {report.region}: nothing running"
    s = report.totals
    parts = [
        f"cost-watch {report.region}: ${s.hourly_usd:,.4f}/hour, ${s.accumulated_usd:,.2f} since creation, "
        f"${s.last_24h_usd:,.2f} in 24 h; projected ${s.end_of_day_usd:,.2f} today, ${s.end_of_month_usd:,.2f} "
        f"this month; prices: {', '.join(s.sources) or 'none'}"
    ]
    if s.unknown:
        parts.append(f"{s.unknown} resource(s) of price unknown, not counted")
    parts += [
        f"{'crossed' if r.fired else 'above'}: {r.key} ${r.amount_usd:,.2f} > ${r.limit_usd:,.2f}"
        for r in report.thresholds
    ]
    parts += [f"{a.job}: {a.outcome} ({a.reason})" for a in report.actions]
    return "; ".join([*parts, *report.notes])


def _report_artifact(report: CostReport) -> None:
    home = report.buckets[0] if report.buckets else "no-bucket"
    create_table_artifact(
        table=report_rows(report),
        key=artifact_key("cost-watch", report.region, home),
        description=report_summary(report),
    )
