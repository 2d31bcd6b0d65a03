"""The one price book and cost model (pure: no boto3, no Prefect, no I/O, no clock — `now` is a parameter).

- `PriceBook`: every price a pass needs for one region — on-demand $/hour per instance type, spot price history
  per (AZ, type), EBS $/GB-month per volume type plus provisioned IOPS and throughput above the free baseline,
  snapshot and S3 storage $/GB-month — each `Rate` saying where it came from (`api`, or `fallback <date>`).
  tasks/pricing.py fills one from the Pricing API and DescribeSpotPriceHistory; `fallback_book()` is the dated
  table used only when those are unreachable or denied. There is no other price table in the product.
- The cost model: each resource becomes a `CostLine` of `Segment`s (a span of time at a $/hour rate; a spot
  instance has one per price change over its life), so its cost over any window is an overlap sum. A resource
  without a price is a line with `unknown` set: it is counted on its own line, never as $0.
- `job_lines` prices a job across every attempt of its record (spot and on-demand), with its volumes, snapshots
  and checkpoint storage; `summarize` gives the burn rate, the cost over the last 24 hours, today, this month and
  since creation, and the projection to the end of the day and month.
- `check_thresholds(previous state, summary, thresholds)` → (new state, crossings): a threshold fires once when
  it is crossed, and again only after its value has gone back under and crossed anew. The state is a small
  pydantic model (JSON), which cost-watch keeps in S3 between passes.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.errors import InvalidInputError, TrainctlError
from core.jobs import AttemptRecord, JobRecord
from core.models import Instance, Snapshot, StoredObject, Volume

HOURS_PER_MONTH = 730  # AWS's own convention for GB-month, IOPS-month and throughput-month rates
GB = 1e9  # S3 and EBS snapshots bill per GB of 10**9 bytes
GP3_FREE_IOPS = 3000
GP3_FREE_THROUGHPUT_MIBPS = 125
SOURCE_API = "api"

Unit = Literal["hour", "GB-month", "IOPS-month", "MiBps-month"]


# -- the price book --------------------------------------------------------------------------------------------


class Rate(BaseModel):
    """One price: USD per `unit`, and where it came from (`api` or `fallback <date>`)."""

    model_config = ConfigDict(frozen=True)

    usd: float = Field(ge=0)
    unit: Unit
    source: str


class SpotPoint(BaseModel):
    """A spot price and the time from which it applies (one DescribeSpotPriceHistory row)."""

    model_config = ConfigDict(frozen=True)

    at: datetime
    usd_per_hour: float = Field(ge=0)


def spot_key(availability_zone: str, instance_type: str) -> str:
    return f"{availability_zone}/{instance_type}"


class PriceBook(BaseModel):
    """The prices of one region. A missing key means "price unknown" (never $0)."""

    region: str
    instances: dict[str, Rate] = Field(default_factory=dict, description="on-demand $/hour by instance type")
    spot: dict[str, list[SpotPoint]] = Field(
        default_factory=dict, description="spot history by spot_key(AZ, type), oldest first (always from the API)"
    )
    volumes: dict[str, Rate] = Field(default_factory=dict, description="EBS $/GB-month by volume type")
    iops: dict[str, Rate] = Field(default_factory=dict, description="$/IOPS-month (gp3: above 3,000) by type")
    throughput: dict[str, Rate] = Field(default_factory=dict, description="$/MiBps-month above 125 MiB/s by type")
    snapshot: Rate | None = None
    s3: Rate | None = None
    problems: dict[str, str] = Field(
        default_factory=dict, description="why a price is missing (refused answer, API unreachable), by its key"
    )

    def why_missing(self, key: str, default: str) -> str:
        return self.problems.get(key, default)

    def merged(self, other: PriceBook) -> PriceBook:
        """This book with `other`'s prices added (other wins where both have one)."""
        return self.model_copy(
            update={
                "instances": {**self.instances, **other.instances},
                "spot": {**self.spot, **other.spot},
                "volumes": {**self.volumes, **other.volumes},
                "iops": {**self.iops, **other.iops},
                "throughput": {**self.throughput, **other.throughput},
                "snapshot": other.snapshot or self.snapshot,
                "s3": other.s3 or self.s3,
                "problems": {**self.problems, **other.problems},
            }
        )

    def spot_price_at(self, availability_zone: str, instance_type: str, when: datetime) -> float | None:
        """The spot price in effect at `when` (the latest point at or before it; the earliest if none is)."""
        points = self.spot.get(spot_key(availability_zone, instance_type))
        if not points:
            return None
        index = bisect.bisect_right([_aware(p.at) for p in points], _aware(when)) - 1
        return points[max(index, 0)].usd_per_hour

    def volume_monthly(self, volume: Volume) -> float | None:
        """A volume's $/month: storage, plus provisioned IOPS and throughput above the free baseline; None when
        a part of it has no price."""
        storage = self.volumes.get(volume.volume_type)
        if storage is None:
            return None
        total = storage.usd * volume.size_gib
        for quantity, table in ((_billed_iops(volume), self.iops), (_billed_throughput(volume), self.throughput)):
            if quantity:
                rate = table.get(volume.volume_type)
                if rate is None:
                    return None
                total += rate.usd * quantity
        return total


def _billed_iops(volume: Volume) -> int:
    if volume.volume_type == "gp3":
        return max(0, (volume.iops or 0) - GP3_FREE_IOPS)
    return volume.iops or 0 if volume.volume_type in {"io1", "io2"} else 0


def _billed_throughput(volume: Volume) -> int:
    return max(0, (volume.throughput or 0) - GP3_FREE_THROUGHPUT_MIBPS) if volume.volume_type == "gp3" else 0


class PriceListError(TrainctlError):
    """A Pricing API product that does not say one price: refused, never guessed."""


def price_dimension(product: Mapping[str, Any], *, first_tier: bool = False) -> tuple[float, str]:
    """(USD per unit, unit) of one Pricing API `PriceList` product (decoded): its OnDemand terms and their price
    dimensions are keyed by SKU-derived codes, so they are iterated, never looked up by name. Exactly one price
    dimension is accepted; `first_tier` takes the tier starting at 0 of a tiered price (S3 storage) instead."""
    sku = str(product.get("product", {}).get("sku", "?"))
    terms = product.get("terms", {}).get("OnDemand", {})
    dimensions = [d for term in terms.values() for d in term.get("priceDimensions", {}).values()]
    if first_tier:
        dimensions = [d for d in dimensions if str(d.get("beginRange", "0")) == "0"]
    if len(dimensions) != 1:
        raise PriceListError(
            f"the Pricing API answered {len(dimensions)} on-demand price dimensions for SKU {sku} "
            f"({product.get('product', {}).get('attributes', {}).get('usagetype', 'unknown usage type')}); "
            "trainctl takes exactly one and will not guess",
            fix="The price of that resource is reported as unknown; check the product in the AWS price list",
        )
    dimension = dimensions[0]
    try:
        return float(dimension["pricePerUnit"]["USD"]), str(dimension.get("unit", ""))
    except (KeyError, TypeError, ValueError) as exc:
        raise PriceListError(
            f"SKU {sku} has no USD price ({exc})", fix="Check the product in the AWS price list"
        ) from exc


# The dated fallback: AWS list prices for us-east-1 (Linux, shared tenancy, on-demand), as published on the
# pages below on FALLBACK_DATE. Used only when the Pricing API is unreachable or denied; every figure priced from
# it says `fallback <date>`. The sandbox's Pricing API serves the same figures (tests/core/test_cost.py checks).
FALLBACK_DATE = "2025-01-15"
FALLBACK_SOURCE = f"fallback {FALLBACK_DATE}"
FALLBACK_REFERENCE = (
    "https://aws.amazon.com/ec2/pricing/on-demand/, https://aws.amazon.com/ebs/pricing/, "
    "https://aws.amazon.com/s3/pricing/ (us-east-1)"
)
FALLBACK_EC2_USD_PER_HOUR: dict[str, float] = {
    "t3.micro": 0.0104,
    "t3.small": 0.0208,
    "t3.medium": 0.0416,
    "t3.large": 0.0832,
    "m5.large": 0.096,
    "m5.xlarge": 0.192,
    "m5.2xlarge": 0.384,
    "c5.large": 0.085,
    "c5.xlarge": 0.17,
    "c5.2xlarge": 0.34,
    "r5.large": 0.126,
    "g4dn.xlarge": 0.526,
    "g4dn.2xlarge": 0.752,
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g5.4xlarge": 1.624,
    "g5.12xlarge": 5.672,
    "g6.xlarge": 0.8048,
    "g6.2xlarge": 0.9776,
    "p3.2xlarge": 3.06,
    "p3.8xlarge": 12.24,
    "p4d.24xlarge": 32.7726,
}
FALLBACK_EBS_USD_PER_GB_MONTH: dict[str, float] = {
    "gp3": 0.08,
    "gp2": 0.10,
    "io1": 0.125,
    "io2": 0.125,
    "st1": 0.045,
    "sc1": 0.015,
    "standard": 0.05,
}
FALLBACK_EBS_USD_PER_IOPS_MONTH: dict[str, float] = {"gp3": 0.005, "io1": 0.065, "io2": 0.065}
FALLBACK_EBS_USD_PER_MIBPS_MONTH: dict[str, float] = {"gp3": 0.04}
FALLBACK_SNAPSHOT_USD_PER_GB_MONTH = 0.05
FALLBACK_S3_USD_PER_GB_MONTH = 0.023  # S3 Standard, first 50 TB


@cache
def fallback_book(region: str = "us-east-1") -> PriceBook:
    """The dated fallback table as a price book (us-east-1 figures, whatever `region`; the source says so).
    Built once per region: treat it as read-only (`merged` returns a new book)."""
    source = FALLBACK_SOURCE if region == "us-east-1" else f"{FALLBACK_SOURCE} (us-east-1 prices)"

    def rates(table: Mapping[str, float], unit: Unit) -> dict[str, Rate]:
        return {k: Rate(usd=v, unit=unit, source=source) for k, v in table.items()}

    return PriceBook(
        region=region,
        instances=rates(FALLBACK_EC2_USD_PER_HOUR, "hour"),
        volumes=rates(FALLBACK_EBS_USD_PER_GB_MONTH, "GB-month"),
        iops=rates(FALLBACK_EBS_USD_PER_IOPS_MONTH, "IOPS-month"),
        throughput=rates(FALLBACK_EBS_USD_PER_MIBPS_MONTH, "MiBps-month"),
        snapshot=Rate(usd=FALLBACK_SNAPSHOT_USD_PER_GB_MONTH, unit="GB-month", source=source),
        s3=Rate(usd=FALLBACK_S3_USD_PER_GB_MONTH, unit="GB-month", source=source),
    )


def monthly_usd(resource: Instance | Volume | Snapshot, book: PriceBook) -> float | None:
    """What keeping the resource costs per month at list price (an instance on-demand; a stopped one only its
    volumes, so 0), or None when it has no price. A snapshot's figure is an upper bound (its full size)."""
    if isinstance(resource, Volume):
        monthly = book.volume_monthly(resource)
        return None if monthly is None else round(monthly, 2)
    if isinstance(resource, Snapshot):
        return None if book.snapshot is None else round(book.snapshot.usd * resource.size_gib, 2)
    rate = book.instances.get(resource.instance_type)
    if rate is None:
        return None
    return round(rate.usd * HOURS_PER_MONTH, 2) if resource.state in {"pending", "running"} else 0.0


def s3_monthly_usd(size_bytes: int, book: PriceBook) -> float | None:
    return None if book.s3 is None else round(book.s3.usd * size_bytes / GB, 4)


# -- cost lines ------------------------------------------------------------------------------------------------


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Segment:
    """`usd_per_hour` from `start` to `end`."""

    start: datetime
    end: datetime
    usd_per_hour: float

    def cost(self, start: datetime, end: datetime) -> float:
        hours = (min(self.end, end) - max(self.start, start)).total_seconds() / 3600
        return self.usd_per_hour * hours if hours > 0 else 0.0


@dataclass(frozen=True)
class CostLine:
    """One resource's spending: what it is, its segments, its rate now and the source of its price.

    `unknown` says why it has no price (then `segments` is empty and it counts in no total)."""

    id: str
    kind: str  # instance | volume | snapshot | s3
    detail: str
    job: str | None = None
    segments: tuple[Segment, ...] = ()
    hourly_usd: float = 0.0  # what it costs per hour now (0 once it stopped billing)
    source: str | None = None
    unknown: str | None = None

    def cost(self, start: datetime, end: datetime) -> float:
        start, end = _aware(start), _aware(end)
        return sum(s.cost(start, end) for s in self.segments)


def _unknown(resource_id: str, kind: str, detail: str, job: str | None, why: str) -> CostLine:
    return CostLine(id=resource_id, kind=kind, detail=detail, job=job, unknown=why)


def instance_line(
    instance_id: str,
    instance_type: str,
    availability_zone: str | None,
    capacity: str,
    start: datetime,
    end: datetime | None,
    book: PriceBook,
    *,
    now: datetime,
    job: str | None = None,
) -> CostLine:
    """An instance that ran from `start` to `end` (None: still running at `now`). Spot: the price history of its
    AZ integrated over its life; on-demand: the list price."""
    start, stop = _aware(start), _aware(end or now)
    running = end is None
    detail = f"{instance_type} {capacity} {availability_zone or ''}".strip()
    if capacity == "spot":
        points = book.spot.get(spot_key(availability_zone or "", instance_type))
        if not points:
            why = book.why_missing(spot_key(availability_zone or "", instance_type), "no spot price history")
            return _unknown(instance_id, "instance", detail, job, why)
        times = [_aware(p.at) for p in points]
        first = max(bisect.bisect_right(times, start) - 1, 0)
        cuts = [start, *(t for t in times[first + 1 :] if start < t < stop), stop]
        segments = tuple(
            Segment(a, b, book.spot_price_at(availability_zone or "", instance_type, a) or 0.0)
            for a, b in itertools.pairwise(cuts)
            if b > a
        )
        hourly = book.spot_price_at(availability_zone or "", instance_type, stop) or 0.0
        return CostLine(instance_id, "instance", detail, job, segments, hourly if running else 0.0, SOURCE_API)
    rate = book.instances.get(instance_type)
    if rate is None:
        why = book.why_missing(instance_type, f"no on-demand price for {instance_type}")
        return _unknown(instance_id, "instance", detail, job, why)
    segments = (Segment(start, stop, rate.usd),) if stop > start else ()
    return CostLine(instance_id, "instance", detail, job, segments, rate.usd if running else 0.0, rate.source)


def attempt_line(record: JobRecord, attempt: AttemptRecord, book: PriceBook, *, now: datetime) -> CostLine | None:
    """One attempt's instance over its life (launch → its end, or now while the job still runs it); None for an
    attempt that never got an instance."""
    if attempt.instance_id is None or attempt.instance_type is None:
        return None
    start = attempt.launched_at or attempt.created_at
    end = attempt.finished_at
    if end is None and not (record.active and attempt.number == record.attempt):
        end = record.updated_at or start  # ended without a time recorded: no more than the record says
    capacity = attempt.capacity_type or "on-demand"
    line = instance_line(
        attempt.instance_id,
        attempt.instance_type,
        attempt.availability_zone,
        capacity,
        start,
        end,
        book,
        now=now,
        job=record.name,
    )
    return line if line.unknown else _with_detail(line, f"attempt {attempt.number}: {line.detail}")


def _with_detail(line: CostLine, detail: str) -> CostLine:
    return CostLine(line.id, line.kind, detail, line.job, line.segments, line.hourly_usd, line.source, line.unknown)


def _storage_line(
    resource_id: str,
    kind: str,
    detail: str,
    job: str | None,
    monthly: float,
    start: datetime,
    now: datetime,
    source: str,
) -> CostLine:
    hourly = monthly / HOURS_PER_MONTH
    start, now = _aware(start), _aware(now)
    segments = (Segment(start, now, hourly),) if now > start else ()
    return CostLine(resource_id, kind, detail, job, segments, hourly, source)


def volume_line(volume: Volume, book: PriceBook, *, now: datetime) -> CostLine:
    """A volume from its creation until now, storage plus IOPS and throughput above the free baseline."""
    detail = f"{volume.volume_type} {volume.size_gib} GiB"
    if volume.iops or volume.throughput:
        detail += f" ({volume.iops or 0} IOPS, {volume.throughput or 0} MiB/s)"
    monthly = book.volume_monthly(volume)
    if monthly is None:
        return _unknown(volume.id, "volume", detail, volume.job, f"no price for {volume.volume_type} volumes")
    source = book.volumes[volume.volume_type].source
    return _storage_line(volume.id, "volume", detail, volume.job, monthly, volume.created_at, now, source)


def snapshot_line(snapshot: Snapshot, book: PriceBook, *, now: datetime) -> CostLine:
    """A snapshot at its full size (an upper bound: AWS bills its changed blocks)."""
    detail = f"{snapshot.size_gib} GiB (upper bound)"
    if book.snapshot is None:
        return _unknown(snapshot.id, "snapshot", detail, snapshot.job, "no snapshot price")
    monthly = book.snapshot.usd * snapshot.size_gib
    return _storage_line(
        snapshot.id, "snapshot", detail, snapshot.job, monthly, snapshot.created_at, now, book.snapshot.source
    )


def s3_line(uri: str, objects: Sequence[StoredObject], book: PriceBook, *, now: datetime, job: str | None) -> CostLine:
    """Objects under one S3 prefix, each since its last modification (what is deleted no longer counts)."""
    size = sum(o.size for o in objects)
    detail = f"{len(objects)} object(s), {size / GB:.3f} GB"
    if book.s3 is None:
        return _unknown(uri, "s3", detail, job, "no S3 storage price")
    per_byte_hour = book.s3.usd / GB / HOURS_PER_MONTH
    now = _aware(now)
    segments = tuple(
        Segment(_aware(o.last_modified), now, o.size * per_byte_hour) for o in objects if _aware(o.last_modified) < now
    )
    return CostLine(uri, "s3", detail, job, segments, size * per_byte_hour, book.s3.source)


def job_lines(
    record: JobRecord,
    book: PriceBook,
    *,
    now: datetime,
    volumes: Iterable[Volume] = (),
    snapshots: Iterable[Snapshot] = (),
    checkpoints: Sequence[StoredObject] = (),
) -> list[CostLine]:
    """Every cost of a job: the instance of each attempt (recoveries included), its volumes and snapshots (as the
    inventory lists them) and its checkpoint storage (the objects under its checkpoint prefix)."""
    lines = [line for a in record.attempts if (line := attempt_line(record, a, book, now=now)) is not None]
    lines += [_for_job(volume_line(v, book, now=now), record.name) for v in volumes]
    lines += [_for_job(snapshot_line(s, book, now=now), record.name) for s in snapshots]
    if checkpoints:
        uri = record.checkpoint_uri or f"s3://{record.bucket}/"
        lines.append(s3_line(uri, checkpoints, book, now=now, job=record.name))
    return lines


def _for_job(line: CostLine, job: str) -> CostLine:
    if line.job == job:
        return line
    return CostLine(line.id, line.kind, line.detail, job, line.segments, line.hourly_usd, line.source, line.unknown)


def inventory_lines(
    instances: Iterable[Instance],
    volumes: Iterable[Volume],
    snapshots: Iterable[Snapshot],
    book: PriceBook,
    *,
    now: datetime,
    priced: Iterable[str] = (),
) -> list[CostLine]:
    """Lines for managed resources no job line covers (`priced`: IDs already in job lines). A running instance
    from its launch time; one not running bills nothing now (what it ran before is in its job's lines)."""
    skip = set(priced)
    lines: list[CostLine] = []
    for inst in instances:
        if inst.id in skip:
            continue
        if inst.state in {"pending", "running"}:
            start = inst.created_at
            zone, capacity = inst.availability_zone, inst.lifecycle
            line = instance_line(inst.id, inst.instance_type, zone, capacity, start, None, book, now=now, job=inst.job)
            lines.append(line)
        else:
            lines.append(CostLine(inst.id, "instance", f"{inst.instance_type} {inst.state}", inst.job))
    lines += [volume_line(v, book, now=now) for v in volumes if v.id not in skip]
    lines += [snapshot_line(s, book, now=now) for s in snapshots if s.id not in skip]
    return lines


# -- summaries -------------------------------------------------------------------------------------------------


def _start_of_day(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def _start_of_next_month(now: datetime) -> datetime:
    first = _start_of_day(now).replace(day=1)
    return first.replace(year=first.year + 1, month=1) if first.month == 12 else first.replace(month=first.month + 1)


@dataclass(frozen=True)
class CostSummary:
    """Totals of the priced lines at `now` (UTC days and months); lines with no price are counted apart."""

    now: datetime
    hourly_usd: float  # burn rate
    accumulated_usd: float
    last_24h_usd: float
    today_usd: float
    month_usd: float
    end_of_day_usd: float  # today's cost if the burn rate holds until midnight UTC
    end_of_month_usd: float
    unknown: int  # lines with no price, in no figure above
    sources: tuple[str, ...]
    lines: tuple[CostLine, ...] = field(default=(), repr=False)

    @property
    def unknown_lines(self) -> list[CostLine]:
        return [line for line in self.lines if line.unknown]


def summarize(lines: Iterable[CostLine], *, now: datetime) -> CostSummary:
    """Burn rate, cost over the last 24 hours / today / this month / since creation, and projections."""
    now = _aware(now).astimezone(UTC)
    all_lines = tuple(sorted(lines, key=lambda x: (x.unknown is None, x.cost(datetime.min.replace(tzinfo=UTC), now))))
    priced = [x for x in all_lines if x.unknown is None]
    day, month = _start_of_day(now), _start_of_day(now).replace(day=1)
    hourly = sum(x.hourly_usd for x in priced)
    today = sum(x.cost(day, now) for x in priced)
    this_month = sum(x.cost(month, now) for x in priced)
    to_midnight = (day + timedelta(days=1) - now).total_seconds() / 3600
    to_month_end = (_start_of_next_month(now) - now).total_seconds() / 3600
    return CostSummary(
        now=now,
        hourly_usd=hourly,
        accumulated_usd=sum(x.cost(datetime.min.replace(tzinfo=UTC), now) for x in priced),
        last_24h_usd=sum(x.cost(now - timedelta(hours=24), now) for x in priced),
        today_usd=today,
        month_usd=this_month,
        end_of_day_usd=today + hourly * to_midnight,
        end_of_month_usd=this_month + hourly * to_month_end,
        unknown=len(all_lines) - len(priced),
        sources=tuple(sorted({x.source for x in priced if x.source})),
        lines=tuple(reversed(all_lines)),  # priced ones first, most expensive first
    )


def by_job(lines: Iterable[CostLine], *, now: datetime) -> dict[str, CostSummary]:
    """One summary per job (lines of no job are left out)."""
    grouped: dict[str, list[CostLine]] = {}
    for line in lines:
        if line.job:
            grouped.setdefault(line.job, []).append(line)
    return {job: summarize(group, now=now) for job, group in sorted(grouped.items())}


# -- thresholds ------------------------------------------------------------------------------------------------

ThresholdName = Literal["hourly", "daily", "accumulated", "job-budget"]


@dataclass(frozen=True)
class Thresholds:
    """The limits (CostPolicy's values as plain numbers). `job_budgets` per job override `job_budget_usd`."""

    hourly_usd: float = 50.0
    daily_usd: float = 100.0
    accumulated_usd: float = 500.0
    job_budget_usd: float | None = None
    job_budgets: Mapping[str, float] = field(default_factory=dict)

    def budget_of(self, job: str) -> float | None:
        return self.job_budgets.get(job, self.job_budget_usd)


class ThresholdState(BaseModel):
    """What is above its limit since it fired (key → when): kept between passes (JSON)."""

    above: dict[str, datetime] = Field(default_factory=dict)


@dataclass(frozen=True)
class Crossing:
    """A threshold crossed on this pass: which, by how much, for which job, over which resources."""

    key: str  # "hourly", "daily", "accumulated" or "job-budget:<job>"
    threshold: ThresholdName
    limit_usd: float
    amount_usd: float
    job: str | None
    resources: tuple[str, ...]


def _measures(
    total: CostSummary, jobs: Mapping[str, CostSummary], limits: Thresholds
) -> list[tuple[str, ThresholdName, float, float, str | None, CostSummary]]:
    found: list[tuple[str, ThresholdName, float, float, str | None, CostSummary]] = [
        ("hourly", "hourly", limits.hourly_usd, total.hourly_usd, None, total),
        ("daily", "daily", limits.daily_usd, total.last_24h_usd, None, total),
        ("accumulated", "accumulated", limits.accumulated_usd, total.accumulated_usd, None, total),
    ]
    for job, summary in jobs.items():
        budget = limits.budget_of(job)
        if budget is not None:
            found.append((f"job-budget:{job}", "job-budget", budget, summary.accumulated_usd, job, summary))
    return found


def check_thresholds(
    state: ThresholdState, total: CostSummary, jobs: Mapping[str, CostSummary], limits: Thresholds
) -> tuple[ThresholdState, list[Crossing]]:
    """The thresholds crossed since `state`: each fires when its value goes above its limit and stays quiet while
    it remains above; once back at or under the limit it is re-armed. Pure: the caller keeps the new state."""
    above: dict[str, datetime] = {}
    crossings: list[Crossing] = []
    for key, name, limit, amount, job, summary in _measures(total, jobs, limits):
        if amount <= limit:
            continue
        if key in state.above:
            above[key] = state.above[key]
            continue
        above[key] = total.now
        resources = tuple(x.id for x in summary.lines if x.unknown is None)
        crossings.append(Crossing(key, name, limit, round(amount, 2), job, resources))
    return ThresholdState(above=above), crossings


def over_budget(jobs: Mapping[str, CostSummary], limits: Thresholds, *, until_next_pass: timedelta) -> list[str]:
    """Jobs whose accumulated cost would pass their budget before the next pass (at their current burn rate)."""
    hours = until_next_pass.total_seconds() / 3600
    return [
        job
        for job, s in jobs.items()
        if (budget := limits.budget_of(job)) is not None and s.accumulated_usd + s.hourly_usd * hours >= budget
    ]


# -- the launch-time guard --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchPrice:
    """The hourly price a launch will pay: spot's current price in its AZ, or the on-demand list price."""

    instance_type: str
    capacity: str  # spot | on-demand
    availability_zone: str | None
    usd_per_hour: float | None  # None: no price could be found
    source: str  # api | fallback <date>
    detail: str = ""

    def describe(self) -> str:
        where = self.availability_zone or "any AZ"
        price = "price unknown" if self.usd_per_hour is None else f"${self.usd_per_hour:.4f}/hour"
        extra = f"; {self.detail}" if self.detail else ""
        return f"{self.instance_type} {self.capacity} in {where}: {price} ({self.source}{extra})"


def refuse_above(price: LaunchPrice, max_hourly_cost: float | None, *, field: str = "max_hourly_cost") -> None:
    """Refuse a launch whose hourly price is above `max_hourly_cost` (or unknown while a limit is set), naming
    the field and the price source. No limit: nothing to check."""
    if max_hourly_cost is None:
        return
    if price.usd_per_hour is None:
        raise InvalidInputError(
            field,
            max_hourly_cost,
            f"a limit that can be checked, but no price was found for {price.describe()}",
            fix=f"Unset {field} to launch without the check, or pick an instance type AWS lists a price for",
        )
    if price.usd_per_hour > max_hourly_cost:
        raise InvalidInputError(
            field,
            max_hourly_cost,
            f"at least ${price.usd_per_hour:.4f}/hour, the price of {price.describe()}",
            fix=f"Raise {field}, pick a cheaper instance type, or launch on spot",
        )
