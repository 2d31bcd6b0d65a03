"""cost-watch's report from a fixed inventory and the dated price table (plain functions, no AWS, no Prefect run):
cleanup advice with monthly savings, and the rows that say "price unknown" instead of $0."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core import tags as t
from core.cost import fallback_book
from core.models import Instance, Inventory, Snapshot, Volume
from flows.cost_watch import CostView, build_report, cleanup_advice, price_lines, report_rows

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=3)


def _inventory() -> Inventory:
    loose = Volume(
        id="vol-00000000000000001",
        tags=t.managed_tags(job="j"),
        created_at=OLD,
        state="available",
        availability_zone="us-east-1a",
        size_gib=100,
        volume_type="gp3",
    )
    kept = loose.model_copy(update={"id": "vol-00000000000000002", "tags": t.managed_tags(job="j", protected=True)})
    data = loose.model_copy(update={"id": "vol-00000000000000003", "tags": t.managed_tags(job="j", persistent=True)})
    snapshots = [
        Snapshot(
            id=f"snap-0000000000000000{k}",
            tags=t.managed_tags(job="j"),
            created_at=OLD + timedelta(hours=k),
            state="completed",
            volume_id=data.id,
            size_gib=100,
        )
        for k in range(1, 5)
    ]
    unpriced = Instance(
        id="i-00000000000000001",
        tags=t.managed_tags(job="j", role=t.Role.TRAIN),
        created_at=OLD,
        state="running",
        availability_zone="us-east-1a",
        instance_type="x9.huge",
    )
    return Inventory.assemble(
        region="us-east-1", taken_at=NOW, instances=[unpriced], volumes=[loose, kept, data], snapshots=snapshots
    )


def test_cleanup_advice_names_each_rule_and_its_monthly_saving_and_never_a_protected_resource() -> None:
    advice = {a.id: a for a in cleanup_advice(_inventory(), fallback_book(), now=NOW)}
    # The unattached gp3 100 GiB (3 days old) and the oldest snapshot beyond the 3 newest of the data volume.
    assert set(advice) == {"vol-00000000000000001", "snap-00000000000000001"}
    assert (advice["vol-00000000000000001"].rule, advice["vol-00000000000000001"].monthly_savings_usd) == (
        "unattached volume",
        8.0,
    )
    assert advice["snap-00000000000000001"].rule == "old snapshot"
    assert advice["snap-00000000000000001"].monthly_savings_usd == 5.0


def test_a_resource_without_a_price_is_a_price_unknown_row_never_zero() -> None:
    inventory, book = _inventory(), fallback_book()
    view = CostView("us-east-1", NOW, inventory, ["b"], [], book, price_lines(inventory, [], {}, book, now=NOW))
    report = build_report(view)
    row = next(r for r in report.resources if r.id == "i-00000000000000001")
    assert row.unknown and row.hourly_usd is None and row.accumulated_usd is None
    assert report.totals is not None and report.totals.unknown == 1
    assert report.resources[-1].id == "i-00000000000000001"  # after every priced line
    job = next(r for r in report.jobs if r.id == "j")
    assert job.unknown == "1 resource(s) of price unknown, not counted" and job.accumulated_usd and job.hourly_usd
    rows = {r["id"]: r for r in report_rows(report)}
    assert (
        rows["i-00000000000000001"]["price"].startswith("price unknown") and rows["i-00000000000000001"]["$/hour"] == ""
    )
    volume = next(r for r in report.resources if r.id == "vol-00000000000000001")
    assert volume.source == "fallback 2025-01-15" and volume.hourly_usd == round(8.0 / 730, 4)
    assert [a.id for a in report.advice] == ["vol-00000000000000001", "snap-00000000000000001"]  # largest saving first
