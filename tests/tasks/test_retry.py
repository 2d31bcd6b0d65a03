"""Retry classification over real botocore error shapes, translation into trainctl errors, the task options."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ReadTimeoutError,
    WaiterError,
)
from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.states import Completed, Failed
from prefect.task_engine import SyncTaskRunEngine

from blocks.aws import AwsAccount, clear_client_cache
from core.errors import AwsError, CapacityRefusedError, ConfigurationError, EndpointUnreachableError, UsageError
from tasks.aws import aws_task, is_transient, retry_transient, translate


def client_error(code: str, status: int, operation: str = "DescribeVolumes", message: str = "boom") -> ClientError:
    """The response dict botocore's parsers build for an error (EC2 query protocol shape)."""
    response: dict[str, Any] = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {
            "RequestId": "5f2bd2b9-0b1a-4b37-8f0f-4e0e0c2f8b8a",
            "HTTPStatusCode": status,
            "HTTPHeaders": {"content-type": "text/xml;charset=UTF-8", "server": "AmazonEC2"},
            "RetryAttempts": 2,
        },
    }
    return ClientError(response, operation)


TRANSIENT = [
    ("ThrottlingException", 400),
    ("Throttling", 400),
    ("RequestLimitExceeded", 503),
    ("SlowDown", 503),
    ("InternalError", 500),
    ("InsufficientInstanceCapacity", 500),
    ("ServiceUnavailable", 503),
    ("SomethingNew", 502),  # any 5xx
]
PERMANENT = [
    ("InvalidVolume.NotFound", 400),
    ("InvalidInstanceID.NotFound", 400),
    ("InvalidParameterValue", 400),
    ("UnauthorizedOperation", 403),
    ("AccessDenied", 403),
    ("InvalidVolume.ZoneMismatch", 400),
    ("VolumeInUse", 400),
]


@pytest.mark.parametrize(("code", "status"), TRANSIENT)
def test_transient_codes_retried(code: str, status: int) -> None:
    exc = client_error(code, status)
    assert is_transient(exc)
    # Still transient after translation: the code and status survive, and so does pickling (Prefect pickles).
    with pytest.raises(AwsError) as info, translate("ec2:DescribeVolumes"):
        raise exc
    assert info.value.code == code
    assert is_transient(info.value)
    assert is_transient(pickle.loads(pickle.dumps(info.value)))  # noqa: S301 - our own bytes


def test_a_capacity_refusal_is_the_callers_to_retry_not_the_tasks() -> None:
    """Spot refused (the launch task's CapacityRefusedError): core.recovery decides on-demand, another AZ or later;
    a blind task retry would only delay that decision. It stays an AwsError with EC2's code, through pickling."""
    refused = CapacityRefusedError(
        "RunInstances", "InsufficientInstanceCapacity", "none", capacity="spot", availability_zone="us-east-1a"
    )
    again = pickle.loads(pickle.dumps(refused))  # noqa: S301 - our own bytes
    assert not is_transient(refused) and not is_transient(again)
    assert (again.code, again.capacity, again.availability_zone) == (
        "InsufficientInstanceCapacity",
        "spot",
        "us-east-1a",
    )


@pytest.mark.parametrize(("code", "status"), PERMANENT)
def test_permanent_codes_fail_fast_with_code(code: str, status: int) -> None:
    exc = client_error(code, status)
    assert not is_transient(exc)
    with pytest.raises(AwsError) as info, translate("ec2:DeleteVolume"):
        raise exc
    assert not is_transient(info.value)
    assert code in str(info.value) and "ec2:DeleteVolume" in str(info.value)
    assert info.value.fix


def test_fix_sentences_per_family() -> None:
    def fix(code: str, status: int = 400) -> str:
        with pytest.raises(AwsError) as info, translate("ec2:AttachVolume"):
            raise client_error(code, status, "AttachVolume")
        return info.value.fix or ""

    assert "already be deleted" in fix("InvalidVolume.NotFound")
    assert "ec2:AttachVolume" in fix("UnauthorizedOperation", 403)
    assert "different availability zones" in fix("InvalidVolume.ZoneMismatch")
    assert "detach" in fix("VolumeInUse")
    assert "parameter" in fix("InvalidParameterValue")
    assert "quota" in fix("VcpuLimitExceeded")
    assert "capacity" in fix("InsufficientInstanceCapacity", 500)


@pytest.mark.parametrize(
    ("code", "sentence"),
    [
        ("InvalidSnapshot.NotFound", "the snapshot does not exist (AWS sent no message)"),
        ("InvalidInstanceID.NotFound", "the instance ID does not exist (AWS sent no message)"),
        ("SomethingElse", "AWS sent no message"),
    ],
)
def test_an_error_without_a_message_gets_a_sentence_not_none(code: str, sentence: str) -> None:
    # EC2 sends InvalidSnapshot.NotFound with an empty message; botocore's str() of it ends in ": None".
    with pytest.raises(AwsError) as info, translate("DescribeSnapshots"):
        raise client_error(code, 400, "DescribeSnapshots", message="")
    assert str(info.value).startswith(f"AWS DescribeSnapshots failed with {code}: {sentence}. ")
    assert "None" not in str(info.value)


def test_connection_errors_transient_then_endpoint_unreachable() -> None:
    errors = [
        EndpointConnectionError(endpoint_url="http://127.0.0.1:9/"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:9/"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:9/"),
    ]
    for exc in errors:
        assert is_transient(exc)
        with pytest.raises(EndpointUnreachableError) as info, translate("ec2:DescribeVolumes"):
            raise exc
        assert "http://127.0.0.1:9/" in str(info.value) and "AWS_ENDPOINT_URL" in str(info.value)
        assert is_transient(info.value)


def test_configuration_errors_translated() -> None:
    with pytest.raises(ConfigurationError, match="credentials"), translate("ec2:DescribeVolumes"):
        raise NoCredentialsError()
    with pytest.raises(ConfigurationError, match="AWS_REGION"), translate("ec2:DescribeVolumes"):
        raise NoRegionError()
    assert not is_transient(ConfigurationError("x"))
    assert not is_transient(ValueError("x"))


def test_waiter_error_keeps_the_code() -> None:
    last = {"Error": {"Code": "InvalidInstanceID.NotFound", "Message": "gone"}}
    with pytest.raises(AwsError) as info, translate("wait instance_running"):
        raise WaiterError(
            name="InstanceRunning", reason="Waiter encountered a terminal failure state", last_response=last
        )
    assert info.value.code == "InvalidInstanceID.NotFound"
    with pytest.raises(AwsError) as info, translate("wait instance_running"):
        raise WaiterError(name="InstanceRunning", reason="Max attempts exceeded", last_response={})
    assert info.value.code == "WaiterTimeout"


def test_translate_is_a_decorator_and_passes_our_errors() -> None:
    @translate("ec2:DescribeVolumes")
    def call() -> None:
        raise client_error("AccessDenied", 403)

    with pytest.raises(AwsError, match="AccessDenied"):
        call()
    with pytest.raises(UsageError, match="mine"), translate("x"):
        raise UsageError("mine")


@pytest.mark.parametrize(
    ("operation", "message", "grant"),
    [
        # AWS's message names the IAM action: that is what to grant (HeadBucket is authorized as s3:ListBucket).
        (
            "HeadBucket",
            "User: arn:aws:iam::1:user/u is not authorized to perform: s3:ListBucket on resource",
            "s3:ListBucket",
        ),
        ("ec2:RunInstances", "You are not authorized to perform this operation.", "ec2:RunInstances"),
        ("PutObject", "Access Denied", "the permission for PutObject"),
    ],
)
def test_access_denied_fix_names_the_action_to_grant(operation: str, message: str, grant: str) -> None:
    with pytest.raises(AwsError) as info, translate(operation):
        raise client_error("AccessDenied", 403, message=message)
    assert info.value.fix is not None and info.value.fix.startswith(f"Grant {grant} to the identity in use")


@aws_task(name="probe", tags=["aws-ec2"])
def probe(code: str, status: int) -> None:
    raise client_error(code, status)


def test_task_options() -> None:
    assert probe.retries == 4
    assert probe.retry_delay_seconds == [1, 2, 4, 8]  # exponential_backoff(backoff_factor=1)
    assert probe.retry_jitter_factor == 0.5
    assert probe.cache_policy.__class__.__name__ == "_None"  # NO_CACHE
    assert probe.tags == {"aws-ec2"}
    assert probe.retry_condition_fn is retry_transient
    # The body is translated: botocore errors leave the task as trainctl errors.
    with pytest.raises(AwsError, match=r"InvalidVolume\.NotFound"):
        probe.fn("InvalidVolume.NotFound", 400)
    assert aws_task(name="x", retries=1)(lambda: None).retries == 1


def test_the_prefect_task_is_built_on_first_use_and_kept() -> None:
    lazy = aws_task(name="lazy", tags=["aws-s3"])(lambda x: x * 2)
    assert lazy._task is None and lazy.fn(2) == 4  # the plain function needs no Prefect task
    built = lazy.task
    assert isinstance(built, Task) and lazy.task is built and lazy._task is built
    assert (built.name, built.tags, built.retries) == ("lazy", {"aws-s3"}, 4)
    assert lazy.with_options(retries=0).retries == 0 and built.retries == 4


def _task_run() -> TaskRun:
    return TaskRun(task_key="probe", dynamic_key="0", name="probe-0")


def test_retry_condition_reads_the_failed_state() -> None:
    task_run = _task_run()
    assert retry_transient(probe.task, task_run, Failed(data=client_error("Throttling", 400)))
    assert not retry_transient(probe.task, task_run, Failed(data=client_error("InvalidVolume.NotFound", 400)))
    assert not retry_transient(probe.task, task_run, Completed(data=1))


@pytest.mark.parametrize(
    ("code", "status", "retried"),
    [
        ("ThrottlingException", 400, True),
        ("InvalidVolume.NotFound", 400, False),
        ("InternalError", 500, True),
        ("AccessDenied", 403, False),
    ],
)
def test_prefect_engine_asks_our_condition(code: str, status: int, retried: bool) -> None:
    # Prefect's own retry decision (SyncTaskRunEngine.can_retry), without a server: it only calls a
    # retry_condition_fn that passes inspect.isfunction, so this proves ours is wired the way Prefect runs it.
    engine = SyncTaskRunEngine(task=probe.task, parameters={"code": code, "status": status})
    engine.task_run = _task_run()
    with pytest.raises(AwsError) as info:
        probe.fn(code, status)
    assert engine.can_retry(info.value) is retried
    assert engine.can_retry(client_error(code, status)) is retried


def test_unreachable_endpoint_through_translate(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_client_cache()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    aws = AwsAccount(region="us-east-1", endpoint_url="http://127.0.0.1:9", connect_timeout=0.5, max_attempts=1)
    with pytest.raises(EndpointUnreachableError) as info, translate("ec2:DescribeVolumes"):
        aws.client("ec2").describe_volumes()
    assert "127.0.0.1:9" in str(info.value)
    assert info.value.exit_code == 1
