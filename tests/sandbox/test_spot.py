"""Spot through RunInstances: request records with real status codes, interruptions, price history."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sandbox import Sandbox
from sandbox.pricing import on_demand_price

AMI = "ami-12345678"


def _spot(ec2: Any, instance_type: str = "g5.xlarge", zone: str = "us-east-1a", max_price: str | None = None) -> str:
    options: dict[str, Any] = {"MarketType": "spot"}
    if max_price is not None:
        options["SpotOptions"] = {"MaxPrice": max_price}
    reply = ec2.run_instances(
        ImageId=AMI,
        MinCount=1,
        MaxCount=1,
        InstanceType=instance_type,
        Placement={"AvailabilityZone": zone},
        InstanceMarketOptions=options,
    )
    return str(reply["Instances"][0]["InstanceId"])


def _instance(ec2: Any, instance_id: str) -> dict[str, Any]:
    return dict(ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0])


def _request(ec2: Any, instance_id: str) -> dict[str, Any]:
    found = ec2.describe_spot_instance_requests(Filters=[{"Name": "instance-id", "Values": [instance_id]}])
    (request,) = found["SpotInstanceRequests"]
    return dict(request)


def _control(cloud: Sandbox, name: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    url = f"{cloud.endpoint_url}/_sandbox/{name}"  # always the local sandbox's http endpoint
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_spot_launch_has_a_fulfilled_request(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    reply = ec2.run_instances(
        ImageId=AMI,
        MinCount=1,
        MaxCount=1,
        InstanceType="g5.xlarge",
        Placement={"AvailabilityZone": "us-east-1b"},
        InstanceMarketOptions={"MarketType": "spot", "SpotOptions": {"MaxPrice": "0.9"}},
    )
    launched = reply["Instances"][0]
    instance_id = launched["InstanceId"]
    assert re.fullmatch(r"sir-[a-z0-9]{8}", launched["SpotInstanceRequestId"])
    assert launched["InstanceLifecycle"] == "spot"
    described = _instance(ec2, instance_id)
    assert described["InstanceLifecycle"] == "spot"
    assert described["SpotInstanceRequestId"] == launched["SpotInstanceRequestId"]

    request = _request(ec2, instance_id)
    assert request["SpotInstanceRequestId"] == launched["SpotInstanceRequestId"]
    assert request["State"] == "active"
    assert request["Status"]["Code"] == "fulfilled"
    assert request["Status"]["Message"]
    assert isinstance(request["Status"]["UpdateTime"], datetime)
    assert request["InstanceId"] == instance_id
    assert request["LaunchedAvailabilityZone"] == "us-east-1b"
    assert request["LaunchSpecification"]["InstanceType"] == "g5.xlarge"
    assert float(request["SpotPrice"]) == pytest.approx(0.9)
    assert request["Type"] == "one-time"
    assert request["ProductDescription"] == "Linux/UNIX"

    by_id = ec2.describe_spot_instance_requests(SpotInstanceRequestIds=[request["SpotInstanceRequestId"]])
    assert len(by_id["SpotInstanceRequests"]) == 1
    for name, value, count in (("state", "active", 1), ("state", "closed", 0), ("status-code", "fulfilled", 1)):
        found = ec2.describe_spot_instance_requests(Filters=[{"Name": name, "Values": [value]}])
        assert len(found["SpotInstanceRequests"]) == count, (name, value)
    # An on-demand instance has no request and no lifecycle.
    on_demand = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="t3.micro")["Instances"][0]
    assert "InstanceLifecycle" not in _instance(ec2, on_demand["InstanceId"])
    assert len(ec2.describe_spot_instance_requests()["SpotInstanceRequests"]) == 1


def test_max_price_below_the_spot_price_is_refused(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    with pytest.raises(ClientError) as exc:
        _spot(ec2, max_price="0.001")
    err = exc.value.response["Error"]
    assert err["Code"] == "SpotMaxPriceTooLow"
    assert "0.001" in err["Message"]
    assert ec2.describe_instances()["Reservations"] == []
    assert ec2.describe_spot_instance_requests()["SpotInstanceRequests"] == []


def test_user_termination_closes_the_request(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    instance_id = _spot(ec2)
    ec2.terminate_instances(InstanceIds=[instance_id])
    request = _request(ec2, instance_id)
    assert (request["State"], request["Status"]["Code"]) == ("closed", "instance-terminated-by-user")
    assert _instance(ec2, instance_id)["StateReason"]["Code"] == "Client.UserInitiatedShutdown"


def test_cancel_leaves_the_instance_running(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    instance_id = _spot(ec2)
    request_id = _request(ec2, instance_id)["SpotInstanceRequestId"]
    answer = ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=[request_id])
    assert answer["CancelledSpotInstanceRequests"] == [{"SpotInstanceRequestId": request_id, "State": "cancelled"}]
    request = _request(ec2, instance_id)
    assert (request["State"], request["Status"]["Code"]) == ("cancelled", "request-canceled-and-instance-running")
    assert _instance(ec2, instance_id)["State"]["Name"] == "running"
    with pytest.raises(ClientError) as exc:
        ec2.describe_spot_instance_requests(SpotInstanceRequestIds=[request_id, "sir-zzzzzzzz"])
    assert exc.value.response["Error"]["Code"] == "InvalidSpotInstanceRequestID.NotFound"


def test_interruption_marks_then_terminates_with_the_spot_reason(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    instance_id = _spot(ec2)
    before = datetime.now(UTC)
    notice = cloud.interrupt_spot(instance_id, delay_seconds=1.0)
    assert notice["action"] == "terminate"
    when = datetime.strptime(notice["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before - timedelta(seconds=1) <= when <= before + timedelta(seconds=3)
    request = _request(ec2, instance_id)
    assert (request["State"], request["Status"]["Code"]) == ("active", "marked-for-termination")
    assert _instance(ec2, instance_id)["State"]["Name"] == "running"
    record = cloud.runtime.record(instance_id)  # the IMDS notice the instance sees
    assert record is not None and record.spot_action == {"action": "terminate", "time": notice["time"]}

    assert cloud.wait_for(lambda: _instance(ec2, instance_id)["State"]["Name"] == "terminated", timeout=5)
    described = _instance(ec2, instance_id)
    assert described["StateReason"] == {
        "Code": "Server.SpotInstanceTermination",
        "Message": "Server.SpotInstanceTermination: Spot instance termination",
    }
    request = _request(ec2, instance_id)
    assert (request["State"], request["Status"]["Code"]) == ("closed", "instance-terminated-by-price")
    with pytest.raises(ValueError, match="not running"):
        cloud.interrupt_spot(instance_id, delay_seconds=1.0)


def test_interruption_through_the_control_route_with_transition_delay(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    cloud.transition_delay = 0.5
    try:
        instance_id = _spot(ec2)
        assert cloud.wait_for(lambda: _instance(ec2, instance_id)["State"]["Name"] == "running", timeout=5)
        status, answer = _control(cloud, "spot-interruption", {"instance_id": instance_id, "delay_seconds": 0.5})
        assert status == 200 and answer["result"]["instance_id"] == instance_id
        assert cloud.wait_for(lambda: _instance(ec2, instance_id)["State"]["Name"] == "shutting-down", timeout=5)
        assert cloud.wait_for(lambda: _instance(ec2, instance_id)["State"]["Name"] == "terminated", timeout=5)
        assert _instance(ec2, instance_id)["StateReason"]["Code"] == "Server.SpotInstanceTermination"
    finally:
        cloud.transition_delay = 0.0


def test_interruption_refuses_on_demand_and_unknown_instances(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    on_demand = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    with pytest.raises(ValueError, match="not a spot instance"):
        cloud.interrupt_spot(on_demand, delay_seconds=1.0)
    with pytest.raises(ValueError):
        cloud.interrupt_spot("i-0123456789abcdef0", delay_seconds=1.0)
    status, answer = _control(cloud, "spot-interruption", {"instance_id": on_demand})
    assert status == 400 and "not a spot instance" in answer["error"]


def test_reset_forgets_requests_and_cancels_interruptions(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    instance_id = _spot(ec2)
    cloud.interrupt_spot(instance_id, delay_seconds=0.3)
    cloud.reset()
    assert cloud.ec2.spot_requests() == []
    assert ec2.describe_spot_instance_requests()["SpotInstanceRequests"] == []


# -- price history ---------------------------------------------------------------------------------------------
def test_spot_price_history_is_plausible(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    now = datetime.now(UTC)
    history = ec2.describe_spot_price_history(
        InstanceTypes=["g5.xlarge", "m5.large"], ProductDescriptions=["Linux/UNIX"], StartTime=now
    )["SpotPriceHistory"]
    zones = {z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]}
    assert {(h["AvailabilityZone"], h["InstanceType"]) for h in history} == {
        (z, t) for z in zones for t in ("g5.xlarge", "m5.large")
    }
    for entry in history:
        on_demand = on_demand_price(entry["InstanceType"], "us-east-1")
        assert on_demand is not None
        price = float(entry["SpotPrice"])
        assert 0.001 < price < on_demand
        assert 0.25 * on_demand - 1e-6 <= price <= 0.45 * on_demand + 1e-6
        assert entry["ProductDescription"] == "Linux/UNIX"
        assert entry["Timestamp"] <= now
    # The current price is what a launch is checked against.
    current = {h["AvailabilityZone"]: float(h["SpotPrice"]) for h in history if h["InstanceType"] == "g5.xlarge"}
    assert current["us-east-1a"] == pytest.approx(cloud.ec2.spot_price("us-east-1a", "g5.xlarge"))
    # Deterministic: asking again gives the same prices.
    again = ec2.describe_spot_price_history(
        InstanceTypes=["g5.xlarge"], ProductDescriptions=["Linux/UNIX"], StartTime=now, AvailabilityZone="us-east-1a"
    )["SpotPriceHistory"]
    assert [float(h["SpotPrice"]) for h in again] == [current["us-east-1a"]]


def test_spot_price_history_filters_and_pages(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    week = ec2.describe_spot_price_history(
        InstanceTypes=["p3.2xlarge"],
        AvailabilityZone="us-east-1c",
        ProductDescriptions=["Linux/UNIX (Amazon VPC)"],
        StartTime=datetime.now(UTC) - timedelta(days=2),
    )["SpotPriceHistory"]
    assert 8 <= len(week) <= 10  # one price per 6 hours
    assert {h["AvailabilityZone"] for h in week} == {"us-east-1c"}
    stamps = [h["Timestamp"] for h in week]
    assert stamps == sorted(stamps, reverse=True)
    assert "0.00001" not in {h["SpotPrice"] for h in week}

    pages = list(
        ec2.get_paginator("describe_spot_price_history").paginate(
            InstanceTypes=["t3.micro", "c5.xlarge"],
            AvailabilityZone="us-east-1a",
            ProductDescriptions=["Linux/UNIX"],
            PaginationConfig={"PageSize": 7},
        )
    )
    assert len(pages) > 1
    entries = [h for page in pages for h in page["SpotPriceHistory"]]
    assert {h["InstanceType"] for h in entries} == {"t3.micro", "c5.xlarge"}
    assert all(len(page["SpotPriceHistory"]) <= 7 for page in pages)
    assert all(float(h["SpotPrice"]) > 0.001 for h in entries)
    windows = ec2.describe_spot_price_history(
        InstanceTypes=["m5.large"], ProductDescriptions=["Windows"], StartTime=datetime.now(UTC)
    )["SpotPriceHistory"]
    assert windows and all(h["ProductDescription"] == "Windows" for h in windows)


def test_capacity_interruption_closes_the_request_at_the_notice(cloud: Sandbox) -> None:
    """AWS (User Guide, "Spot request status"): taking capacity back sets instance-terminated-no-capacity at once,
    not marked-for-termination, while the instance runs out its notice."""
    ec2 = cloud.client("ec2")
    instance_id = _spot(ec2)
    status, answer = _control(
        cloud, "spot-interruption", {"instance_id": instance_id, "delay_seconds": 1.0, "reason": "capacity"}
    )
    assert status == 200 and answer["result"]["reason"] == "capacity"
    request = _request(ec2, instance_id)
    assert (request["State"], request["Status"]["Code"]) == ("closed", "instance-terminated-no-capacity")
    assert _instance(ec2, instance_id)["State"]["Name"] == "running"
    record = cloud.runtime.record(instance_id)
    assert record is not None and record.spot_action is not None  # the instance sees the notice all the same

    assert cloud.wait_for(lambda: _instance(ec2, instance_id)["State"]["Name"] == "terminated", timeout=5)
    assert _instance(ec2, instance_id)["StateReason"]["Code"] == "Server.SpotInstanceTermination"
    request = _request(ec2, instance_id)
    assert (request["State"], request["Status"]["Code"]) == ("closed", "instance-terminated-no-capacity")
    other = _spot(ec2)
    status, answer = _control(cloud, "spot-interruption", {"instance_id": other, "reason": "whim"})
    assert status == 400 and "reason" in answer["error"]
    assert _request(ec2, other)["Status"]["Code"] == "fulfilled"


# -- placement scores ------------------------------------------------------------------------------------------
def _scores(ec2: Any, instance_types: list[str], **params: Any) -> list[dict[str, Any]]:
    pages = ec2.get_paginator("get_spot_placement_scores").paginate(
        InstanceTypes=instance_types, TargetCapacity=1, **params
    )
    return [s for page in pages for s in page["SpotPlacementScores"]]


def test_placement_scores_follow_the_capacity_rules(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    zone_ids = {z["ZoneName"]: z["ZoneId"] for z in ec2.describe_availability_zones()["AvailabilityZones"]}
    single = {"SingleAvailabilityZone": True, "RegionNames": ["us-east-1"]}
    scores = _scores(ec2, ["g5.xlarge"], **single)
    assert sorted(s["AvailabilityZoneId"] for s in scores) == sorted(zone_ids.values())
    assert {(s["Region"], s["Score"]) for s in scores} == {("us-east-1", 9)}

    cloud.set_capacity("us-east-1b", "g5.xlarge", available=False)
    scores = _scores(ec2, ["g5.xlarge"], **single)
    by_zone = {s["AvailabilityZoneId"]: s["Score"] for s in scores}
    assert by_zone[zone_ids["us-east-1b"]] == 1
    assert all(score == 9 for zone_id, score in by_zone.items() if zone_id != zone_ids["us-east-1b"])
    assert [s["Score"] for s in scores] == sorted((s["Score"] for s in scores), reverse=True)  # best first
    # Another type in that AZ, or the type with another that has capacity there, still scores high.
    assert {s["Score"] for s in _scores(ec2, ["m5.large"], **single)} == {9}
    assert {s["Score"] for s in _scores(ec2, ["g5.xlarge", "g6.xlarge"], **single)} == {9}
    # The region keeps capacity in its other AZs: as a region it scores high (no AZ IDs in that answer).
    (region,) = _scores(ec2, ["g5.xlarge"], RegionNames=["us-east-1"])
    assert region == {"Region": "us-east-1", "Score": 9}

    cloud.set_capacity("us-east-1b", "g5.xlarge", available=True)
    assert {s["Score"] for s in _scores(ec2, ["g5.xlarge"], **single)} == {9}


def test_placement_scores_page_and_refuse_bad_requests(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    pages = list(
        ec2.get_paginator("get_spot_placement_scores").paginate(
            InstanceTypes=["g5.xlarge"],
            TargetCapacity=1,
            SingleAvailabilityZone=True,
            PaginationConfig={"PageSize": 10},
        )
    )
    entries = [s for page in pages for s in page["SpotPlacementScores"]]
    assert len(pages) > 1 and all(len(p["SpotPlacementScores"]) <= 10 for p in pages)
    assert {"us-east-1", "eu-west-1"} <= {s["Region"] for s in entries}  # every region when none is named
    assert len({(s["Region"], s["AvailabilityZoneId"]) for s in entries}) == len(entries)
    for params, code in (
        ({"TargetCapacity": 1}, "MissingParameter"),
        (
            {
                "TargetCapacity": 1,
                "InstanceTypes": ["g5.xlarge"],
                "InstanceRequirementsWithMetadata": {"ArchitectureTypes": ["x86_64"]},
            },
            "InvalidParameterCombination",
        ),
    ):
        with pytest.raises(ClientError) as exc:
            ec2.get_spot_placement_scores(**params)
        assert exc.value.response["Error"]["Code"] == code, params
