"""The instance runtime: user data, volumes as folders that outlive instances, process lifetimes."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sandbox import Sandbox
from tests.sandbox.test_ssm import AMI, launch, online, run

pytestmark = pytest.mark.sandbox


def children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid` (zombies included: an unreaped child is a leak too)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def carrying(marker: str) -> list[int]:
    """Processes whose environment holds `marker` (how a setsid'd job of an instance is recognised)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_user_data_runs_and_its_file_is_seen_by_the_next_command(cloud: Sandbox) -> None:
    user_data = "#!/bin/bash\nset -e\necho ready > $TRAINCTL_ROOT/var/lib/trainctl/marker\necho user-data-ran\n"
    instance_id = launch(cloud, UserData=user_data)
    root = cloud.runtime.instance_root(instance_id)
    assert cloud.wait_for(lambda: (root / "var/lib/trainctl/marker").exists(), timeout=10)
    inv = run(cloud, instance_id, "cat $TRAINCTL_ROOT/var/lib/trainctl/marker")
    assert inv["StandardOutputContent"] == "ready\n"
    log = root / "var/log/cloud-init-output.log"
    assert cloud.wait_for(lambda: "exit code 0" in log.read_text(), timeout=10)
    assert "user-data-ran" in log.read_text()
    env = cloud.runtime.env_for(instance_id)
    assert env["AWS_ENDPOINT_URL"] == cloud.endpoint_url == env["S3_ENDPOINT_URL"]
    assert env["PATH"].split(os.pathsep)[0] == str(cloud.runtime.shims_dir)


def test_python_user_data_and_cloud_config(cloud: Sandbox) -> None:
    script = (
        "#!/usr/bin/env python3\nimport os, pathlib\npathlib.Path(os.environ['TRAINCTL_ROOT'], 'py').write_text('ok')\n"
    )
    first = launch(cloud, UserData=script)
    assert cloud.wait_for(lambda: (cloud.runtime.instance_root(first) / "py").exists(), timeout=10)
    second = launch(cloud, UserData="#cloud-config\npackages: [git]\n")
    log = cloud.runtime.instance_root(second) / "var/log/cloud-init-output.log"
    assert "not supported" in log.read_text()


def test_stop_and_terminate_end_every_process_even_detached_ones(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    instance_id = launch(cloud, UserData="#!/bin/bash\nsleep 300 &\nsetsid sleep 301 &\nwait\n")
    marker = f"TRAINCTL_ROOT={cloud.runtime.instance_root(instance_id)}"
    assert cloud.wait_for(lambda: len(carrying(marker)) >= 3, timeout=10)
    run(cloud, instance_id, "nohup setsid sleep 302 >/dev/null 2>&1 &")
    ec2.stop_instances(InstanceIds=[instance_id])
    assert cloud.wait_for(lambda: carrying(marker) == [], timeout=10)
    assert not online(cloud, instance_id)
    ec2.start_instances(InstanceIds=[instance_id])
    assert cloud.wait_for(lambda: online(cloud, instance_id), timeout=10)
    run(cloud, instance_id, "setsid sleep 303 >/dev/null 2>&1 &")
    assert carrying(marker)
    ec2.terminate_instances(InstanceIds=[instance_id])
    assert cloud.wait_for(lambda: carrying(marker) == [], timeout=10)
    cloud.runtime.terminate(instance_id)  # idempotent


def test_file_on_a_mounted_volume_survives_the_instance_and_moves_to_another(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    placement = {"AvailabilityZone": "us-east-1a"}
    first = launch(cloud, Placement=placement)
    volume_id = ec2.create_volume(AvailabilityZone="us-east-1a", Size=20, VolumeType="gp3")["VolumeId"]
    ec2.attach_volume(VolumeId=volume_id, InstanceId=first, Device="/dev/sdf")
    serial = volume_id.replace("-", "")
    inv = run(
        cloud,
        first,
        f"DEV=/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{serial}",
        'blkid "$DEV" || mkfs.xfs "$DEV"',
        "mkdir -p $TRAINCTL_ROOT/data/train",
        'mount "$DEV" /data/train',
        "echo checkpoint-7 > $TRAINCTL_ROOT/data/train/ckpt.txt",
    )
    assert inv["Status"] == "Success", inv["StandardErrorContent"]
    assert (cloud.runtime.volume_dir(volume_id) / "fs" / "ckpt.txt").read_text() == "checkpoint-7\n"

    ec2.terminate_instances(InstanceIds=[first])
    assert (cloud.runtime.volume_dir(volume_id) / "fs" / "ckpt.txt").read_text() == "checkpoint-7\n"
    assert not (cloud.runtime.instance_root(first) / "dev/nvme1n1").exists()
    ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig={"Delay": 1, "MaxAttempts": 10})

    second = launch(cloud, Placement=placement)
    ec2.attach_volume(VolumeId=volume_id, InstanceId=second, Device="/dev/xvdg")
    inv = run(
        cloud,
        second,
        "blkid -o value -s TYPE /dev/xvdg",
        "mkdir -p $TRAINCTL_ROOT/mnt/data && mount /dev/xvdg /mnt/data",
        "cat $TRAINCTL_ROOT/mnt/data/ckpt.txt",
    )
    assert inv["Status"] == "Success", inv["StandardErrorContent"]
    assert inv["StandardOutputContent"] == "xfs\ncheckpoint-7\n"

    # Detach unmounts: the mount point is an empty directory again and the device is gone.
    ec2.detach_volume(VolumeId=volume_id)
    root = cloud.runtime.instance_root(second)
    assert (root / "mnt/data").is_dir() and not (root / "mnt/data").is_symlink()
    assert not (root / "dev/xvdg").exists()


def test_shutdown_on_the_instance_stops_or_terminates_it_as_its_shutdown_behaviour_says(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    placement = {"AvailabilityZone": "us-east-1a"}
    stopper = launch(cloud, Placement=placement)  # no InstanceInitiatedShutdownBehavior: AWS's default, stop
    ender = launch(cloud, Placement=placement, InstanceInitiatedShutdownBehavior="terminate")
    data = ec2.create_volume(AvailabilityZone="us-east-1a", Size=10, VolumeType="gp3")["VolumeId"]
    ec2.attach_volume(VolumeId=data, InstanceId=ender, Device="/dev/sdf")  # DeleteOnTermination false, as AWS
    described = ec2.describe_instances(InstanceIds=[ender])["Reservations"][0]["Instances"][0]
    root_volume = next(
        b["Ebs"]["VolumeId"] for b in described["BlockDeviceMappings"] if b["DeviceName"] == described["RootDeviceName"]
    )
    marker = f"TRAINCTL_ROOT={cloud.runtime.instance_root(ender)}"
    run(cloud, ender, "nohup setsid sleep 300 >/dev/null 2>&1 &")
    assert carrying(marker)
    # An unsupported form is refused and changes nothing.
    refused = cloud.runtime.spawn(stopper, ["shutdown", "-r", "now"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert refused.wait(timeout=10) == 1 and b"not supported" in refused.communicate()[1]
    for instance_id, argv in ((stopper, ["shutdown", "-h", "now"]), (ender, ["poweroff"])):
        proc = cloud.runtime.spawn(instance_id, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err  # it answers at once; the machine goes down a moment later

    def described_state(instance_id: str) -> tuple[str, str]:
        data = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        return data["State"]["Name"], data.get("StateReason", {}).get("Code", "")

    assert cloud.wait_for(lambda: described_state(stopper)[0] == "stopped", timeout=10)
    assert cloud.wait_for(lambda: described_state(ender)[0] == "terminated", timeout=10)
    for instance_id in (stopper, ender):
        assert described_state(instance_id)[1] == "Client.InstanceInitiatedShutdown"
    assert cloud.wait_for(lambda: carrying(marker) == [], timeout=10)  # its processes ended, detached ones too
    assert not online(cloud, stopper)
    # Terminate deleted the root volume (DeleteOnTermination true) and detached, kept, the data volume.
    volumes = {v["VolumeId"]: v["State"] for v in ec2.describe_volumes()["Volumes"]}
    assert root_volume not in volumes and volumes[data] == "available"
    assert not (cloud.runtime.instance_root(ender) / "dev/nvme1n1").exists()
    # A stopped instance starts again, as on AWS.
    ec2.start_instances(InstanceIds=[stopper])
    assert cloud.wait_for(lambda: online(cloud, stopper), timeout=10)


def test_snapshot_restores_into_a_new_volume(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    volume_id = ec2.create_volume(AvailabilityZone="us-east-1a", Size=10)["VolumeId"]
    folder = cloud.runtime.volume_dir(volume_id)
    (folder / "fstype").write_text("xfs\n")
    (folder / "fs" / "weights.bin").write_bytes(b"\x01\x02")
    snapshot_id = ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    (folder / "fs" / "later.txt").write_text("after the snapshot")
    restored = ec2.create_volume(AvailabilityZone="us-east-1b", SnapshotId=snapshot_id)["VolumeId"]
    copy = cloud.runtime.volume_dir(restored)
    assert (copy / "fs" / "weights.bin").read_bytes() == b"\x01\x02"
    assert not (copy / "fs" / "later.txt").exists()
    assert json.loads((copy / "volume.json").read_text())["VolumeId"] == restored
    ec2.delete_volume(VolumeId=volume_id)
    ec2.delete_snapshot(SnapshotId=snapshot_id)
    assert not folder.exists()
    assert not cloud.runtime.snapshot_dir(snapshot_id).exists()


def _control(cloud: Sandbox, name: str, payload: dict[str, Any]) -> Any:
    request = urllib.request.Request(  # noqa: S310 (the sandbox's own http endpoint)
        f"{cloud.endpoint_url}/_sandbox/{name}", data=json.dumps(payload).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as reply:  # noqa: S310
        return json.loads(reply.read())["result"]


def test_control_routes_and_nvidia_smi(cloud: Sandbox) -> None:
    instance_id = launch(cloud, InstanceType="g5.12xlarge")
    _control(cloud, "gpu", {"instance_id": instance_id, "utilization": 87})
    inv = run(
        cloud,
        instance_id,
        "nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits",
        "nvidia-smi --query-gpu=utilization.gpu --format=csv",
        "nvidia-smi",
    )
    lines = inv["StandardOutputContent"].splitlines()
    assert [line.split(", ")[0] for line in lines[:4]] == ["87"] * 4  # 4 GPUs on a g5.12xlarge
    assert all(int(line.split(", ")[1]) > 0 for line in lines[:4])
    assert lines[4:6] == ["utilization.gpu [%]", "87 %"]
    assert any("NVIDIA A10G" in line for line in lines)
    with pytest.raises(ValueError):
        cloud.set_gpu_utilization(instance_id, 101)
    # One value per GPU (as many as the type has); a type without a GPU has no driver to answer, as on AWS.
    _control(cloud, "gpu", {"instance_id": instance_id, "utilization": [0, 5, 60, 100]})
    query = "nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits"
    rows = run(cloud, instance_id, query)["StandardOutputContent"].splitlines()
    assert [row.split(", ")[0] for row in rows] == ["0", "5", "60", "100"] and rows[0] == "0, 0"
    with pytest.raises(ValueError, match="has 4 GPUs"):
        cloud.set_gpu_utilization(instance_id, [1, 2])
    cpu_only = launch(cloud, InstanceType="t3.micro")
    with pytest.raises(ValueError, match="has no GPU"):
        cloud.set_gpu_utilization(cpu_only, 10)
    failed = run(cloud, cpu_only, query)
    assert (failed["Status"], failed["ResponseCode"]) == ("Failed", 9)
    assert "couldn't communicate with the NVIDIA driver" in failed["StandardOutputContent"]
    notice = _control(cloud, "rebalance", {"instance_id": instance_id})
    assert notice["noticeTime"].endswith("Z")
    record = cloud.runtime.record(instance_id)
    assert record is not None and record.rebalance == notice


def test_no_process_left_behind_after_the_sandbox_exits(cloud: Sandbox) -> None:
    # Children that predate the block (e.g. the session's Prefect test server) are not the sandbox's.
    children_before = set(children_of(os.getpid()))
    started = time.monotonic()
    with Sandbox(boot_delay=0.1) as inner:
        state_dir = inner.state_dir
        ec2 = inner.client("ec2")
        reply = ec2.run_instances(
            ImageId=AMI,
            MinCount=2,
            MaxCount=2,
            InstanceType="t3.micro",
            UserData="#!/bin/bash\nsleep 300 &\nsetsid sleep 301 &\ntrap '' TERM\nsleep 302\n",
        )
        ids = [i["InstanceId"] for i in reply["Instances"]]
        assert inner.wait_for(lambda: all(online(inner, i) for i in ids), timeout=10)
        run(inner, ids[0], "setsid sleep 303 >/dev/null 2>&1 &")
        inner.client("ssm").send_command(
            InstanceIds=ids, DocumentName="AWS-RunShellScript", Parameters={"commands": ["sleep 304"]}
        )
        markers = [f"TRAINCTL_ROOT={inner.runtime.instance_root(i)}" for i in ids]
        assert inner.wait_for(lambda: all(len(carrying(m)) >= 4 for m in markers), timeout=10)
    assert set(children_of(os.getpid())) - children_before == set()
    assert all(carrying(m) == [] for m in markers)
    assert not state_dir.exists()
    assert time.monotonic() - started < 15
