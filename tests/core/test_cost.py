"""The price book and cost model with fixed prices and a controlled clock: per-job cost across attempts, price
unknown never $0, thresholds that fire once per crossing, the launch guard, and one price table (fallback =
sandbox = teardown's savings)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from core import cost
from core import tags as t
from core.errors import InvalidInputError
from core.jobs import AttemptRecord, JobRecord, JobStatus
from core.models import Instance, Inventory, Snapshot, StoredObject, Volume
from core.teardown import Scope, plan_teardown
from sandbox import pricing as sandbox_pricing

T0 = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
ZONE = "us-east-1a"


def _book() -> cost.PriceBook:
    """Fixed prices: on-demand g5.xlarge $1.006/h; spot in us-east-1a $0.40/h until T0+2h, then $0.50/h."""
    api = "api"
    return cost.PriceBook(
        region="us-east-1",
        instances={"g5.xlarge": cost.Rate(usd=1.006, unit="hour", source=api)},
        spot={
            cost.spot_key(ZONE, "g5.xlarge"): [
                cost.SpotPoint(at=T0 - HOUR, usd_per_hour=0.40),
                cost.SpotPoint(at=T0 + 2 * HOUR, usd_per_hour=0.50),
            ]
        },
        volumes={"gp3": cost.Rate(usd=0.08, unit="GB-month", source=api)},
        iops={"gp3": cost.Rate(usd=0.005, unit="IOPS-month", source=api)},
        throughput={"gp3": cost.Rate(usd=0.04, unit="MiBps-month", source=api)},
        snapshot=cost.Rate(usd=0.05, unit="GB-month", source=api),
        s3=cost.Rate(usd=0.023, unit="GB-month", source=api),
    )


def _record(*, third_type: str | None = None) -> JobRecord:
    """Attempt 1: spot T0 → T0+4h (interrupted); attempt 2: on-demand from T0+4.5h, still running."""
    attempts = [
        AttemptRecord(
            number=1,
            status=JobStatus.INTERRUPTED,
            instance_id="i-00000000000000001",
            instance_type="g5.xlarge",
            availability_zone=ZONE,
            capacity_type="spot",
            created_at=T0 - timedelta(minutes=5),
            launched_at=T0,
            finished_at=T0 + 4 * HOUR,
        ),
        AttemptRecord(
            number=2,
            status=JobStatus.RUNNING,
            launched_by="spot-watch",
            instance_id="i-00000000000000002",
            instance_type=third_type or "g5.xlarge",
            availability_zone=ZONE,
            capacity_type="on-demand",
            created_at=T0 + 4 * HOUR,
            launched_at=T0 + 4.5 * HOUR,
        ),
    ]
    return JobRecord(
        name="llm",
        bucket="b",
        status=JobStatus.RUNNING,
        attempts=attempts,
        checkpoint_uri="s3://b/ckpt/llm/",
        created_at=T0,
    )


def _volume() -> Volume:
    tags = {t.MANAGED: "true", t.JOB: "llm", t.PERSISTENT: "true"}
    return Volume(
        id="vol-00000000000000001",
        tags=tags,
        created_at=T0 - HOUR,
        state="in-use",
        size_gib=100,
        volume_type="gp3",
        iops=4000,
        throughput=250,
    )


def _snapshot() -> Snapshot:
    tags = {t.MANAGED: "true", t.JOB: "llm"}
    return Snapshot(id="snap-00000000000000001", tags=tags, created_at=T0 + 4 * HOUR, state="completed", size_gib=50)


def test_job_cost_across_a_spot_and_an_on_demand_attempt_matches_the_hand_computed_figure() -> None:
    now = T0 + 6 * HOUR
    checkpoints = [
        StoredObject(key="ckpt/llm/ckpt-000001/model.pt", size=5 * 10**9, last_modified=T0 + HOUR),
        StoredObject(key="ckpt/llm/ckpt-000002/model.pt", size=5 * 10**9, last_modified=T0 + 5 * HOUR),
    ]
    lines = cost.job_lines(
        _record(), _book(), now=now, volumes=[_volume()], snapshots=[_snapshot()], checkpoints=checkpoints
    )
    by_id = {line.id: line for line in lines}
    # Spot: 2 h at $0.40, then 2 h at $0.50 (the price changed during its life).
    spot = 2 * 0.40 + 2 * 0.50
    on_demand = 1.5 * 1.006
    volume_monthly = 100 * 0.08 + (4000 - 3000) * 0.005 + (250 - 125) * 0.04  # storage + IOPS + throughput
    volume = volume_monthly / 730 * 7
    snapshot = 50 * 0.05 / 730 * 2
    storage = (5 * 5 + 5 * 1) * 0.023 / 730  # GB-hours of each checkpoint since it was written
    assert by_id["i-00000000000000001"].cost(T0 - 24 * HOUR, now) == pytest.approx(spot, abs=0.01)
    assert by_id["i-00000000000000002"].cost(T0 - 24 * HOUR, now) == pytest.approx(on_demand, abs=0.01)
    total = cost.summarize(lines, now=now)
    assert total.accumulated_usd == pytest.approx(spot + on_demand + volume + snapshot + storage, abs=0.01)
    assert total.unknown == 0 and total.sources == ("api",)
    # Burn rate: what still bills now (the interrupted spot instance no longer does).
    burn = 1.006 + volume_monthly / 730 + 2.5 / 730 + 10 * 0.023 / 730
    assert total.hourly_usd == pytest.approx(burn, abs=1e-6)
    # Projections: today since midnight plus the burn rate until midnight, and the month likewise.
    assert total.end_of_day_usd == pytest.approx(total.today_usd + burn * 10, abs=1e-6)  # now is 14:00 UTC
    assert total.end_of_month_usd == pytest.approx(total.month_usd + burn * (21 * 24 + 10), abs=1e-6)  # to April 1st
    assert cost.by_job(lines, now=now)["llm"].accumulated_usd == pytest.approx(total.accumulated_usd)


def test_a_type_without_a_price_is_counted_apart_never_as_zero() -> None:
    now = T0 + 6 * HOUR
    lines = cost.job_lines(_record(third_type="x9.mega"), _book(), now=now)
    total = cost.summarize(lines, now=now)
    assert total.unknown == 1
    (unknown,) = total.unknown_lines
    assert unknown.id == "i-00000000000000002" and "x9.mega" in (unknown.unknown or "")
    assert total.accumulated_usd == pytest.approx(1.8, abs=0.01)  # only the priced spot attempt
    assert total.hourly_usd == 0.0  # the unknown one is not in the burn rate either (not as $0: apart)


def _line(job: str, hourly: float, since: datetime, until: datetime) -> cost.CostLine:
    return cost.CostLine(
        id=f"i-{job}", kind="instance", detail="", job=job, segments=(cost.Segment(since, until, hourly),)
    )


def _pass(
    state: cost.ThresholdState, lines: list[cost.CostLine], now: datetime, limits: cost.Thresholds
) -> tuple[cost.ThresholdState, list[str]]:
    # Each pass reads the state as the flow keeps it (JSON in S3).
    state = cost.ThresholdState.model_validate_json(state.model_dump_json())
    live = [
        cost.CostLine(x.id, x.kind, x.detail, x.job, x.segments, x.hourly_usd if x.segments[-1].end >= now else 0.0)
        for x in lines
    ]
    new, crossings = cost.check_thresholds(state, cost.summarize(live, now=now), cost.by_job(live, now=now), limits)
    return new, [c.key for c in crossings]


def test_each_threshold_fires_once_per_crossing_and_again_when_crossed_anew() -> None:
    limits = cost.Thresholds(hourly_usd=10, daily_usd=100, accumulated_usd=150, job_budget_usd=120)
    state = cost.ThresholdState()
    # A $12/h job from T0 until T0+5h, then nothing for a while, then $12/h again from T0+30h.
    first = cost.CostLine("i-a", "instance", "", "a", (cost.Segment(T0, T0 + 5 * HOUR, 12.0),), 12.0)
    fired: list[list[str]] = []
    for hours in (1, 2, 3):  # three passes while it runs: hourly fires on the first only
        state, keys = _pass(state, [first], T0 + hours * HOUR, limits)
        fired.append(keys)
    assert fired == [["hourly"], [], []]
    state, keys = _pass(state, [first], T0 + 6 * HOUR, limits)  # stopped: back under → re-armed, nothing fires
    assert keys == [] and "hourly" not in state.above
    second = cost.CostLine("i-b", "instance", "", "a", (cost.Segment(T0 + 30 * HOUR, T0 + 60 * HOUR, 12.0),), 12.0)
    passes = [T0 + 31 * HOUR, T0 + 32 * HOUR, T0 + 35 * HOUR, T0 + 36 * HOUR, T0 + 38 * HOUR, T0 + 39 * HOUR]
    fired = []
    for now in passes:
        state, keys = _pass(state, [first, second], now, limits)
        fired.append(keys)
    # 31h: hourly anew. 35h: the job reaches $120 (budget: 60 + 5*12 = 120 is not above; 36h: 132 > 120).
    # 38h: last 24h = 8*12 = 96 ≤ 100; 39h: 108 > 100 → daily; accumulated 60+108 = 168 > 150 at 39h (156 at 38h).
    assert fired == [["hourly"], [], [], ["job-budget:a"], ["accumulated"], ["daily"]]
    assert set(state.above) == {"hourly", "daily", "accumulated", "job-budget:a"}
    assert json.loads(state.model_dump_json())["above"]  # serialisable as the flow keeps it


def test_over_budget_looks_ahead_to_the_next_pass() -> None:
    limits = cost.Thresholds(job_budget_usd=None, job_budgets={"a": 25.0})
    lines = [cost.CostLine("i-a", "instance", "", "a", (cost.Segment(T0, T0 + 24 * HOUR, 12.0),), 12.0)]
    jobs = cost.by_job(lines, now=T0 + 1.5 * HOUR)  # $18 so far, $12/h
    assert cost.over_budget(jobs, limits, until_next_pass=timedelta(minutes=15)) == []
    assert cost.over_budget(jobs, limits, until_next_pass=timedelta(minutes=45)) == ["a"]


def _product(*dimensions: tuple[str, str]) -> dict[str, object]:
    dims = {
        f"SKU1.JRTCKXETXF.{i}": {"unit": "Hrs", "beginRange": b, "pricePerUnit": {"USD": p}}
        for i, (b, p) in enumerate(dimensions)
    }
    return {
        "product": {"sku": "SKU1", "attributes": {}},
        "terms": {"OnDemand": {"SKU1.JRTCKXETXF": {"priceDimensions": dims}}},
    }


def test_a_product_with_several_price_dimensions_or_none_is_refused_naming_its_sku() -> None:
    assert cost.price_dimension(_product(("0", "1.0060000000"))) == (1.006, "Hrs")
    for bad in (_product(("0", "1.0"), ("0", "2.0")), _product()):
        with pytest.raises(cost.PriceListError, match="SKU1"):
            cost.price_dimension(bad)
    # A tiered price (S3): the tier that starts at 0, only when asked for.
    assert cost.price_dimension(_product(("0", "0.023"), ("51200", "0.022")), first_tier=True)[0] == 0.023


def test_the_launch_guard_refuses_above_the_limit_naming_the_field_and_source() -> None:
    price = cost.LaunchPrice("g5.xlarge", "on-demand", None, 1.006, cost.FALLBACK_SOURCE, "on-demand list price")
    cost.refuse_above(price, None)
    cost.refuse_above(price, 2.0)
    with pytest.raises(InvalidInputError) as exc:
        cost.refuse_above(price, 0.5)
    assert exc.value.field == "max_hourly_cost"
    assert cost.FALLBACK_SOURCE in str(exc.value) and "$1.0060/hour" in str(exc.value)
    with pytest.raises(InvalidInputError, match="no price was found"):
        cost.refuse_above(cost.LaunchPrice("x9.mega", "on-demand", None, None, "api"), 0.5)


def test_the_fallback_table_is_the_sandboxs_price_list() -> None:
    us = "us-east-1"
    assert {
        k: sandbox_pricing.on_demand_price(k, us) for k in sandbox_pricing.INSTANCE_TYPES
    } == cost.FALLBACK_EC2_USD_PER_HOUR
    assert {
        k: sandbox_pricing.ebs_price(k, us) for k in sandbox_pricing.EBS_VOLUME_TYPES
    } == cost.FALLBACK_EBS_USD_PER_GB_MONTH
    extras = {(usage, price) for _, _, usage, _, price, _, _ in sandbox_pricing._EBS_EXTRAS}
    iops = {"gp3": "EBS:VolumeP-IOPS.gp3", "io1": "EBS:VolumeP-IOPS.piops", "io2": "EBS:VolumeP-IOPS.io2"}
    assert {(iops[k], v) for k, v in cost.FALLBACK_EBS_USD_PER_IOPS_MONTH.items()} <= extras
    assert ("EBS:VolumeP-Throughput.gp3", cost.FALLBACK_EBS_USD_PER_MIBPS_MONTH["gp3"] * 1024) in extras  # GiBps-mo
    assert ("EBS:SnapshotUsage", cost.FALLBACK_SNAPSHOT_USD_PER_GB_MONTH) in extras
    assert sandbox_pricing.S3_STANDARD_TIERS[0][2] == cost.FALLBACK_S3_USD_PER_GB_MONTH
    assert cost.fallback_book().instances["g5.xlarge"].source == cost.FALLBACK_SOURCE


def test_teardown_savings_come_from_the_price_book_given() -> None:
    orphan = Volume(
        id="vol-00000000000000009",
        tags={t.MANAGED: "true"},
        created_at=T0 - 72 * HOUR,
        state="available",
        size_gib=100,
        volume_type="gp3",
    )
    inventory = Inventory(region="us-east-1", taken_at=T0, volumes=[orphan])
    scope = Scope(ids=[orphan.id])
    default = plan_teardown(inventory, scope=scope, now=T0)
    assert default.entry(orphan.id).monthly_usd == 8.0  # type: ignore[union-attr]  # the fallback table
    book = cost.fallback_book().model_copy(
        update={"volumes": {"gp3": cost.Rate(usd=0.0912, unit="GB-month", source="api")}}
    )
    priced = plan_teardown(inventory, scope=scope, now=T0, prices=book)
    assert priced.entry(orphan.id).monthly_usd == 9.12  # type: ignore[union-attr]
    unpriced = plan_teardown(inventory, scope=scope, now=T0, prices=cost.PriceBook(region="us-east-1")).entry(orphan.id)
    assert unpriced is not None and unpriced.action.value == "delete" and unpriced.monthly_usd is None  # not $0


def test_inventory_lines_price_what_no_job_line_covers() -> None:
    now = T0 + 6 * HOUR
    spot = Instance(
        id="i-00000000000000007",
        created_at=T0,
        state="running",
        availability_zone=ZONE,
        instance_type="g5.xlarge",
        lifecycle="spot",
        tags={"trainctl:job": "orphaned"},  # a job whose record is not read: its instance still counts for it
    )
    stopped = spot.model_copy(update={"id": "i-00000000000000008", "state": "stopped", "lifecycle": "on-demand"})
    covered = spot.model_copy(update={"id": "i-00000000000000001"})  # attempt 1's: priced by its job line
    lines = cost.inventory_lines(
        [spot, stopped, covered], [_volume()], [], _book(), now=now, priced=["i-00000000000000001"]
    )
    by_id = {line.id: line for line in lines}
    assert set(by_id) == {spot.id, stopped.id, _volume().id}
    assert by_id[spot.id].cost(T0, now) == pytest.approx(2 * 0.40 + 4 * 0.50) and by_id[spot.id].hourly_usd == 0.50
    assert by_id[stopped.id].hourly_usd == 0.0 and by_id[stopped.id].unknown is None  # bills nothing now
    assert by_id[spot.id].job == "orphaned" and by_id[stopped.id].job == "orphaned"
