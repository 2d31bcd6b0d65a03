"""IMDSv2 per instance (plain HTTP and botocore's fetcher) and the block-device/GPU shims, over SSM."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from sandbox import Sandbox
from tests.sandbox.test_ssm import launch, run

pytestmark = pytest.mark.sandbox


def imds(
    endpoint: str, path: str, token: str | None = None, method: str = "GET", ttl: str | None = None
) -> tuple[int, str]:
    headers = {}
    if token is not None:
        headers["X-aws-ec2-metadata-token"] = token
    if ttl is not None:
        headers["X-aws-ec2-metadata-token-ttl-seconds"] = ttl
    # A plain client joins with "/" as the agent does; the trailing slash of the endpoint must not matter.
    url = endpoint.rstrip("/") + "/" + path
    request = urllib.request.Request(url, headers=headers, method=method)  # noqa: S310 (the sandbox, http)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:  # noqa: S310
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


def test_imdsv2_token_flow_and_metadata(cloud: Sandbox) -> None:
    instance_id = launch(cloud, InstanceType="g5.xlarge", Placement={"AvailabilityZone": "us-east-1b"})
    endpoint = cloud.runtime.env_for(instance_id)["AWS_EC2_METADATA_SERVICE_ENDPOINT"]
    assert imds(endpoint, "latest/meta-data/instance-id")[0] == 401  # IMDSv2 only
    assert imds(endpoint, "latest/api/token", method="PUT")[0] == 400  # the TTL header is required
    status, token = imds(endpoint, "latest/api/token", method="PUT", ttl="60")
    assert status == 200 and token
    assert imds(endpoint, "latest/meta-data/instance-id", token="bogus")[0] == 401
    assert imds(endpoint, "latest/meta-data/instance-id", token) == (200, instance_id)
    assert imds(endpoint, "latest/meta-data/instance-type", token) == (200, "g5.xlarge")
    assert imds(endpoint, "latest/meta-data/placement/availability-zone", token) == (200, "us-east-1b")
    assert imds(endpoint, "latest/meta-data/placement/region", token) == (200, "us-east-1")
    assert imds(endpoint, "latest/meta-data/instance-life-cycle", token) == (200, "on-demand")
    listing = imds(endpoint, "latest/meta-data/", token)[1].splitlines()
    assert {"instance-id", "placement/", "ami-id", "local-ipv4", "hostname"} <= set(listing)
    document = json.loads(imds(endpoint, "latest/dynamic/instance-identity/document", token)[1])
    assert (document["instanceId"], document["availabilityZone"]) == (instance_id, "us-east-1b")
    assert imds(endpoint, "latest/meta-data/events/recommendations/rebalance", token)[0] == 404
    cloud.recommend_rebalance(instance_id)
    status, body = imds(endpoint, "latest/meta-data/events/recommendations/rebalance", token)
    assert status == 200 and json.loads(body)["noticeTime"].endswith("Z")
    # Another instance's token is not valid here.
    other = launch(cloud)
    other_endpoint = cloud.runtime.env_for(other)["AWS_EC2_METADATA_SERVICE_ENDPOINT"]
    assert imds(other_endpoint, "latest/meta-data/instance-id", token)[0] == 401


def test_botocore_on_the_instance_finds_its_imds(cloud: Sandbox) -> None:
    # On the instance (its environment: AWS_EC2_METADATA_SERVICE_ENDPOINT set, metadata not disabled),
    # botocore's own fetchers join the endpoint with latest/api/token and latest/meta-data/... correctly.
    instance_id = launch(cloud, Placement={"AvailabilityZone": "us-east-1c"})
    script = (
        "import botocore.session\n"
        "from botocore.utils import IMDSFetcher, InstanceMetadataRegionFetcher\n"
        "session = botocore.session.get_session()\n"
        "config = {'ec2_metadata_service_endpoint': session.get_config_variable('ec2_metadata_service_endpoint')}\n"
        "assert IMDSFetcher(config=config)._fetch_metadata_token()\n"
        "print(InstanceMetadataRegionFetcher(config=config).retrieve_region())\n"
    )
    inv = run(cloud, instance_id, f"python3 - <<'EOF'\n{script}EOF")
    assert inv["StandardOutputContent"] == "us-east-1\n", inv["StandardErrorContent"]


def test_spot_instance_action_404_then_notice_and_gone_after_termination(cloud: Sandbox) -> None:
    instance_id = launch(cloud, InstanceMarketOptions={"MarketType": "spot"})
    endpoint = cloud.runtime.env_for(instance_id)["AWS_EC2_METADATA_SERVICE_ENDPOINT"]
    token = imds(endpoint, "latest/api/token", method="PUT", ttl="21600")[1]
    assert imds(endpoint, "latest/meta-data/instance-life-cycle", token) == (200, "spot")
    assert imds(endpoint, "latest/meta-data/spot/instance-action", token)[0] == 404
    notice = {"action": "terminate", "time": "2026-01-02T03:04:05Z"}
    cloud.runtime.set_spot_action(instance_id, notice)
    status, body = imds(endpoint, "latest/meta-data/spot/instance-action", token)
    assert status == 200 and json.loads(body) == notice
    assert imds(endpoint, "latest/meta-data/spot/termination-time", token) == (200, notice["time"])
    # The same path from the instance, as the agent polls it (curl-style, through the instance environment).
    inv = run(
        cloud,
        instance_id,
        'E="$AWS_EC2_METADATA_SERVICE_ENDPOINT"',
        'T=$(curl -s -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" "${E}latest/api/token")',
        'curl -s -H "X-aws-ec2-metadata-token: $T" "${E}latest/meta-data/spot/instance-action"',
    )
    assert json.loads(inv["StandardOutputContent"]) == notice
    cloud.client("ec2").terminate_instances(InstanceIds=[instance_id])
    assert imds(endpoint, "latest/meta-data/instance-id", token)[0] == 404
    assert (
        imds(f"{cloud.endpoint_url}/_imds/i-0000000000000000f/", "latest/api/token", method="PUT", ttl="60")[0] == 404
    )


def test_block_device_shims(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    instance_id = launch(cloud, Placement={"AvailabilityZone": "us-east-1a"})
    volume_id = ec2.create_volume(AvailabilityZone="us-east-1a", Size=100)["VolumeId"]
    ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    serial = volume_id.replace("-", "")

    inv = run(cloud, instance_id, "blkid /dev/sdf")
    assert (inv["Status"], inv["ResponseCode"], inv["StandardOutputContent"]) == ("Failed", 2, "")
    inv = run(cloud, instance_id, "mkdir -p /tmp/x $TRAINCTL_ROOT/mnt/data", "mount /dev/sdf /mnt/data")
    assert inv["ResponseCode"] == 32 and "wrong fs type" in inv["StandardErrorContent"]
    inv = run(cloud, instance_id, "mount /dev/sdf /mnt/nowhere")
    assert inv["ResponseCode"] == 32 and "mount point does not exist" in inv["StandardErrorContent"]

    inv = run(cloud, instance_id, "mkfs.ext4 -q /dev/nvme1n1", "mkfs.xfs /dev/sdf")
    assert inv["Status"] == "Failed" and "Use the -f option" in inv["StandardErrorContent"]
    inv = run(
        cloud,
        instance_id,
        "mkfs.xfs -f -L data /dev/sdf >/dev/null",
        "blkid /dev/sdf",
        "mount -t xfs -o noatime /dev/sdf /mnt/data",
        "mountpoint -q /mnt/data && echo mounted",
        "touch $TRAINCTL_ROOT/mnt/data/a",
        "lsblk -J -d -o NAME,SIZE,SERIAL,MOUNTPOINT",
    )
    assert inv["Status"] == "Success", inv["StandardErrorContent"]
    lines = inv["StandardOutputContent"].split("\n", 2)
    assert lines[0].startswith('/dev/sdf: LABEL="data" UUID="') and lines[0].endswith('TYPE="xfs"')
    assert lines[1] == "mounted"
    devices = json.loads(lines[2])["blockdevices"]
    assert {"name": "nvme1n1", "size": "100G", "serial": serial, "mountpoint": "/mnt/data"} in devices
    assert (cloud.runtime.volume_dir(volume_id) / "fs" / "a").exists()

    inv = run(cloud, instance_id, "mkfs.xfs -f /dev/sdf", "true")
    assert "busy" in inv["StandardErrorContent"]  # a mounted filesystem is not reformatted
    inv = run(cloud, instance_id, "lsblk -n -o NAME,SERIAL,MOUNTPOINT /dev/sdf")
    assert inv["StandardOutputContent"].split() == ["nvme1n1", serial, "/mnt/data"]
    inv = run(cloud, instance_id, "umount /mnt/data", "mountpoint /mnt/data; echo $?", "ls $TRAINCTL_ROOT/mnt/data")
    assert inv["StandardOutputContent"] == "/mnt/data is not a mountpoint\n32\n"
    inv = run(cloud, instance_id, "umount /mnt/data")
    assert inv["ResponseCode"] == 32 and "not mounted" in inv["StandardErrorContent"]
    # fstab by UUID, as cloud-init scripts write it.
    inv = run(
        cloud,
        instance_id,
        'echo "UUID=$(blkid -o value -s UUID /dev/sdf) /mnt/data xfs defaults,nofail 0 2" >> $TRAINCTL_ROOT/etc/fstab',
        "mount -a",
        "ls $TRAINCTL_ROOT/mnt/data",
    )
    assert inv["StandardOutputContent"] == "a\n", inv["StandardErrorContent"]
