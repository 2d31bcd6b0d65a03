"""observe_training_instances in the sandbox: every managed training instance with its spot request's status, in
one DescribeInstances and one DescribeSpotInstanceRequests (counted on the client the task uses), classified by
core.spot as AWS shows it during and after an interruption; a failed look raises instead of reading as "gone"."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from blocks.aws import load_account
from core import tags as t
from core.errors import AwsError
from core.spot import SpotInterruption, spot_interruption
from sandbox import Sandbox
from tasks.aws import is_transient
from tasks.ec2_instances import observe_training_instances
from tests.conftest import exported_sandbox

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def cloud() -> Iterator[Sandbox]:
    with exported_sandbox(boot_delay=0.1) as sandbox:
        yield sandbox


@pytest.fixture
def calls() -> Iterator[list[str]]:
    seen: list[str] = []
    ec2 = load_account(None).client("ec2")  # the cached client the task uses

    def record(model: Any, **_: Any) -> None:
        seen.append(model.name)

    ec2.meta.events.register("before-call.ec2.*", record)
    yield seen
    ec2.meta.events.unregister("before-call.ec2.*", record)


def launch(cloud: Sandbox, tags: dict[str, str], *, spot: bool = True) -> str:
    ec2 = cloud.client("ec2")
    image_id = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    params: dict[str, Any] = {"InstanceMarketOptions": {"MarketType": "spot"}} if spot else {}
    made = ec2.run_instances(
        ImageId=image_id,
        InstanceType="g5.xlarge",
        MinCount=1,
        MaxCount=1,
        Placement={"AvailabilityZone": "us-east-1a"},
        TagSpecifications=t.tag_specifications("instance", tags),
        **params,
    )
    return str(made["Instances"][0]["InstanceId"])


def train(job: str) -> dict[str, str]:
    return t.managed_tags(job=job, role=t.Role.TRAIN, attempt=1, name=f"trainctl-{job}")


def test_observe_reads_every_training_instance_and_its_spot_status_in_two_calls(
    cloud: Sandbox, calls: list[str]
) -> None:
    noticed = launch(cloud, train("noticed"))
    reclaimed = launch(cloud, train("reclaimed"))
    ended = launch(cloud, train("ended"))
    on_demand = launch(cloud, train("steady"), spot=False)
    launch(cloud, t.managed_tags(job="warm", role=t.Role.PREWARM))  # managed, but no training instance
    launch(cloud, {t.ROLE: "train", t.JOB: "theirs"})  # a train role tag without the managed tag: not ours
    cloud.interrupt_spot(noticed, delay_seconds=60.0)  # price: marked-for-termination during the notice
    cloud.interrupt_spot(reclaimed, delay_seconds=0.2, reason="capacity")
    cloud.client("ec2").terminate_instances(InstanceIds=[ended])
    root = cloud.client("ec2")
    assert cloud.wait_for(
        lambda: (
            root.describe_instances(InstanceIds=[reclaimed])["Reservations"][0]["Instances"][0]["State"]["Name"]
            == "terminated"
        ),
        timeout=5,
    )

    calls.clear()
    observed = {i.id: i for i in observe_training_instances.fn()}
    assert sorted(calls) == ["DescribeInstances", "DescribeSpotInstanceRequests"]
    assert set(observed) == {noticed, reclaimed, ended, on_demand}
    assert observed[noticed].spot_request_status == "marked-for-termination"
    assert observed[noticed].state == "running"
    assert observed[reclaimed].spot_request_status == "instance-terminated-no-capacity"
    assert observed[reclaimed].state_reason_code == "Server.SpotInstanceTermination"
    assert observed[ended].spot_request_status == "instance-terminated-by-user"
    assert observed[on_demand].spot_request_status is None and observed[on_demand].lifecycle == "on-demand"
    assert {i.job for i in observed.values()} == {"noticed", "reclaimed", "ended", "steady"}
    verdicts = {i.job: spot_interruption(i) for i in observed.values()}
    assert verdicts == {
        "noticed": SpotInterruption.BEING_INTERRUPTED,
        "reclaimed": SpotInterruption.INTERRUPTED,
        "ended": SpotInterruption.NONE,
        "steady": SpotInterruption.NONE,
    }


def test_observe_raises_when_the_spot_requests_cannot_be_read(cloud: Sandbox, calls: list[str]) -> None:
    launch(cloud, train("throttled"))
    ec2 = load_account(None).client("ec2")

    def refuse(**_: Any) -> None:
        answer = {"Error": {"Code": "RequestLimitExceeded", "Message": "Request limit exceeded."}}
        raise ClientError(answer, "DescribeSpotInstanceRequests")

    ec2.meta.events.register("before-call.ec2.DescribeSpotInstanceRequests", refuse)
    try:
        with pytest.raises(AwsError) as exc:
            observe_training_instances.fn()
    finally:
        ec2.meta.events.unregister("before-call.ec2.DescribeSpotInstanceRequests", refuse)
    assert exc.value.code == "RequestLimitExceeded" and is_transient(exc.value)  # the task's retries take it
    assert "DescribeInstances" in calls
