"""EC2 rules moto gets wrong, answered the AWS way; transition delays that make waiters really wait; capacity."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sandbox import Sandbox

AMI = "ami-12345678"
FAST = {"Delay": 0.2, "MaxAttempts": 50}  # waiter polling for tests: 0.2 s instead of 15 s
DELAY = 1.5  # seconds per state transition in the `slow` sandbox


def _launch(ec2: Any, zone: str = "us-east-1a", instance_type: str = "t3.micro") -> str:
    reply = ec2.run_instances(
        ImageId=AMI, MinCount=1, MaxCount=1, InstanceType=instance_type, Placement={"AvailabilityZone": zone}
    )
    return str(reply["Instances"][0]["InstanceId"])


def _volume(ec2: Any, zone: str = "us-east-1a") -> str:
    return str(ec2.create_volume(AvailabilityZone=zone, Size=10, VolumeType="gp3")["VolumeId"])


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    err = exc.value.response["Error"]
    return str(err["Code"]), str(err["Message"])


def _volume_state(ec2: Any, volume_id: str) -> dict[str, Any]:
    return dict(ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0])


@pytest.fixture
def slow(cloud: Sandbox) -> Iterator[Sandbox]:
    """The sandbox with 1.5 s transitions (AWS takes longer; a loaded CI machine can take 0.6 s between two
    calls, so shorter delays made the "still pending" checks flaky); instant again afterwards."""
    cloud.transition_delay = DELAY
    try:
        yield cloud
    finally:
        cloud.transition_delay = 0.0


def _control(cloud: Sandbox, name: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    url = f"{cloud.endpoint_url}/_sandbox/{name}"  # always the local sandbox's http endpoint
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# -- volume rules ----------------------------------------------------------------------------------------------
def test_cross_az_attach_is_refused_and_the_volume_stays_available(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    instance_id = _launch(ec2, "us-east-1a")
    volume_id = _volume(ec2, "us-east-1b")
    with pytest.raises(ClientError) as exc:
        ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    code, message = _error(exc)
    assert code == "InvalidVolume.ZoneMismatch"
    assert volume_id in message and instance_id in message
    volume = _volume_state(ec2, volume_id)
    assert volume["State"] == "available"
    assert volume["Attachments"] == []


def test_attaching_an_in_use_volume_to_a_second_instance_is_refused(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    first, second = _launch(ec2), _launch(ec2)
    volume_id = _volume(ec2)
    ec2.attach_volume(VolumeId=volume_id, InstanceId=first, Device="/dev/sdf")
    with pytest.raises(ClientError) as exc:
        ec2.attach_volume(VolumeId=volume_id, InstanceId=second, Device="/dev/sdf")
    code, message = _error(exc)
    assert code == "VolumeInUse"
    assert message == f"{volume_id} is already attached to an instance"
    attachments = _volume_state(ec2, volume_id)["Attachments"]
    assert [a["InstanceId"] for a in attachments] == [first]


def test_device_name_clash_is_refused(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    instance_id = _launch(ec2)
    one, two = _volume(ec2), _volume(ec2)
    ec2.attach_volume(VolumeId=one, InstanceId=instance_id, Device="/dev/sdf")
    with pytest.raises(ClientError) as exc:
        ec2.attach_volume(VolumeId=two, InstanceId=instance_id, Device="/dev/sdf")
    code, message = _error(exc)
    assert code == "InvalidParameterValue"
    assert message == "Invalid value '/dev/sdf' for unixDevice. Attachment point /dev/sdf is already in use"
    root = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["RootDeviceName"]
    with pytest.raises(ClientError) as exc:
        ec2.attach_volume(VolumeId=two, InstanceId=instance_id, Device=root)
    assert _error(exc)[0] == "InvalidParameterValue"
    assert _volume_state(ec2, two)["State"] == "available"
    ec2.attach_volume(VolumeId=two, InstanceId=instance_id, Device="/dev/sdg")  # another name is fine


def test_detach_of_an_unattached_volume_is_incorrect_state(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    volume_id = _volume(ec2)
    with pytest.raises(ClientError) as exc:
        ec2.detach_volume(VolumeId=volume_id)
    assert _error(exc) == ("IncorrectState", f"Volume '{volume_id}' is in the 'available' state.")


def test_attached_volume_cannot_be_deleted_and_unknown_ids_keep_motos_errors(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    instance_id = _launch(ec2)
    volume_id = _volume(ec2)
    ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    with pytest.raises(ClientError) as exc:
        ec2.delete_volume(VolumeId=volume_id)
    assert _error(exc)[0] == "VolumeInUse"
    with pytest.raises(ClientError) as exc:
        ec2.attach_volume(VolumeId="vol-0123456789abcdef0", InstanceId=instance_id, Device="/dev/sdh")
    assert _error(exc)[0] == "InvalidVolume.NotFound"
    with pytest.raises(ClientError) as exc:
        ec2.attach_volume(VolumeId=_volume(ec2), InstanceId="i-0123456789abcdef0", Device="/dev/sdh")
    assert _error(exc)[0] == "InvalidInstanceID.NotFound"


def test_attach_to_a_terminated_instance_is_incorrect_instance_state(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    instance_id = _launch(ec2)
    ec2.terminate_instances(InstanceIds=[instance_id])
    with pytest.raises(ClientError) as exc:
        ec2.attach_volume(VolumeId=_volume(ec2), InstanceId=instance_id, Device="/dev/sdf")
    assert _error(exc)[0] == "IncorrectInstanceState"


def test_transitions_are_instant_by_default(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    instance_id = _launch(ec2)
    state = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]
    assert state["Name"] == "running"
    volume_id = _volume(ec2)
    assert _volume_state(ec2, volume_id)["State"] == "available"


# -- transition delays -----------------------------------------------------------------------------------------
def _instance(ec2: Any, instance_id: str) -> dict[str, Any]:
    return dict(ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0])


def test_instance_waiters_observe_pending_stopping_and_shutting_down(slow: Sandbox) -> None:
    ec2 = slow.client("ec2")
    started = time.monotonic()
    instance_id = _launch(ec2)
    assert _instance(ec2, instance_id)["State"]["Name"] == "pending"
    ec2.get_waiter("instance_running").wait(InstanceIds=[instance_id], WaiterConfig=FAST)
    assert time.monotonic() - started >= DELAY - 0.1
    assert _instance(ec2, instance_id)["State"] == {"Code": 16, "Name": "running"}

    ec2.stop_instances(InstanceIds=[instance_id])
    assert _instance(ec2, instance_id)["State"]["Name"] == "stopping"
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[instance_id], WaiterConfig=FAST)

    ec2.start_instances(InstanceIds=[instance_id])
    assert _instance(ec2, instance_id)["State"]["Name"] == "pending"
    ec2.get_waiter("instance_running").wait(InstanceIds=[instance_id], WaiterConfig=FAST)

    ec2.terminate_instances(InstanceIds=[instance_id])
    assert _instance(ec2, instance_id)["State"]["Name"] == "shutting-down"
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[instance_id], WaiterConfig=FAST)
    assert _instance(ec2, instance_id)["State"] == {"Code": 48, "Name": "terminated"}


def test_volume_waiters_observe_creating_attaching_and_detaching(slow: Sandbox) -> None:
    ec2 = slow.client("ec2")
    instance_id = _launch(ec2)
    with pytest.raises(ClientError) as exc:  # a pending instance takes no volume
        ec2.attach_volume(VolumeId=_volume(ec2), InstanceId=instance_id, Device="/dev/sdf")
    assert _error(exc)[0] == "IncorrectInstanceState"
    ec2.get_waiter("instance_running").wait(InstanceIds=[instance_id], WaiterConfig=FAST)
    volume_id = _volume(ec2)
    assert _volume_state(ec2, volume_id)["State"] == "creating"
    with pytest.raises(ClientError) as exc:  # not available yet
        ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    assert _error(exc)[0] == "IncorrectState"
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)

    answer = ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    assert answer["State"] == "attaching"
    volume = _volume_state(ec2, volume_id)
    # As on AWS: the volume is in-use at once, its attachment is still attaching.
    assert volume["State"] == "in-use"
    assert volume["Attachments"][0]["State"] == "attaching"
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    assert slow.wait_for(lambda: _volume_state(ec2, volume_id)["Attachments"][0]["State"] == "attached", 5)
    mappings = {m["DeviceName"]: m["Ebs"]["Status"] for m in _instance(ec2, instance_id)["BlockDeviceMappings"]}
    assert mappings["/dev/sdf"] == "attached"

    started = time.monotonic()
    answer = ec2.detach_volume(VolumeId=volume_id)
    assert answer["State"] == "detaching"
    volume = _volume_state(ec2, volume_id)
    assert volume["State"] == "in-use"
    assert volume["Attachments"][0]["State"] == "detaching"
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    assert time.monotonic() - started >= DELAY - 0.1
    assert _volume_state(ec2, volume_id)["Attachments"] == []
    devices = {m["DeviceName"] for m in _instance(ec2, instance_id)["BlockDeviceMappings"]}
    assert "/dev/sdf" not in devices


def test_snapshot_waiter_observes_pending(slow: Sandbox) -> None:
    ec2 = slow.client("ec2")
    volume_id = _volume(ec2)
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    snapshot = ec2.create_snapshot(VolumeId=volume_id)
    assert snapshot["State"] == "pending"
    described = ec2.describe_snapshots(SnapshotIds=[snapshot["SnapshotId"]])["Snapshots"][0]
    assert described["State"] == "pending" and described["Progress"] != "100%"
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snapshot["SnapshotId"]], WaiterConfig=FAST)
    described = ec2.describe_snapshots(SnapshotIds=[snapshot["SnapshotId"]])["Snapshots"][0]
    assert described["State"] == "completed" and described["Progress"] == "100%"


def test_reset_cancels_pending_transitions(slow: Sandbox) -> None:
    ec2 = slow.client("ec2")
    _launch(ec2)
    slow.reset()
    time.sleep(0.8)  # a leftover timer would fire now and find nothing; nothing must break
    assert ec2.describe_instances()["Reservations"] == []


# -- capacity --------------------------------------------------------------------------------------------------
def test_no_capacity_in_one_az_for_one_type(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    cloud.set_capacity("us-east-1a", "g5.xlarge", available=False)
    with pytest.raises(ClientError) as exc:
        _launch(ec2, "us-east-1a", "g5.xlarge")
    code, message = _error(exc)
    assert code == "InsufficientInstanceCapacity"
    assert "g5.xlarge" in message and "(us-east-1a)" in message
    _launch(ec2, "us-east-1b", "g5.xlarge")  # another AZ has it
    _launch(ec2, "us-east-1a", "g4dn.xlarge")  # another type too
    # The AZ of a subnet counts as well.
    subnet = next(s for s in ec2.describe_subnets()["Subnets"] if s["AvailabilityZone"] == "us-east-1a")
    with pytest.raises(ClientError) as exc:
        ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="g5.xlarge", SubnetId=subnet["SubnetId"])
    assert _error(exc)[0] == "InsufficientInstanceCapacity"
    cloud.set_capacity("us-east-1a", "g5.xlarge", available=True)
    _launch(ec2, "us-east-1a", "g5.xlarge")


def test_no_spot_capacity_still_launches_on_demand(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    cloud.set_capacity("us-east-1a", "g5.xlarge", available=False, spot_only=True)
    spot = {"InstanceMarketOptions": {"MarketType": "spot"}}
    with pytest.raises(ClientError) as exc:
        ec2.run_instances(
            ImageId=AMI,
            MinCount=1,
            MaxCount=1,
            InstanceType="g5.xlarge",
            Placement={"AvailabilityZone": "us-east-1a"},
            **spot,
        )
    assert _error(exc)[0] == "InsufficientInstanceCapacity"
    _launch(ec2, "us-east-1a", "g5.xlarge")  # on-demand: the spot pool is what ran dry
    cloud.reset()
    ec2.run_instances(
        ImageId=AMI,
        MinCount=1,
        MaxCount=1,
        InstanceType="g5.xlarge",
        Placement={"AvailabilityZone": "us-east-1a"},
        **spot,
    )


def test_capacity_control_route_and_reset(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    status, answer = _control(
        cloud, "capacity", {"availability_zone": "us-east-1c", "instance_type": "t3.micro", "available": False}
    )
    assert status == 200 and answer["result"]["available"] is False
    with pytest.raises(ClientError) as exc:
        _launch(ec2, "us-east-1c")
    assert _error(exc)[0] == "InsufficientInstanceCapacity"
    cloud.reset()
    _launch(ec2, "us-east-1c")


# -- throttling ------------------------------------------------------------------------------------------------
def test_throttling_ec2_is_request_limit_exceeded(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    cloud.throttle(1.0, ["ec2"])
    with pytest.raises(ClientError) as exc:
        ec2.describe_instances()
    assert _error(exc)[0] == "RequestLimitExceeded"
    cloud.throttle(0.0)
    ec2.describe_instances()
