"""SSM Run Command in the sandbox, driven only through boto3: commands really run on the instance."""

from __future__ import annotations

import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sandbox import Sandbox

pytestmark = pytest.mark.sandbox

AMI = "ami-12c6146b"
TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled"}


def launch(cloud: Sandbox, **kwargs: Any) -> str:
    ec2 = cloud.client("ec2")
    kwargs.setdefault("InstanceType", "t3.micro")
    reply = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, **kwargs)
    instance_id: str = reply["Instances"][0]["InstanceId"]
    assert cloud.wait_for(lambda: online(cloud, instance_id), timeout=10)
    return instance_id


def online(cloud: Sandbox, instance_id: str) -> bool:
    info = cloud.client("ssm").describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [instance_id]}])[
        "InstanceInformationList"
    ]
    return bool(info) and info[0]["PingStatus"] == "Online"


def send(cloud: Sandbox, instance_id: str, *commands: str, **kwargs: Any) -> str:
    parameters: dict[str, list[str]] = {"commands": list(commands)}
    parameters.update(kwargs.pop("parameters", {}))
    reply = cloud.client("ssm").send_command(
        InstanceIds=[instance_id], DocumentName="AWS-RunShellScript", Parameters=parameters, **kwargs
    )
    command_id: str = reply["Command"]["CommandId"]
    return command_id


def wait(cloud: Sandbox, command_id: str, instance_id: str, timeout: float = 15.0) -> dict[str, Any]:
    """Poll GetCommandInvocation with backoff, as the product does."""
    ssm = cloud.client("ssm")
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        inv: dict[str, Any] = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
        if inv["Status"] in TERMINAL or time.monotonic() > deadline:
            return inv
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def run(cloud: Sandbox, instance_id: str, *commands: str, **kwargs: Any) -> dict[str, Any]:
    return wait(cloud, send(cloud, instance_id, *commands, **kwargs), instance_id)


def test_stdout_exit_code_failure_and_working_directory(cloud: Sandbox) -> None:
    instance_id = launch(cloud)
    inv = run(cloud, instance_id, "echo hello", 'echo "root=$TRAINCTL_ROOT"', "pwd", "echo oops >&2")
    assert inv["Status"] == "Success"
    assert inv["StatusDetails"] == "Success"
    assert inv["ResponseCode"] == 0
    root = str(cloud.runtime.instance_root(instance_id))
    assert inv["StandardOutputContent"] == f"hello\nroot={root}\n{root}\n"
    assert inv["StandardErrorContent"] == "oops\n"
    assert inv["ExecutionStartDateTime"].endswith("Z")
    assert inv["ExecutionElapsedTime"].startswith("PT")

    failed = run(cloud, instance_id, "echo before", "exit 7")
    assert (failed["Status"], failed["StatusDetails"], failed["ResponseCode"]) == ("Failed", "Failed", 7)
    assert failed["StandardOutputContent"] == "before\n"

    inv = run(cloud, instance_id, "pwd", parameters={"workingDirectory": ["/home/ubuntu"]})
    assert inv["StandardOutputContent"].strip() == str(cloud.runtime.instance_root(instance_id) / "home/ubuntu")
    missing = run(cloud, instance_id, "pwd", parameters={"workingDirectory": ["/nope"]})
    assert missing["Status"] == "Failed"


def test_long_command_polled_to_completion(cloud: Sandbox) -> None:
    instance_id = launch(cloud)
    command_id = send(cloud, instance_id, "sleep 3", "echo finished")  # seconds are as long as minutes here
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    inv: dict[str, Any] = {}
    while time.monotonic() < deadline:
        inv = cloud.client("ssm").get_command_invocation(CommandId=command_id, InstanceId=instance_id)
        seen.add(inv["Status"])
        if inv["Status"] in TERMINAL:
            break
        time.sleep(0.5)
    assert "InProgress" in seen
    assert inv["Status"] == "Success"
    assert inv["StandardOutputContent"] == "finished\n"
    assert float(inv["ExecutionElapsedTime"][2:-1]) >= 2.5  # start is stamped just after the process starts


def test_large_output_is_truncated_in_the_api_and_complete_in_s3(cloud: Sandbox) -> None:
    instance_id = launch(cloud)
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket="ssm-output")
    expected = "".join(f"{n}\n" for n in range(1, 20001))  # ~109 KB
    command_id = send(cloud, instance_id, "seq 1 20000", OutputS3BucketName="ssm-output", OutputS3KeyPrefix="runs/")
    inv = wait(cloud, command_id, instance_id)
    assert inv["Status"] == "Success"
    assert len(expected) > 100_000
    assert inv["StandardOutputContent"] == expected[:24_000]
    key = f"runs/{command_id}/{instance_id}/awsrunShellScript/0.awsrunShellScript/stdout"
    assert inv["StandardOutputUrl"].endswith(f"/ssm-output/{key}")
    body = s3.get_object(Bucket="ssm-output", Key=key)["Body"].read().decode()
    assert body == expected


def test_execution_timeout_and_cancel_end_hanging_commands(cloud: Sandbox) -> None:
    instance_id = launch(cloud)
    ssm = cloud.client("ssm")
    started = time.monotonic()
    timed = send(cloud, instance_id, "echo start", "sleep 60", parameters={"executionTimeout": ["1"]})
    cancelled = send(cloud, instance_id, "sleep 60")
    assert cloud.wait_for(
        lambda: ssm.get_command_invocation(CommandId=cancelled, InstanceId=instance_id)["Status"] == "InProgress"
    )
    ssm.cancel_command(CommandId=cancelled)
    inv = wait(cloud, cancelled, instance_id, timeout=10)
    assert inv["Status"] == "Cancelled"
    assert ssm.list_commands(CommandId=cancelled)["Commands"][0]["Status"] == "Cancelled"

    inv = wait(cloud, timed, instance_id)
    assert inv["Status"] == "TimedOut"
    assert inv["StatusDetails"] == "ExecutionTimedOut"
    assert inv["StandardOutputContent"] == "start\n"
    assert time.monotonic() - started < 10
    with pytest.raises(ClientError) as err:
        ssm.cancel_command(CommandId="00000000-0000-0000-0000-000000000000")
    assert err.value.response["Error"]["Code"] == "InvalidCommandId"


def test_terminated_instance_is_refused_and_its_running_command_fails(cloud: Sandbox) -> None:
    instance_id = launch(cloud)
    command_id = send(cloud, instance_id, "sleep 60")
    ssm = cloud.client("ssm")
    assert cloud.wait_for(
        lambda: ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)["Status"] == "InProgress"
    )
    cloud.client("ec2").terminate_instances(InstanceIds=[instance_id])
    inv = wait(cloud, command_id, instance_id, timeout=10)
    assert inv["Status"] == "Failed"
    with pytest.raises(ClientError) as err:
        send(cloud, instance_id, "true")
    assert err.value.response["Error"]["Code"] == "InvalidInstanceId"
    with pytest.raises(ClientError) as err:
        send(cloud, "i-0123456789abcdef0", "true")
    assert err.value.response["Error"]["Code"] == "InvalidInstanceId"
    assert ssm.describe_instance_information()["InstanceInformationList"] == []


def test_commands_go_only_to_the_named_instances(cloud: Sandbox) -> None:
    first, second = launch(cloud), launch(cloud)
    command_id = send(cloud, first, "echo one")
    wait(cloud, command_id, first)
    ssm = cloud.client("ssm")
    invocations = ssm.list_command_invocations(CommandId=command_id, Details=True)["CommandInvocations"]
    assert [i["InstanceId"] for i in invocations] == [first]
    plugin = invocations[0]["CommandPlugins"][0]
    assert (plugin["Name"], plugin["Status"], plugin["ResponseCode"], plugin["Output"]) == (
        "aws:runShellScript",
        "Success",
        0,
        "one\n",
    )
    assert ssm.list_command_invocations(CommandId=command_id)["CommandInvocations"][0]["CommandPlugins"] == []
    with pytest.raises(ClientError) as err:
        ssm.get_command_invocation(CommandId=command_id, InstanceId=second)
    assert err.value.response["Error"]["Code"] == "InvocationDoesNotExist"
    command = ssm.list_commands(InstanceId=first)["Commands"][0]
    assert (command["CommandId"], command["TargetCount"], command["CompletedCount"]) == (command_id, 1, 1)


def test_bad_requests_are_refused_and_other_actions_reach_moto(cloud: Sandbox) -> None:
    instance_id = launch(cloud)
    ssm = cloud.client("ssm")
    with pytest.raises(ClientError) as err:
        ssm.send_command(InstanceIds=[instance_id], DocumentName="AWS-RunPowerShellScript", Parameters={})
    assert err.value.response["Error"]["Code"] == "InvalidDocument"
    with pytest.raises(ClientError) as err:
        ssm.send_command(InstanceIds=[instance_id], DocumentName="AWS-RunShellScript", Parameters={})
    assert err.value.response["Error"]["Code"] == "InvalidParameters"
    # Everything that is not run-command is moto's.
    ssm.put_parameter(Name="/trainctl/x", Value="1", Type="String")
    assert ssm.get_parameter(Name="/trainctl/x")["Parameter"]["Value"] == "1"


def test_instance_information_online_only_after_boot(cloud: Sandbox) -> None:
    ssm = cloud.client("ssm")
    cloud.boot_delay = 30.0  # read at every call: a slow boot without a slow test
    try:
        reply = cloud.client("ec2").run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="t3.micro")
        booting = reply["Instances"][0]["InstanceId"]
        assert ssm.describe_instance_information()["InstanceInformationList"] == []
        with pytest.raises(ClientError) as err:
            send(cloud, booting, "true")
        assert err.value.response["Error"]["Code"] == "InvalidInstanceId"
    finally:
        cloud.boot_delay = 0.2
    reply = cloud.client("ec2").run_instances(ImageId=AMI, MinCount=5, MaxCount=5, InstanceType="t3.micro")
    ids = [booting] + [i["InstanceId"] for i in reply["Instances"]]
    assert cloud.wait_for(lambda: all(online(cloud, i) for i in ids), timeout=10)
    pages = ssm.get_paginator("describe_instance_information").paginate(PaginationConfig={"PageSize": 5})
    listed = [i for page in pages for i in page["InstanceInformationList"]]
    assert sorted(i["InstanceId"] for i in listed) == sorted(ids)
    assert {i["PingStatus"] for i in listed} == {"Online"}
    legacy = ssm.describe_instance_information(
        InstanceInformationFilterList=[{"key": "InstanceIds", "valueSet": [ids[0]]}]
    )["InstanceInformationList"]
    assert [i["InstanceId"] for i in legacy] == [ids[0]]
