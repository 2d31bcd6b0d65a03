"""The Pricing API in the real PriceList shape, one price table shared with spot prices; throttling faults."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sandbox import Sandbox
from sandbox.pricing import INSTANCE_TYPES, REGIONS, ebs_price, on_demand_price


def _filters(**fields: str) -> list[dict[str, str]]:
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in fields.items()]


def _linux(instance_type: str, **more: str) -> list[dict[str, str]]:
    fields = {
        "instanceType": instance_type,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    return _filters(**{**fields, **more})


def _on_demand_usd(product: dict[str, Any]) -> tuple[str, float]:
    """Read a price the way cost code does on AWS: terms → OnDemand → the one term → the one dimension."""
    (term,) = product["terms"]["OnDemand"].values()
    (dimension,) = term["priceDimensions"].values()
    return str(dimension["unit"]), float(dimension["pricePerUnit"]["USD"])


def test_documented_prices() -> None:
    required = {"t3.micro", "t3.medium", "m5.large", "c5.xlarge", "g4dn.xlarge", "g5.xlarge", "g5.2xlarge"}
    assert required | {"g6.xlarge", "p3.2xlarge", "p4d.24xlarge"} <= set(INSTANCE_TYPES)
    assert {"us-east-1", "us-west-2", "eu-west-1"} <= set(REGIONS)
    assert on_demand_price("g5.xlarge") == 1.006
    assert on_demand_price("g5.xlarge", "eu-west-1") > on_demand_price("g5.xlarge")  # type: ignore[operator]
    assert on_demand_price("x9.mega") is None
    assert ebs_price("gp3") == 0.08 and ebs_price("nope") is None


def test_get_products_real_shape_and_price(cloud: Sandbox) -> None:
    client = cloud.client("pricing")
    answer = client.get_products(ServiceCode="AmazonEC2", Filters=_linux("g5.xlarge", regionCode="us-east-1"))
    assert answer["FormatVersion"] == "aws_v1"
    assert len(answer["PriceList"]) == 1
    assert isinstance(answer["PriceList"][0], str)  # JSON strings, as AWS sends them
    product = json.loads(answer["PriceList"][0])
    assert product["serviceCode"] == "AmazonEC2"
    assert product["product"]["productFamily"] == "Compute Instance"
    attributes = product["product"]["attributes"]
    assert attributes["instanceType"] == "g5.xlarge"
    assert attributes["location"] == "US East (N. Virginia)"
    assert attributes["vcpu"] == "4" and attributes["gpu"] == "1"
    sku = product["product"]["sku"]
    term = product["terms"]["OnDemand"][f"{sku}.JRTCKXETXF"]
    dimension = term["priceDimensions"][f"{sku}.JRTCKXETXF.6YS6EN2CT7"]
    assert dimension["pricePerUnit"]["USD"] == "1.0060000000"
    assert _on_demand_usd(product) == ("Hrs", on_demand_price("g5.xlarge", "us-east-1"))
    assert product["version"] and product["publicationDate"]


def test_filters(cloud: Sandbox) -> None:
    client = cloud.client("pricing")
    by_location = client.get_products(ServiceCode="AmazonEC2", Filters=_linux("m5.large", location="US West (Oregon)"))[
        "PriceList"
    ]
    assert [json.loads(p)["product"]["attributes"]["regionCode"] for p in by_location] == ["us-west-2"]
    ireland = json.loads(
        client.get_products(ServiceCode="AmazonEC2", Filters=_linux("m5.large", regionCode="eu-west-1"))["PriceList"][0]
    )
    assert _on_demand_usd(ireland)[1] == on_demand_price("m5.large", "eu-west-1")
    # Without the capacitystatus filter AWS returns three products (one at 0.00): the sandbox does too.
    loose = client.get_products(
        ServiceCode="AmazonEC2",
        Filters=_filters(instanceType="m5.large", regionCode="us-east-1", operatingSystem="Linux", tenancy="Shared"),
    )["PriceList"]
    statuses = {json.loads(p)["product"]["attributes"]["capacitystatus"] for p in loose}
    assert statuses == {"Used", "UnusedCapacityReservation", "AllocatedCapacityReservation"}
    windows_filters = _linux("m5.large", operatingSystem="Windows", regionCode="us-east-1")
    windows = client.get_products(ServiceCode="AmazonEC2", Filters=windows_filters)["PriceList"]
    assert len(windows) == 1
    assert _on_demand_usd(json.loads(windows[0]))[1] > on_demand_price("m5.large")  # type: ignore[operator]
    assert (
        client.get_products(ServiceCode="AmazonEC2", Filters=_linux("g5.xlarge", tenancy="Dedicated"))["PriceList"]
        == []
    )
    assert client.get_products(ServiceCode="AmazonEC2", Filters=_linux("x9.mega"))["PriceList"] == []


def test_ebs_storage_prices(cloud: Sandbox) -> None:
    client = cloud.client("pricing")
    for volume_type in ("gp2", "gp3", "io1", "io2", "st1", "sc1"):
        found = client.get_products(
            ServiceCode="AmazonEC2",
            Filters=_filters(productFamily="Storage", volumeApiName=volume_type, regionCode="us-east-1"),
        )["PriceList"]
        assert len(found) == 1, volume_type
        assert _on_demand_usd(json.loads(found[0])) == ("GB-Mo", ebs_price(volume_type))
    snapshots = client.get_products(
        ServiceCode="AmazonEC2", Filters=_filters(productFamily="Storage Snapshot", regionCode="us-west-2")
    )["PriceList"]
    assert _on_demand_usd(json.loads(snapshots[0])) == ("GB-Mo", 0.05)


def test_pagination(cloud: Sandbox) -> None:
    client = cloud.client("pricing")
    filters = _filters(regionCode="us-east-1", productFamily="Compute Instance", capacitystatus="Used")
    first = client.get_products(ServiceCode="AmazonEC2", Filters=filters, MaxResults=10)
    assert len(first["PriceList"]) == 10 and first["NextToken"]
    pages = list(
        client.get_paginator("get_products").paginate(
            ServiceCode="AmazonEC2", Filters=filters, PaginationConfig={"PageSize": 10}
        )
    )
    products = [json.loads(p) for page in pages for p in page["PriceList"]]
    assert len(products) == 2 * len(INSTANCE_TYPES)  # Linux and Windows
    assert len({p["product"]["sku"] for p in products}) == len(products)
    with pytest.raises(ClientError) as exc:
        client.get_products(ServiceCode="AmazonEC2", NextToken="garbage")
    assert exc.value.response["Error"]["Code"] == "InvalidNextTokenException"


def test_describe_services_and_attribute_values(cloud: Sandbox) -> None:
    client = cloud.client("pricing")
    services = client.describe_services(ServiceCode="AmazonEC2")["Services"]
    assert services[0]["ServiceCode"] == "AmazonEC2"
    assert {"instanceType", "regionCode", "volumeApiName"} <= set(services[0]["AttributeNames"])
    values = client.get_attribute_values(ServiceCode="AmazonEC2", AttributeName="volumeApiName")["AttributeValues"]
    assert {"gp2", "gp3", "io1", "io2", "st1", "sc1"} <= {v["Value"] for v in values}


def test_throttling_pricing_and_ssm_is_throttling_exception(cloud: Sandbox) -> None:
    cloud.throttle(1.0, ["pricing", "ssm"])
    with pytest.raises(ClientError) as exc:
        cloud.client("pricing").get_products(ServiceCode="AmazonEC2", MaxResults=1)
    assert exc.value.response["Error"]["Code"] == "ThrottlingException"
    with pytest.raises(ClientError) as exc:
        cloud.client("ssm").describe_instance_information()
    assert exc.value.response["Error"]["Code"] == "ThrottlingException"
    cloud.client("ec2").describe_instances()  # other services are untouched
    cloud.throttle(0.0)
    assert len(cloud.client("pricing").get_products(ServiceCode="AmazonEC2", MaxResults=1)["PriceList"]) == 1
