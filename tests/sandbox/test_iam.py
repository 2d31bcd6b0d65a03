"""IAM enforcement in the sandbox (sandbox/iam.py): off by default, root keys unrestricted, other keys held to
their policies with AWS's error codes, per-key DeleteObjects, the implied CreateTags and PassRole checks, and
instances running as their profile's role."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from sandbox import Sandbox
from sandbox import iam as sandbox_iam

TAGS = [{"ResourceType": "volume", "Tags": [{"Key": "trainctl:managed", "Value": "true"}]}]


@pytest.fixture(scope="module")
def cloud() -> Iterator[Sandbox]:
    with Sandbox(boot_delay=0.1, iam=True) as sandbox:
        yield sandbox
    assert not sandbox_iam.enforcing()  # stopping the sandbox lifts enforcement for the next one


def _user(cloud: Sandbox, name: str, statements: list[dict[str, Any]]) -> dict[str, str]:
    iam = cloud.client("iam")
    iam.create_user(UserName=name)
    policy = {"Version": "2012-10-17", "Statement": statements}
    iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}


def _as(cloud: Sandbox, service: str, keys: dict[str, str]) -> Any:
    return boto3.client(
        service,
        endpoint_url=cloud.endpoint_url,
        region_name=cloud.region,
        config=Config(retries={"total_max_attempts": 1}),
        **keys,
    )


def _code(call: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value.response["Error"]["Code"], caught.value.response["Error"]["Message"]


def test_policies_hold_for_users_and_not_for_root(cloud: Sandbox) -> None:
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket="jobs")
    s3.put_object(Bucket="jobs", Key="trainctl/a", Body=b"a")
    s3.put_object(Bucket="jobs", Key="other/b", Body=b"b")
    keys = _user(
        cloud,
        "u1",
        [
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": "arn:aws:s3:::jobs"},
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:DeleteObject"],
                "Resource": "arn:aws:s3:::jobs/trainctl/*",
            },
            {"Effect": "Allow", "Action": ["ec2:DescribeVolumes"], "Resource": "arn:aws:ec2:*:*:volume/*"},
        ],
    )
    user_s3, user_ec2, user_ssm = (_as(cloud, s, keys) for s in ("s3", "ec2", "ssm"))
    user_s3.head_bucket(Bucket="jobs")  # authorized as s3:ListBucket, as on AWS
    assert user_s3.get_object(Bucket="jobs", Key="trainctl/a")["Body"].read() == b"a"
    code, message = _code(lambda: user_s3.get_object(Bucket="jobs", Key="other/b"))
    assert code == "AccessDenied" and 's3:GetObject on resource: "arn:aws:s3:::jobs/other/b"' in message
    # DeleteObjects is judged per key: one key outside the grant refuses the batch, and nothing is deleted.
    both = {"Objects": [{"Key": "trainctl/a"}, {"Key": "other/b"}]}
    errors = user_s3.delete_objects(Bucket="jobs", Delete=both).get("Errors", [])
    assert {e["Code"] for e in errors} == {"AccessDenied"}
    assert {o["Key"] for o in s3.list_objects_v2(Bucket="jobs")["Contents"]} == {"trainctl/a", "other/b"}
    assert user_s3.delete_objects(Bucket="jobs", Delete={"Objects": [{"Key": "trainctl/a"}]}).get("Errors") is None
    assert {o["Key"] for o in s3.list_objects_v2(Bucket="jobs")["Contents"]} == {"other/b"}
    # Outside S3, by action (the ARN pattern is taken to match); each service's own denial code.
    assert user_ec2.describe_volumes()["Volumes"] == []
    code, message = _code(lambda: user_ec2.create_volume(AvailabilityZone="us-east-1a", Size=1))
    assert code == "UnauthorizedOperation" and "ec2:CreateVolume" in message
    code, message = _code(lambda: user_ssm.describe_instance_information())  # answered by the sandbox, not moto
    assert code == "AccessDeniedException" and "ssm:DescribeInstanceInformation" in message
    assert _as(cloud, "sts", keys).get_caller_identity()["Arn"].endswith(":user/u1")  # always allowed
    # A wrong secret is a bad signature; root is never restricted.
    forged = {**keys, "aws_secret_access_key": "wrong"}
    assert _code(lambda: _as(cloud, "ec2", forged).describe_volumes())[0] == "AuthFailure"
    cloud.client("ec2").create_volume(AvailabilityZone="us-east-1a", Size=1)


def test_tags_at_creation_and_instance_profiles_need_their_own_grants(cloud: Sandbox) -> None:
    iam = cloud.client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }
    role = iam.create_role(RoleName="worker", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    reads = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}
    iam.put_role_policy(RoleName="worker", PolicyName="reads", PolicyDocument=json.dumps(reads))
    iam.create_instance_profile(InstanceProfileName="worker")
    iam.add_role_to_instance_profile(InstanceProfileName="worker", RoleName="worker")
    ec2_only = [
        {"Effect": "Allow", "Action": ["ec2:CreateVolume", "ec2:RunInstances", "ec2:Describe*"], "Resource": "*"}
    ]
    user = _as(cloud, "ec2", _user(cloud, "u2", ec2_only))
    user.create_volume(AvailabilityZone="us-east-1a", Size=1)
    code, message = _code(lambda: user.create_volume(AvailabilityZone="us-east-1a", Size=1, TagSpecifications=TAGS))
    assert code == "UnauthorizedOperation" and "ec2:CreateTags" in message
    launch = {"ImageId": "ami-12c6146b", "InstanceType": "t3.micro", "MinCount": 1, "MaxCount": 1}
    code, message = _code(lambda: user.run_instances(**launch, IamInstanceProfile={"Name": "worker"}))
    assert code == "UnauthorizedOperation" and f'iam:PassRole on resource: "{role["Arn"]}"' in message
    assert all(not r["Instances"] for r in cloud.client("ec2").describe_instances()["Reservations"])

    # Launched with the profile (by root here), the instance's processes hold the role's session, not root's keys.
    instance = cloud.client("ec2").run_instances(**launch, IamInstanceProfile={"Name": "worker"})["Instances"][0]
    env = cloud.runtime.env_for(instance["InstanceId"])
    assert env["AWS_ACCESS_KEY_ID"] != cloud.env["AWS_ACCESS_KEY_ID"] and env["AWS_SESSION_TOKEN"]
    role_keys = {k.lower(): env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    as_role = _as(cloud, "s3", role_keys)
    assert _code(lambda: as_role.create_bucket(Bucket="not-allowed"))[0] == "AccessDenied"
    assert "not-allowed" not in {b["Name"] for b in cloud.client("s3").list_buckets()["Buckets"]}

    # It comes Online in SSM only while its role lets the SSM agent register and receive commands.
    agent = {"Effect": "Allow", "Action": ["ssm:UpdateInstanceInformation", "ec2messages:GetMessages"], "Resource": "*"}
    grant = {"Version": "2012-10-17", "Statement": [agent]}
    iam.put_role_policy(RoleName="worker", PolicyName="agent", PolicyDocument=json.dumps(grant))
    assert cloud.wait_for(lambda: cloud.runtime.is_online(instance["InstanceId"]), timeout=10)
    iam.delete_role_policy(RoleName="worker", PolicyName="agent")
    assert not cloud.runtime.is_online(instance["InstanceId"])
    listed = cloud.client("ssm").describe_instance_information()["InstanceInformationList"]
    assert instance["InstanceId"] not in {i["InstanceId"] for i in listed}


def _control(cloud: Sandbox, payload: dict[str, Any]) -> Any:
    url = f"{cloud.endpoint_url}/_sandbox/iam"  # always the local sandbox's http endpoint
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        return json.loads(answer.read())["result"]


def test_enforcement_switches_off_and_on_through_the_control_route(cloud: Sandbox) -> None:
    unrelated = [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::elsewhere/*"}]
    user = _as(cloud, "ec2", _user(cloud, "u3", unrelated))
    assert _code(lambda: user.describe_volumes())[0] == "UnauthorizedOperation"
    try:
        assert _control(cloud, {"enforce": False}) == {"enforce": False}
        assert isinstance(user.describe_volumes()["Volumes"], list)
    finally:
        assert _control(cloud, {"enforce": True}) == {"enforce": True}
    assert _code(lambda: user.describe_volumes())[0] == "UnauthorizedOperation"
