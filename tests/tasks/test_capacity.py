"""tasks.capacity in the sandbox: placement scores per AZ name following the capacity rules, None where the API
cannot be asked (stubbed answers of AWS's error codes), and the AZs that offer a type."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from botocore.stub import Stubber

from blocks.aws import load_account
from core.errors import AwsError, InvalidInputError
from sandbox import Sandbox
from tasks.capacity import placement_scores, zones_offering
from tasks.ec2_instances import check_instance_type
from tests.conftest import exported_sandbox

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def cloud() -> Iterator[Sandbox]:
    with exported_sandbox(boot_delay=0.1) as sandbox:
        yield sandbox


def test_placement_scores_name_the_zones_and_follow_capacity(cloud: Sandbox) -> None:
    zones = {z["ZoneName"] for z in cloud.client("ec2").describe_availability_zones()["AvailabilityZones"]}
    scores = placement_scores.fn("g5.xlarge", region="us-east-1")
    assert scores is not None and set(scores) == zones
    assert set(scores.values()) == {9}
    cloud.set_capacity("us-east-1c", "g5.xlarge", available=False)
    try:
        scores = placement_scores.fn("g5.xlarge", region="us-east-1")
        assert scores is not None and scores["us-east-1c"] == 1
        assert max(scores, key=lambda z: scores[z]) != "us-east-1c"
        assert {z: s for z, s in scores.items() if z != "us-east-1c"} == dict.fromkeys(zones - {"us-east-1c"}, 9)
    finally:
        cloud.set_capacity("us-east-1c", "g5.xlarge", available=True)
    with pytest.raises(InvalidInputError, match="region"):
        placement_scores.fn("g5.xlarge", region="eu-west-1")  # the AZ names would be another region's


@pytest.mark.parametrize("code", ["UnauthorizedOperation", "InvalidAction", "UnsupportedOperation"])
def test_placement_scores_are_none_where_the_api_cannot_be_asked(cloud: Sandbox, code: str) -> None:
    ec2 = load_account(None).client("ec2")
    with Stubber(ec2) as stub:
        stub.add_client_error("get_spot_placement_scores", service_error_code=code, http_status_code=400)
        assert placement_scores.fn("g5.xlarge", region="us-east-1") is None
        stub.assert_no_pending_responses()


def test_placement_scores_raise_a_transient_error(cloud: Sandbox) -> None:
    ec2 = load_account(None).client("ec2")
    with Stubber(ec2) as stub:
        stub.add_client_error("get_spot_placement_scores", service_error_code="RequestLimitExceeded")
        with pytest.raises(AwsError) as exc:
            placement_scores.fn("g5.xlarge", region="us-east-1")
    assert exc.value.code == "RequestLimitExceeded"


def test_zones_offering_lists_the_zones_the_type_is_offered_in(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    all_zones = {z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]}
    offered = zones_offering.fn("g5.xlarge")
    assert offered == sorted(offered) and offered and set(offered) <= all_zones
    expected = {
        o["Location"]
        for o in ec2.describe_instance_type_offerings(
            LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": ["g5.xlarge"]}]
        )["InstanceTypeOfferings"]
    }
    assert set(offered) == expected
    assert zones_offering.fn("zz9.nothing") == []
    # check_instance_type shares the query: an AZ outside the list is refused, one inside accepted.
    check_instance_type("g5.xlarge", availability_zone=offered[0])
    assert "us-east-1e" in all_zones and "us-east-1e" not in offered  # moto's offerings table leaves g5 out of 1e
    with pytest.raises(InvalidInputError, match="offered in"):
        check_instance_type("g5.xlarge", availability_zone="us-east-1e")
