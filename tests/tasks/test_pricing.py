"""tasks.pricing against recorded Pricing API and DescribeSpotPriceHistory answers (botocore's Stubber: moto has
no Pricing API) — a non-us-east-1 region, the location fallback, refused answers, GiBps throughput, the fallback
table when the API is denied — and end to end against the sandbox's Pricing API and spot history."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from core.cost import FALLBACK_SOURCE, PriceListError, job_lines, spot_key, summarize
from core.jobs import AttemptRecord, JobRecord, JobStatus
from sandbox import Sandbox
from sandbox.pricing import on_demand_price
from tasks import pricing
from tests.conftest import exported_sandbox

SKU = "H6T3SYB5G6QCVMZM"
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    pricing.clear_cache()
    yield
    pricing.clear_cache()


def _client(service: str) -> Any:
    return boto3.client(service, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def _product(attributes: dict[str, str], *dims: tuple[str, str, str], family: str = "Compute Instance") -> str:
    """One PriceList item as AWS sends it: a JSON string, terms keyed by SKU-derived codes."""
    term = f"{SKU}.JRTCKXETXF"
    dimensions = {
        f"{term}.{code}": {
            "unit": unit,
            "endRange": "Inf",
            "description": "recorded",
            "appliesTo": [],
            "rateCode": f"{term}.{code}",
            "beginRange": "0",
            "pricePerUnit": {"USD": usd},
        }
        for code, unit, usd in dims
    }
    body = {
        "product": {"productFamily": family, "attributes": attributes, "sku": SKU},
        "serviceCode": "AmazonEC2",
        "terms": {"OnDemand": {term: {"priceDimensions": dimensions, "sku": SKU, "offerTermCode": "JRTCKXETXF"}}},
        "version": "20250115000000",
        "publicationDate": "2025-01-15T00:00:00Z",
    }
    return json.dumps(body)


def _instance_filters(region_field: str, value: str) -> list[dict[str, str]]:
    fields = {
        "productFamily": "Compute Instance",
        "instanceType": "g5.xlarge",
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "licenseModel": "No License required",
        "capacitystatus": "Used",
        region_field: value,
    }
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in fields.items()]


def test_on_demand_in_eu_west_1_falls_back_to_the_location_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRAINCTL_CACHE_DIR", str(tmp_path))
    client = _client("pricing")
    ireland = _product({"instanceType": "g5.xlarge", "location": "EU (Ireland)"}, ("6YS6EN2CT7", "Hrs", "1.1230000000"))
    with Stubber(client) as stub:
        by_code = {"ServiceCode": "AmazonEC2", "Filters": _instance_filters("regionCode", "eu-west-1")}
        stub.add_response("get_products", {"PriceList": [], "FormatVersion": "aws_v1"}, by_code)
        by_location = {"ServiceCode": "AmazonEC2", "Filters": _instance_filters("location", "EU (Ireland)")}
        stub.add_response("get_products", {"PriceList": [ireland], "FormatVersion": "aws_v1"}, by_location)
        rate = pricing.on_demand_rate(client, "g5.xlarge", "eu-west-1")
        stub.assert_no_pending_responses()
    assert rate is not None and (rate.usd, rate.unit, rate.source) == (1.123, "hour", "api")
    with Stubber(client) as stub:  # cached for the day: no second call, from memory, then from disk
        assert pricing.on_demand_rate(client, "g5.xlarge", "eu-west-1") == rate
        pricing.clear_cache()
        assert pricing.on_demand_rate(client, "g5.xlarge", "eu-west-1") == rate
    assert len(list(pricing.cache_dir().glob("*.json"))) >= 2  # both queries, kept for the next process
    pricing.clear_cache()
    later = time.time() + pricing.PRICE_TTL.total_seconds() + 1
    monkeypatch.setattr(pricing.time, "time", lambda: later)  # a day later: asked again
    with Stubber(client) as stub:
        stub.add_response("get_products", {"PriceList": [ireland], "FormatVersion": "aws_v1"}, by_code)
        assert pricing.on_demand_rate(client, "g5.xlarge", "eu-west-1") == rate
        stub.assert_no_pending_responses()


@pytest.mark.parametrize("dims", [(("A", "Hrs", "1.0"), ("B", "Hrs", "2.0")), ()], ids=["two", "none"])
def test_a_product_with_two_price_dimensions_or_none_is_refused(dims: tuple[tuple[str, str, str], ...]) -> None:
    client = _client("pricing")
    with Stubber(client) as stub:
        answer = {"PriceList": [_product({"instanceType": "g5.xlarge"}, *dims)], "FormatVersion": "aws_v1"}
        stub.add_response("get_products", answer, {"ServiceCode": "AmazonEC2", "Filters": ANY})
        with pytest.raises(PriceListError, match=SKU):
            pricing.on_demand_rate(client, "g5.xlarge", "us-west-2")


def test_ebs_snapshot_and_s3_prices_of_a_region_with_its_usage_prefix() -> None:
    client = _client("pricing")
    answers = [
        [_product({"volumeApiName": "gp3", "usagetype": "EU-EBS:VolumeUsage.gp3"}, ("R", "GB-Mo", "0.088"))],
        [
            _product({"volumeApiName": "gp3", "usagetype": "EU-EBS:VolumeP-IOPS.gp3"}, ("R", "IOPS-Mo", "0.0055")),
            _product({"volumeApiName": "io2", "usagetype": "EU-EBS:VolumeP-IOPS.io2.tier2"}, ("R", "IOPS-Mo", "0.04")),
        ],
        [_product({"usagetype": "EU-EBS:VolumeP-Throughput.gp3"}, ("R", "GiBps-mo", "45.0560000000"))],
        [
            _product({"usagetype": "EU-EBS:SnapshotArchiveStorage"}, ("R", "GB-Mo", "0.0125")),
            _product({"usagetype": "EU-EBS:SnapshotUsage"}, ("R", "GB-Mo", "0.053")),
        ],
        [],  # S3: the tiered product is in the sandbox test below
    ]
    with Stubber(client) as stub:
        for products in answers:
            stub.add_response("get_products", {"PriceList": products, "FormatVersion": "aws_v1"})
        stub.add_response("get_products", {"PriceList": [], "FormatVersion": "aws_v1"})  # S3 by location
        book = pricing.storage_book(client, "eu-west-1")
        stub.assert_no_pending_responses()
    assert book.volumes["gp3"].usd == 0.088
    assert book.iops["gp3"].usd == 0.0055 and "io2" not in book.iops  # tier 2 is not the io2 price
    assert book.throughput["gp3"].usd == pytest.approx(0.044) and book.throughput["gp3"].unit == "MiBps-month"
    assert book.snapshot is not None and book.snapshot.usd == 0.053
    assert book.s3 is None  # not listed: unknown, never $0


def test_spot_history_over_a_lifetime_pages_and_sorts_oldest_first() -> None:
    ec2 = _client("ec2")
    start, end = NOW - timedelta(hours=10), NOW
    row = {"AvailabilityZone": "us-east-1a", "InstanceType": "g5.xlarge", "ProductDescription": "Linux/UNIX"}
    params = {
        "AvailabilityZone": "us-east-1a",
        "InstanceTypes": ["g5.xlarge"],
        "ProductDescriptions": ["Linux/UNIX"],
        "StartTime": start,
        "EndTime": end,
    }
    with Stubber(ec2) as stub:
        newest = [{**row, "SpotPrice": "0.450000", "Timestamp": NOW - timedelta(hours=2)}]
        stub.add_response("describe_spot_price_history", {"SpotPriceHistory": newest, "NextToken": "p2"}, params)
        # The price in effect at the start, set before it, comes with it.
        older = [{**row, "SpotPrice": "0.380000", "Timestamp": start - timedelta(hours=3)}]
        stub.add_response("describe_spot_price_history", {"SpotPriceHistory": older}, {**params, "NextToken": "p2"})
        points = pricing.spot_history(ec2, "us-east-1a", "g5.xlarge", start, end)
        stub.assert_no_pending_responses()
    assert [(p.at, p.usd_per_hour) for p in points] == [
        (start - timedelta(hours=3), 0.38),
        (NOW - timedelta(hours=2), 0.45),
    ]


def test_the_fallback_table_is_used_when_the_pricing_api_is_denied(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client("pricing")
    monkeypatch.setattr(pricing, "pricing_client", lambda account=None: client)
    with Stubber(client) as stub:
        stub.add_client_error("get_products", service_error_code="AccessDeniedException", http_status_code=400)
        book = pricing.price_book.fn("us-east-1", ["g5.xlarge"], now=NOW)
    assert book.instances["g5.xlarge"].usd == 1.006 and book.instances["g5.xlarge"].source == FALLBACK_SOURCE
    assert book.volumes["gp3"].source == FALLBACK_SOURCE
    assert "AccessDeniedException" in book.problems["pricing-api"]


@pytest.fixture(scope="module")
def cloud() -> Iterator[Sandbox]:
    with exported_sandbox(boot_delay=0.1) as sandbox:
        yield sandbox


@pytest.mark.sandbox
def test_a_price_book_from_the_sandboxs_pricing_api_and_spot_history_prices_a_job(cloud: Sandbox) -> None:
    now = datetime.now(UTC)
    launched = now - timedelta(hours=13)  # over two of the sandbox's 6-hour spot price steps
    book = pricing.price_book.fn(
        "eu-west-1", ["g5.xlarge", "x9.mega"], [("us-east-1a", "g5.xlarge", launched)], now=now
    )
    assert book.instances["g5.xlarge"].usd == on_demand_price("g5.xlarge", "eu-west-1")
    assert book.instances["g5.xlarge"].source == "api" and "x9.mega" not in book.instances
    assert book.volumes["gp3"].usd == pytest.approx(0.08 * 1.12) and book.throughput["gp3"].usd == pytest.approx(
        0.04 * 1.12
    )
    assert book.s3 is not None and book.s3.usd == round(0.023 * 1.12, 4)  # the first of the three tiers
    history = book.spot[spot_key("us-east-1a", "g5.xlarge")]
    assert history[0].at <= launched and len(history) >= 3  # the price in effect at launch, then each change
    expected = cloud.client("ec2").describe_spot_price_history(
        AvailabilityZone="us-east-1a", InstanceTypes=["g5.xlarge"], ProductDescriptions=["Linux/UNIX"], StartTime=now
    )["SpotPriceHistory"]
    assert history[-1].usd_per_hour == float(expected[0]["SpotPrice"])
    where = {
        "availability_zone": "us-east-1a",
        "capacity_type": "spot",
        "created_at": launched,
        "launched_at": launched,
    }
    attempt = AttemptRecord.model_validate({"number": 1, "instance_id": "i-1", "instance_type": "g5.xlarge", **where})
    record = JobRecord(name="llm", bucket="b", status=JobStatus.RUNNING, created_at=launched, attempts=[attempt])
    total = summarize(job_lines(record, book, now=now), now=now)
    prices = [p.usd_per_hour for p in history]
    assert min(prices) * 13 <= total.accumulated_usd <= max(prices) * 13 and total.unknown == 0
    assert total.sources == ("api",)
    # The launch price: spot now in the AZ, from the API.
    price = pricing.launch_price.fn("g5.xlarge", spot=True, availability_zone="us-east-1a")
    assert (price.usd_per_hour, price.source) == (cloud.ec2.spot_price("us-east-1a", "g5.xlarge"), "api")
