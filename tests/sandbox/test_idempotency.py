"""The sandbox honours what AWS guarantees for retried and concurrent writes: RunInstances' and CreateVolume's
ClientToken (one resource per token, a mismatch refused), and S3 conditional writes (IfNoneMatch/IfMatch, atomic).
Checked in the cloud's state: what instances, volumes and objects exist afterwards."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError
from botocore.httpsession import URLLib3Session

from blocks.aws import load_account
from core import tags as t
from sandbox import Sandbox
from tasks.ec2_instances import LaunchRequest, launch_instance
from tests.conftest import exported_sandbox

AMI = "ami-12345678"


@pytest.fixture(scope="module")
def sandbox_module() -> Iterator[Sandbox]:
    """Exported, so the product's tasks (launch_instance) talk to this sandbox too."""
    with exported_sandbox() as cloud:
        yield cloud


def _run(ec2: Any, token: str, instance_type: str = "t3.micro") -> dict[str, Any]:
    return dict(ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType=instance_type, ClientToken=token))


def _instances(ec2: Any) -> list[str]:
    reservations = ec2.describe_instances()["Reservations"]
    return [i["InstanceId"] for r in reservations for i in r["Instances"] if i["State"]["Name"] != "terminated"]


def _code(call: Callable[[], Any]) -> tuple[str, int]:
    with pytest.raises(ClientError) as exc:
        call()
    return str(exc.value.response["Error"]["Code"]), int(exc.value.response["ResponseMetadata"]["HTTPStatusCode"])


def test_a_repeated_token_gets_the_first_answer_and_other_parameters_are_refused(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    first = _run(ec2, "launch-1")
    again = _run(ec2, "launch-1")
    assert again["ReservationId"] == first["ReservationId"]
    assert [i["InstanceId"] for i in again["Instances"]] == [i["InstanceId"] for i in first["Instances"]]
    assert _instances(ec2) == [first["Instances"][0]["InstanceId"]]
    assert _code(lambda: _run(ec2, "launch-1", instance_type="t3.large")) == ("IdempotentParameterMismatch", 400)
    other = _run(ec2, "launch-2")  # another token: another instance
    assert sorted(_instances(ec2)) == sorted([first["Instances"][0]["InstanceId"], other["Instances"][0]["InstanceId"]])

    def volume(size: int) -> str:
        return str(ec2.create_volume(AvailabilityZone="us-east-1a", Size=size, ClientToken="vol-1")["VolumeId"])

    assert volume(10) == volume(10)
    assert _code(lambda: volume(20)) == ("IdempotentParameterMismatch", 400)
    data = [v for v in ec2.describe_volumes()["Volumes"] if not v["Attachments"]]  # root volumes are attached
    assert [(v["Size"]) for v in data] == [10]


def test_a_refused_launch_records_nothing_and_a_terminated_ones_token_is_refused(cloud: Sandbox) -> None:
    ec2 = cloud.client("ec2")
    cloud.set_capacity("us-east-1a", "t3.micro", available=False)
    assert _code(lambda: _run(ec2, "after-refusal"))[0] == "InsufficientInstanceCapacity"
    cloud.set_capacity("us-east-1a", "t3.micro", available=True)
    instance_id = _run(ec2, "after-refusal")["Instances"][0]["InstanceId"]  # the retry does launch
    assert _instances(ec2) == [instance_id]
    ec2.terminate_instances(InstanceIds=[instance_id])
    assert _code(lambda: _run(ec2, "after-refusal")) == ("IdempotentInstanceTerminated", 400)
    assert _instances(ec2) == []


def test_concurrent_launches_with_one_token_make_one_instance(cloud: Sandbox) -> None:
    start = threading.Barrier(6)

    def launch(_: int) -> str:
        ec2 = cloud.client("ec2")
        start.wait(timeout=30)
        return str(_run(ec2, "together")["Instances"][0]["InstanceId"])

    with ThreadPoolExecutor(6) as pool:
        ids = set(pool.map(launch, range(6)))
    assert len(ids) == 1
    assert _instances(cloud.client("ec2")) == list(ids)


def _request(key: str) -> LaunchRequest:
    return LaunchRequest(name="idem", role=t.Role.TRAIN, idempotency_key=key, instance_type="t3.micro")


def test_launch_instance_at_the_same_moment_twice_makes_one_instance(cloud: Sandbox) -> None:
    # Both calls get past the task's own look-up (no instance yet) before either sends RunInstances.
    ec2 = load_account(None).client("ec2")
    both_looked = threading.Barrier(2)

    def handler(**_: Any) -> None:  # returning nothing: botocore then sends the call
        both_looked.wait(timeout=30)

    ec2.meta.events.register("before-call.ec2.RunInstances", handler)
    try:
        with ThreadPoolExecutor(2) as pool:
            launched = list(pool.map(lambda _: launch_instance.fn(_request("same-moment")), range(2)))
    finally:
        ec2.meta.events.unregister("before-call.ec2.RunInstances", handler)
    assert launched[0].id == launched[1].id
    assert _instances(cloud.client("ec2")) == [launched[0].id]


def test_launch_instance_whose_answer_is_lost_gets_the_same_instance_on_the_retry(cloud: Sandbox) -> None:
    # The first RunInstances reaches the sandbox, then its answer is lost (a read timeout); botocore sends the same
    # request again, same ClientToken.
    ec2 = load_account(None).client("ec2")
    sent: list[str] = []

    def lose_first_answer(request: Any, **_: Any) -> Any:
        sent.append(request.url)
        if len(sent) == 1:
            URLLib3Session().send(request)
            raise ReadTimeoutError(endpoint_url=request.url)
        return None

    ec2.meta.events.register("before-send.ec2.RunInstances", lose_first_answer)
    try:
        launched = launch_instance.fn(_request("lost-answer"))
    finally:
        ec2.meta.events.unregister("before-send.ec2.RunInstances", lose_first_answer)
    assert len(sent) == 2
    assert _instances(cloud.client("ec2")) == [launched.id]


def _body(s3: Any, key: str) -> bytes | None:
    try:
        return bytes(s3.get_object(Bucket="claims", Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def test_conditional_puts_as_s3_answers_them(cloud: Sandbox) -> None:
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket="claims")
    s3.put_object(Bucket="claims", Key="job", Body=b"v1", IfNoneMatch="*")
    assert _code(lambda: s3.put_object(Bucket="claims", Key="job", Body=b"v2", IfNoneMatch="*")) == (
        "PreconditionFailed",
        412,
    )
    etag = s3.head_object(Bucket="claims", Key="job")["ETag"]
    assert _code(lambda: s3.put_object(Bucket="claims", Key="job", Body=b"v2", IfMatch='"0" * 32')) == (
        "PreconditionFailed",
        412,
    )
    assert _body(s3, "job") == b"v1"
    assert _code(lambda: s3.put_object(Bucket="claims", Key="none", Body=b"x", IfMatch=etag)) == ("NoSuchKey", 404)
    assert _body(s3, "none") is None
    s3.put_object(Bucket="claims", Key="job", Body=b"v2", IfMatch=etag)
    assert _body(s3, "job") == b"v2"


def test_complete_multipart_upload_honours_if_match(cloud: Sandbox) -> None:
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket="claims")
    s3.put_object(Bucket="claims", Key="job", Body=b"v1")
    etag = s3.head_object(Bucket="claims", Key="job")["ETag"]

    def complete(key: str, if_match: str) -> None:
        upload = s3.create_multipart_upload(Bucket="claims", Key=key)["UploadId"]
        part = s3.upload_part(Bucket="claims", Key=key, UploadId=upload, PartNumber=1, Body=b"mp")
        parts = {"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
        s3.complete_multipart_upload(Bucket="claims", Key=key, UploadId=upload, MultipartUpload=parts, IfMatch=if_match)

    assert _code(lambda: complete("job", '"' + "0" * 32 + '"')) == ("PreconditionFailed", 412)
    assert _code(lambda: complete("none", etag)) == ("NoSuchKey", 404)
    assert (_body(s3, "job"), _body(s3, "none")) == (b"v1", None)
    complete("job", etag)
    assert _body(s3, "job") == b"mp"


def test_concurrent_claims_of_one_key_let_exactly_one_win(cloud: Sandbox) -> None:
    cloud.client("s3").create_bucket(Bucket="claims")
    writers = 8
    start = threading.Barrier(writers)

    def claim(n: int) -> bool:
        s3 = cloud.client("s3")
        start.wait(timeout=30)
        try:
            s3.put_object(Bucket="claims", Key="jobs/llm.json", Body=f"writer-{n}".encode(), IfNoneMatch="*")
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "PreconditionFailed"
            return False
        return True

    with ThreadPoolExecutor(writers) as pool:
        won = list(pool.map(claim, range(writers)))
    assert won.count(True) == 1
    assert _body(cloud.client("s3"), "jobs/llm.json") == f"writer-{won.index(True)}".encode()
