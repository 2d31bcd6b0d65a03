"""Instance launch against moto (idempotency, validation before any mutation) and the sandbox (spot → on-demand);
the one terminate, for the run that launched an instance and for teardown (rule 1: persistent volumes survive).

moto accepts any instance type and AMI in RunInstances; DescribeInstanceTypes/DescribeImages do refuse unknown
ones, so the task's own checks are what stops a bad launch — asserted here by counting RunInstances calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws

from blocks.aws import clear_client_cache, load_account
from core import tags as t
from core.errors import AwsError, CapacityRefusedError, InvalidInputError, SafetyRefusalError
from sandbox import Sandbox
from tasks.ec2_instances import (
    LaunchRequest,
    client_token_for,
    find_launched,
    keep_on_termination,
    launch_instance,
    terminate_instance,
)
from tests.conftest import exported_sandbox


def request(**fields: Any) -> LaunchRequest:
    base: dict[str, Any] = {
        "name": "trainctl-llm",
        "role": t.Role.TRAIN,
        "idempotency_key": "train:llm:attempt-1",
        "instance_type": "t3.micro",
        "job": "llm",
        "attempt": 1,
        "availability_zone": "us-east-1a",
        "bucket": "ml-jobs",
    }
    return LaunchRequest(**{**base, **fields})


@pytest.fixture
def ec2() -> Iterator[Any]:
    clear_client_cache()
    with mock_aws():
        yield load_account(None).client("ec2")
    clear_client_cache()


@pytest.fixture
def calls(ec2: Any) -> list[str]:
    seen: list[str] = []
    ec2.meta.events.register("before-call.ec2.*", lambda model, **_: seen.append(model.name))
    return seen


def live(ec2: Any) -> list[dict[str, Any]]:
    found = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}])
    return [i for r in found["Reservations"] for i in r["Instances"]]


def test_same_key_launches_one_instance(ec2: Any, calls: list[str]) -> None:
    first = launch_instance.fn(request())
    again = launch_instance.fn(request())  # a retried task, a re-run flow: same job + attempt
    assert again.id == first.id
    assert [i["InstanceId"] for i in live(ec2)] == [first.id]
    assert calls.count("RunInstances") == 1
    assert find_launched("train:llm:attempt-1") is not None
    data = live(ec2)[0]
    tags = t.from_aws(data["Tags"])
    assert (
        tags[t.JOB] == "llm"
        and tags[t.ATTEMPT] == "1"
        and tags[t.BUCKET] == "ml-jobs"
        and tags[t.CLIENT_TOKEN] == client_token_for("train:llm:attempt-1")
    )
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    # The next attempt is another key: another instance.
    second = launch_instance.fn(request(idempotency_key="train:llm:attempt-2", attempt=2))
    assert second.id != first.id and calls.count("RunInstances") == 2
    assert terminate_instance.fn(first.id, idempotency_key="train:llm:attempt-1")


def test_terminating_a_launched_instance_refuses_other_runs_and_protected_ones(ec2: Any) -> None:
    mine = launch_instance.fn(request())
    theirs = launch_instance.fn(request(idempotency_key="train:llm:attempt-9", attempt=9))
    with pytest.raises(SafetyRefusalError, match="not launched by this run"):
        terminate_instance.fn(theirs.id, idempotency_key="train:llm:attempt-1")
    ec2.create_tags(Resources=[mine.id], Tags=[{"Key": t.PROTECTED, "Value": "true"}])
    with pytest.raises(SafetyRefusalError, match="protected"):
        terminate_instance.fn(mine.id, idempotency_key="train:llm:attempt-1")
    assert {i["InstanceId"] for i in live(ec2)} == {mine.id, theirs.id}  # both still running
    ec2.delete_tags(Resources=[mine.id], Tags=[{"Key": t.PROTECTED}])
    assert terminate_instance.fn(mine.id, idempotency_key="train:llm:attempt-1")
    assert {i["InstanceId"] for i in live(ec2)} == {theirs.id}


def test_keep_on_termination_clears_delete_on_termination(ec2: Any) -> None:
    instance = launch_instance.fn(request()).id
    data = ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]
    root = data["BlockDeviceMappings"][0]
    assert root["Ebs"]["DeleteOnTermination"]
    keep_on_termination.fn(instance, root["Ebs"]["VolumeId"])
    data = ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]
    assert data["BlockDeviceMappings"][0]["Ebs"]["DeleteOnTermination"] is False
    ec2.terminate_instances(InstanceIds=[instance])
    assert ec2.describe_volumes(VolumeIds=[root["Ebs"]["VolumeId"]])["Volumes"]  # survived its instance


def _persistent_volume(ec2: Any, instance_id: str) -> str:
    tags = t.managed_tags(job="llm", role=t.Role.DATA, name="data", persistent=True)
    volume_id = str(
        ec2.create_volume(
            AvailabilityZone="us-east-1a", Size=1, TagSpecifications=t.tag_specifications("volume", tags)
        )["VolumeId"]
    )
    ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    return volume_id


def test_terminate_by_its_run_detaches_persistent_volumes_and_teardown_refuses_while_attached(ec2: Any) -> None:
    """One terminate, two callers: the run that launched the instance releases its persistent volume first
    (rule 1); teardown (no key) refuses while one is attached, and never touches an unmanaged instance."""
    teardowns = launch_instance.fn(request(idempotency_key="train:llm:attempt-2", attempt=2))
    image_id = live(ec2)[0]["ImageId"]
    kept = _persistent_volume(ec2, teardowns.id)
    with pytest.raises(SafetyRefusalError, match=f"{kept} still attached"):
        terminate_instance.fn(teardowns.id, wait=False)
    assert teardowns.id in {i["InstanceId"] for i in live(ec2)}
    assert ec2.describe_volumes(VolumeIds=[kept])["Volumes"][0]["Attachments"][0]["InstanceId"] == teardowns.id

    mine = launch_instance.fn(request())
    data_volume = _persistent_volume(ec2, mine.id)
    assert terminate_instance.fn(mine.id, idempotency_key="train:llm:attempt-1")
    assert mine.id not in {i["InstanceId"] for i in live(ec2)}
    volume = ec2.describe_volumes(VolumeIds=[data_volume])["Volumes"][0]
    assert (volume["State"], volume.get("Attachments", [])) == ("available", [])
    assert not terminate_instance.fn(mine.id, idempotency_key="train:llm:attempt-1")  # already gone: done

    ec2.detach_volume(VolumeId=kept, InstanceId=teardowns.id)
    ec2.get_waiter("volume_available").wait(VolumeIds=[kept], WaiterConfig={"Delay": 1})
    assert terminate_instance.fn(teardowns.id, wait=False)
    assert teardowns.id not in {i["InstanceId"] for i in live(ec2)}
    assert ec2.describe_volumes(VolumeIds=[kept])["Volumes"][0]["State"] == "available"

    stranger = ec2.run_instances(ImageId=image_id, InstanceType="t3.micro", MinCount=1, MaxCount=1)
    stranger_id = stranger["Instances"][0]["InstanceId"]
    with pytest.raises(SafetyRefusalError, match="not managed"):
        terminate_instance.fn(stranger_id, wait=False)
    assert stranger_id in {i["InstanceId"] for i in live(ec2)}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"instance_type": "zz9.mega"}, "instance_type"),
        ({"image_id": "ami-0123456789abcdef0"}, "image_id"),
        ({"image_parameter": "/aws/service/no/such/parameter"}, "image_parameter"),
        ({"instance_type": "t3.micro", "availability_zone": "us-east-1e"}, "instance_type"),  # not offered there
    ],
)
def test_unknown_type_or_ami_is_refused_with_no_instance(
    ec2: Any, calls: list[str], fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInputError) as err:
        launch_instance.fn(request(**fields))
    assert err.value.field == field
    assert "RunInstances" not in calls and live(ec2) == []


# -- spot in the sandbox (real spot prices, capacity injection) -----------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with exported_sandbox(boot_delay=0.1) as cloud:
        yield cloud


@pytest.fixture
def cloud(sandbox: Sandbox) -> Sandbox:
    sandbox.reset()
    return sandbox


def test_spot_when_available(cloud: Sandbox) -> None:
    instance = launch_instance.fn(request(spot=True))
    assert instance.lifecycle == "spot" and instance.spot_request_id


def test_spot_refused_is_a_capacity_refusal_and_on_demand_keeps_the_attempts_key(cloud: Sandbox) -> None:
    # A max price far under the spot price: AWS answers SpotMaxPriceTooLow. The task launches what it is told; the
    # fallback is the caller's (core.recovery.launch_capacity), with the same key.
    with pytest.raises(CapacityRefusedError) as err:
        launch_instance.fn(request(spot=True, max_price="0.0001"))
    assert (err.value.code, err.value.capacity, err.value.availability_zone) == (
        "SpotMaxPriceTooLow",
        "spot",
        "us-east-1a",
    )
    assert live(cloud.client("ec2")) == []
    fallback = launch_instance.fn(request(spot=False))
    assert fallback.lifecycle == "on-demand"
    # The fallback instance carries the attempt's token tag: a retry finds it, and it may be terminated by key.
    assert launch_instance.fn(request(spot=False)).id == fallback.id
    assert launch_instance.fn(request(spot=True, max_price="0.0001")).id == fallback.id
    assert [i["InstanceId"] for i in live(cloud.client("ec2"))] == [fallback.id]
    assert terminate_instance.fn(fallback.id, idempotency_key="train:llm:attempt-1")


def test_no_capacity_fails_both_ways_and_leaves_nothing(cloud: Sandbox) -> None:
    cloud.set_capacity("us-east-1a", "t3.micro", available=False)
    with pytest.raises(CapacityRefusedError) as err:
        launch_instance.fn(request(spot=True))
    assert err.value.code == "InsufficientInstanceCapacity" and "on-demand fallback" in str(err.value)
    with pytest.raises(AwsError) as other:
        launch_instance.fn(request(spot=False))  # on-demand has none there either
    assert other.value.code == "InsufficientInstanceCapacity" and not isinstance(other.value, CapacityRefusedError)
    assert live(cloud.client("ec2")) == []
