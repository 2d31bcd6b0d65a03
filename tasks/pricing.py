"""Prices from AWS: the Pricing API (GetProducts) and EC2 spot price history, into core/cost.py's PriceBook.

- On-demand $/hour of an instance type: GetProducts (service AmazonEC2, endpoint in us-east-1 whatever the
  resource's region) with `productFamily=Compute Instance`, `instanceType`, `regionCode` (when that finds nothing,
  the region's `location` name, as older price lists have only that), `operatingSystem=Linux`, `tenancy=Shared`,
  `preInstalledSw=NA`, `licenseModel=No License required`, `capacitystatus=Used`.
- EBS of a region in four calls: storage $/GB-month per volume type (`productFamily=Storage`), provisioned IOPS
  (`System Operation`, usage types `EBS:VolumeP-IOPS.gp3|piops|io2`), throughput (`Provisioned Throughput`,
  `EBS:VolumeP-Throughput.gp3`, priced per GiBps-month: divided by 1,024 into $/MiBps-month) and snapshots
  (`Storage Snapshot`, `EBS:SnapshotUsage`); S3 Standard storage (AmazonS3, first tier) in one more.
- Spot: DescribeSpotPriceHistory for one AZ and type, `Linux/UNIX`, from the instance's launch (AWS then includes
  the price in effect at that start) until now, through the paginator.

Each product must carry exactly one price dimension (core.cost.price_dimension); otherwise that price is
refused and reported as unknown. The Pricing API answers are cached for a day, in memory and on disk
(`$TRAINCTL_CACHE_DIR`, default `~/.cache/trainctl/prices`), keyed by endpoint and query; spot history for a few
minutes in memory. When the Pricing API cannot be reached or is denied, the dated fallback table of core/cost.py
is used, and every Rate says which source it came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from blocks.aws import load_account
from blocks.policies import CostPolicy
from core.cost import (
    FALLBACK_SOURCE,
    SOURCE_API,
    LaunchPrice,
    PriceBook,
    PriceListError,
    Rate,
    SpotPoint,
    Unit,
    fallback_book,
    price_dimension,
    refuse_above,
    spot_key,
)
from core.errors import AwsError, EndpointUnreachableError
from tasks.aws import TRANSIENT_CODES, aws_task, run_logger, translate

PRICING_REGION = "us-east-1"  # the Pricing API's endpoint (it also has ap-south-1 and eu-central-1)
PRICE_TTL = timedelta(days=1)
SPOT_TTL = timedelta(minutes=5)
SPOT_PRODUCT = "Linux/UNIX"
# Errors after which the fallback table is used: the API is not there for us (denied, unreachable, or still
# throttling after the task's retries).
FALLBACK_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", *TRANSIENT_CODES})

# `location` names of the price list (they differ from the console's: "EU (Ireland)", not "Europe (Ireland)").
LOCATIONS: dict[str, str] = {
    "us-east-1": "US East (N. Virginia)",
    "us-east-2": "US East (Ohio)",
    "us-west-1": "US West (N. California)",
    "us-west-2": "US West (Oregon)",
    "ca-central-1": "Canada (Central)",
    "eu-west-1": "EU (Ireland)",
    "eu-west-2": "EU (London)",
    "eu-west-3": "EU (Paris)",
    "eu-central-1": "EU (Frankfurt)",
    "eu-north-1": "EU (Stockholm)",
    "ap-south-1": "Asia Pacific (Mumbai)",
    "ap-northeast-1": "Asia Pacific (Tokyo)",
    "ap-northeast-2": "Asia Pacific (Seoul)",
    "ap-southeast-1": "Asia Pacific (Singapore)",
    "ap-southeast-2": "Asia Pacific (Sydney)",
    "sa-east-1": "South America (Sao Paulo)",
}
_EBS_IOPS = {"gp3": "EBS:VolumeP-IOPS.gp3", "io1": "EBS:VolumeP-IOPS.piops", "io2": "EBS:VolumeP-IOPS.io2"}
_EBS_THROUGHPUT = {"gp3": "EBS:VolumeP-Throughput.gp3"}
_SNAPSHOT_USAGE = "EBS:SnapshotUsage"


# -- the cache ---------------------------------------------------------------------------------------------------


class _Cache:
    """Answers by key, for `ttl`: in memory, and on disk when `directory` names a folder (survives the process;
    read each time, so a changed TRAINCTL_CACHE_DIR applies at once)."""

    def __init__(self, ttl: timedelta, directory: Callable[[], Path] | None) -> None:
        self.ttl = ttl.total_seconds()
        self.directory = directory
        self.memory: dict[str, tuple[float, Any]] = {}
        self.lock = threading.Lock()

    def _path(self, key: str) -> Path | None:
        name = hashlib.sha256(key.encode()).hexdigest()[:32] + ".json"
        return self.directory() / name if self.directory else None

    def get(self, key: str) -> Any | None:
        with self.lock:
            hit = self.memory.get(key)
        path = self._path(key)
        if hit is None and path is not None and path.is_file():
            try:
                stored = json.loads(path.read_text())
                hit = (float(stored["at"]), stored["value"])
            except (OSError, ValueError, KeyError):
                hit = None
        if hit is None or time.time() - hit[0] > self.ttl:
            return None
        with self.lock:
            self.memory[key] = hit
        return hit[1]

    def put(self, key: str, value: Any) -> None:
        at = time.time()
        with self.lock:
            self.memory[key] = (at, value)
        path = self._path(key)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"at": at, "key": key, "value": value}))
                tmp.replace(path)
            except OSError:
                pass  # a read-only home: the memory cache still serves this process

    def clear(self) -> None:
        with self.lock:
            self.memory.clear()


def cache_dir() -> Path:
    configured = os.environ.get("TRAINCTL_CACHE_DIR")
    base = Path(configured) if configured else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "prices" if configured else base / "trainctl" / "prices"


_PRODUCTS = _Cache(PRICE_TTL, cache_dir)
_SPOT = _Cache(SPOT_TTL, None)  # memory only: the history grows every pass


def clear_cache() -> None:
    """Forget the in-memory answers (tests; the disk cache is keyed by endpoint and expires on its own)."""
    _PRODUCTS.clear()
    _SPOT.clear()


# -- GetProducts -------------------------------------------------------------------------------------------------


def pricing_client(account: str | None = None) -> Any:
    """A Pricing API client of the account's credentials and endpoint, in us-east-1 (where the API is)."""
    aws = load_account(account)
    return aws.model_copy(update={"region": PRICING_REGION}).client("pricing")


def get_products(pricing: Any, service: str, filters: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every product matching `filters` (TERM_MATCH), decoded, cached for a day (memory and disk)."""
    endpoint = str(getattr(pricing.meta, "endpoint_url", ""))
    key = json.dumps([endpoint, service, sorted(filters.items())])
    cached = _PRODUCTS.get(key)
    if cached is not None:
        return list(cached)
    wanted = [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()]
    with translate("pricing:GetProducts"):
        pages = pricing.get_paginator("get_products").paginate(ServiceCode=service, Filters=wanted)
        products = [json.loads(item) for page in pages for item in page["PriceList"]]
    _PRODUCTS.put(key, products)
    return products


def _in_region(pricing: Any, service: str, region: str, filters: Mapping[str, str]) -> list[dict[str, Any]]:
    """Products of `region` by `regionCode`; when none, by the region's `location` name."""
    found = get_products(pricing, service, {**filters, "regionCode": region})
    if not found and region in LOCATIONS:
        found = get_products(pricing, service, {**filters, "location": LOCATIONS[region]})
    return found


def _rate(product: Mapping[str, Any], unit: Unit, *, first_tier: bool = False, per: float = 1.0) -> Rate:
    usd, _ = price_dimension(product, first_tier=first_tier)
    return Rate(usd=usd / per, unit=unit, source=SOURCE_API)


def on_demand_rate(pricing: Any, instance_type: str, region: str) -> Rate | None:
    """The on-demand $/hour of a Linux, shared-tenancy instance type in `region`; None when AWS lists none.
    Raises PriceListError when the answer is not exactly one product with one price dimension."""
    filters = {
        "productFamily": "Compute Instance",
        "instanceType": instance_type,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "licenseModel": "No License required",
        "capacitystatus": "Used",
    }
    products = _in_region(pricing, "AmazonEC2", region, filters)
    if not products:
        return None
    if len(products) > 1:
        skus = ", ".join(str(p.get("product", {}).get("sku")) for p in products)
        raise PriceListError(
            f"the Pricing API answered {len(products)} products for {instance_type} in {region} ({skus})",
            fix="The price is reported as unknown; check the filters against the AWS price list",
        )
    return _rate(products[0], "hour")


def _by_usage(products: Iterable[Mapping[str, Any]], usage: str) -> Mapping[str, Any] | None:
    """The product whose usage type is `usage` (outside us-east-1 AWS prefixes it: `USW2-EBS:...`)."""
    for product in products:
        found = str(product.get("product", {}).get("attributes", {}).get("usagetype", ""))
        if found == usage or found.endswith("-" + usage):
            return product
    return None


def storage_book(pricing: Any, region: str) -> PriceBook:
    """EBS (storage, IOPS, throughput), snapshot and S3 Standard prices of `region`; a refused product is left
    out with its reason in `problems`."""
    book = PriceBook(region=region)
    problems: dict[str, str] = {}

    def take(key: str, product: Mapping[str, Any] | None, unit: Unit, **how: Any) -> Rate | None:
        if product is None:
            return None
        try:
            return _rate(product, unit, **how)
        except PriceListError as exc:
            problems[key] = str(exc)
            return None

    storage = _in_region(pricing, "AmazonEC2", region, {"productFamily": "Storage"})
    for product in storage:
        name = product.get("product", {}).get("attributes", {}).get("volumeApiName")
        if name and (rate := take(f"volume:{name}", product, "GB-month")) is not None:
            book.volumes[str(name)] = rate
    iops = _in_region(pricing, "AmazonEC2", region, {"productFamily": "System Operation"})
    for name, usage in _EBS_IOPS.items():
        if (rate := take(f"iops:{name}", _by_usage(iops, usage), "IOPS-month")) is not None:
            book.iops[name] = rate
    throughput = _in_region(pricing, "AmazonEC2", region, {"productFamily": "Provisioned Throughput"})
    for name, usage in _EBS_THROUGHPUT.items():
        listed = _by_usage(throughput, usage)
        # Listed per GiBps-month (AWS's unit; its description says MiBps): $/MiBps-month is 1/1,024 of it.
        per = 1024.0 if listed is not None and _unit(listed).lower().startswith("gibps") else 1.0
        if (rate := take(f"throughput:{name}", listed, "MiBps-month", per=per)) is not None:
            book.throughput[name] = rate
    snapshots = _in_region(pricing, "AmazonEC2", region, {"productFamily": "Storage Snapshot"})
    book.snapshot = take("snapshot", _by_usage(snapshots, _SNAPSHOT_USAGE), "GB-month")
    s3 = _in_region(
        pricing,
        "AmazonS3",
        region,
        {"productFamily": "Storage", "volumeType": "Standard", "storageClass": "General Purpose"},
    )
    book.s3 = take("s3", s3[0] if s3 else None, "GB-month", first_tier=True)
    book.problems.update(problems)
    return book


def _unit(product: Mapping[str, Any]) -> str:
    terms = product.get("terms", {}).get("OnDemand", {})
    units = [str(d.get("unit", "")) for t in terms.values() for d in t.get("priceDimensions", {}).values()]
    return units[0] if units else ""


# -- spot price history ------------------------------------------------------------------------------------------


def spot_history(
    ec2: Any, availability_zone: str, instance_type: str, start: datetime, end: datetime
) -> list[SpotPoint]:
    """The Linux spot prices of one type in one AZ from `start` (the price then in effect included) to `end`,
    oldest first."""
    key = json.dumps([str(ec2.meta.endpoint_url), availability_zone, instance_type, start.isoformat()])
    cached = _SPOT.get(key)
    if cached is not None and datetime.fromisoformat(cached["end"]) >= end - SPOT_TTL:
        return [SpotPoint.model_validate(p) for p in cached["points"]]
    with translate("ec2:DescribeSpotPriceHistory"):
        pages = ec2.get_paginator("describe_spot_price_history").paginate(
            AvailabilityZone=availability_zone,
            InstanceTypes=[instance_type],
            ProductDescriptions=[SPOT_PRODUCT],
            StartTime=start,
            EndTime=end,
        )
        rows = [r for page in pages for r in page["SpotPriceHistory"]]
    points = sorted(
        (SpotPoint(at=r["Timestamp"], usd_per_hour=float(r["SpotPrice"])) for r in rows),
        key=lambda p: p.at,
    )
    _SPOT.put(key, {"end": end.isoformat(), "points": [p.model_dump(mode="json") for p in points]})
    return points


# -- the price book ----------------------------------------------------------------------------------------------


def _unavailable(exc: Exception) -> bool:
    """Is the API not there for us (unreachable, denied, throttled past the retries)? Then the fallback is used."""
    return isinstance(exc, EndpointUnreachableError) or (isinstance(exc, AwsError) and exc.code in FALLBACK_CODES)


def _with_fallback(book: PriceBook, exc: Exception, region: str) -> PriceBook:
    reason = f"Pricing API unavailable ({getattr(exc, 'code', type(exc).__name__)})"
    fallback = fallback_book(region)
    return fallback.merged(book).model_copy(update={"problems": {**book.problems, "pricing-api": reason}})


@aws_task(name="pricing:price-book", task_run_name="price-book {region}", tags=["aws-pricing"])
def price_book(
    region: str,
    instance_types: Iterable[str] = (),
    spot: Iterable[tuple[str, str, datetime]] = (),
    *,
    now: datetime | None = None,
    account: str | None = None,
) -> PriceBook:
    """The prices a cost-watch pass needs in `region`: on-demand for `instance_types`, storage (EBS, snapshots,
    S3), and the spot history of each (AZ, type, since) in `spot` up to `now`. Falls back to the dated table
    when the Pricing API is unavailable (each Rate's `source` says so); spot history has no fallback: its lines
    become "price unknown". A product refused (not one price dimension) is missing, with its reason."""
    now = now or datetime.now(UTC)
    book = PriceBook(region=region)
    try:
        pricing = pricing_client(account)
        book = storage_book(pricing, region)
        for instance_type in sorted(set(instance_types)):
            try:
                rate = on_demand_rate(pricing, instance_type, region)
            except PriceListError as exc:
                book.problems[instance_type] = str(exc)
                continue
            if rate is not None:
                book.instances[instance_type] = rate
    except (AwsError, EndpointUnreachableError) as exc:
        if not _unavailable(exc):
            raise
        book = _with_fallback(book, exc, region)
    ec2 = load_account(account).client("ec2")
    for zone, instance_type, since in sorted(set(spot)):
        try:
            points = spot_history(ec2, zone, instance_type, since, now)
        except (AwsError, EndpointUnreachableError) as exc:
            if not _unavailable(exc):
                raise
            book.problems[spot_key(zone, instance_type)] = f"spot price history unavailable ({exc})"
            continue
        if points:
            book.spot[spot_key(zone, instance_type)] = points
    return book


# -- the launch-time price ---------------------------------------------------------------------------------------


def current_spot_price(
    ec2: Any, instance_type: str, availability_zone: str | None, now: datetime
) -> tuple[float, str] | None:
    """The spot price in effect now in `availability_zone` (any AZ: the highest of the region's, as EC2 may pick
    any), with its AZ; None when EC2 lists none."""
    with translate("ec2:DescribeSpotPriceHistory"):
        extra = {"AvailabilityZone": availability_zone} if availability_zone else {}
        pages = ec2.get_paginator("describe_spot_price_history").paginate(
            InstanceTypes=[instance_type], ProductDescriptions=[SPOT_PRODUCT], StartTime=now, EndTime=now, **extra
        )
        rows = [r for page in pages for r in page["SpotPriceHistory"]]
    latest: dict[str, tuple[datetime, float]] = {}
    for row in rows:
        zone, at = str(row["AvailabilityZone"]), row["Timestamp"]
        if zone not in latest or at > latest[zone][0]:
            latest[zone] = (at, float(row["SpotPrice"]))
    if not latest:
        return None
    zone = max(latest, key=lambda z: latest[z][1])
    return latest[zone][1], zone


@aws_task(name="pricing:launch-price", task_run_name="launch-price {instance_type}", tags=["aws-pricing"])
def launch_price(
    instance_type: str,
    *,
    spot: bool,
    availability_zone: str | None = None,
    now: datetime | None = None,
    account: str | None = None,
) -> LaunchPrice:
    """What one instance of `instance_type` will cost per hour: spot's current price (in `availability_zone`, or
    the highest of the region's AZs), else the on-demand price — which also bounds a spot launch whose history
    cannot be read (spot's default max price is the on-demand price). The result names its source."""
    now = now or datetime.now(UTC)
    aws = load_account(account)
    capacity = "spot" if spot else "on-demand"
    note = ""
    if spot:
        try:
            found = current_spot_price(aws.client("ec2"), instance_type, availability_zone, now)
        except (AwsError, EndpointUnreachableError) as exc:
            if not _unavailable(exc):
                raise
            found, note = None, f"spot history unavailable ({getattr(exc, 'code', exc)})"
        if found is not None:
            return LaunchPrice(instance_type, capacity, found[1], found[0], SOURCE_API, "current spot price")
        note = note or "no spot price listed"
    region = aws.resolved_region()
    try:
        rate = on_demand_rate(pricing_client(account), instance_type, region)
    except PriceListError as exc:
        return LaunchPrice(instance_type, capacity, availability_zone, None, SOURCE_API, str(exc))
    except (AwsError, EndpointUnreachableError) as exc:
        if not _unavailable(exc):
            raise
        rate = fallback_book(region).instances.get(instance_type)
    detail = "; ".join(x for x in (note, "on-demand list price" + (" (an upper bound)" if spot else "")) if x)
    if rate is None:
        return LaunchPrice(instance_type, capacity, availability_zone, None, FALLBACK_SOURCE, detail)
    return LaunchPrice(instance_type, capacity, availability_zone, rate.usd, rate.source, detail)


def checked_launch_price(
    instance_type: str,
    *,
    spot: bool,
    availability_zone: str | None,
    max_hourly_cost: float | None,
    cost_policy: str | None = None,
    account: str | None = None,
) -> LaunchPrice:
    """The launch-time guard (call it before any AWS mutation): logs the hourly price the launch will pay and
    refuses (InvalidInputError naming max_hourly_cost and the price source) above `max_hourly_cost` — the job's,
    else the CostPolicy block `cost_policy`'s (default policy: no limit)."""
    limit = max_hourly_cost if max_hourly_cost is not None else CostPolicy.load_or_default(cost_policy).max_hourly_cost
    price = launch_price(instance_type, spot=spot, availability_zone=availability_zone, account=account)
    limit_text = f"; limit ${limit:.4f}/hour" if limit is not None else ""
    run_logger().info("hourly price: %s%s", price.describe(), limit_text)
    refuse_above(price, limit)
    return price
