"""run_script's SendCommand is carried out once: a lost answer is looked up before anything is sent again, a
throttled call (refused by AWS) is sent again. Counted on the instance: each run appends a line to a file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from blocks.aws import load_account
from core import tags as t
from core.shell import on_instance
from sandbox import Sandbox
from tasks.ec2_instances import LaunchRequest, launch_instance
from tasks.ssm import run_script, wait_online
from tests.conftest import exported_sandbox

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def cloud() -> Iterator[Sandbox]:
    with exported_sandbox() as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def instance(cloud: Sandbox) -> str:
    launched = launch_instance.fn(
        LaunchRequest(name="ssm", role=t.Role.TRAIN, idempotency_key="ssm-once", instance_type="t3.micro")
    )
    wait_online.fn(launched.id)
    return launched.id


def runs(cloud: Sandbox, instance: str, name: str) -> int:
    path = Path(cloud.runtime.instance_root(instance)) / "tmp" / name
    return len(path.read_text().splitlines()) if path.exists() else 0


def script(name: str) -> list[str]:
    return [f"mkdir -p {on_instance('/tmp')}", f"echo ran >> {on_instance('/tmp/' + name)}"]


def flaky_send(monkeypatch: pytest.MonkeyPatch, failure: Exception, *, carried_out: bool) -> list[int]:
    """The first SendCommand fails with `failure`, after (carried_out) or instead of reaching the service."""
    client = load_account(None).client("ssm", retries=False)
    real = client.send_command
    calls: list[int] = []

    def send(**request: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            if carried_out:
                real(**request)
            raise failure
        return real(**request)

    monkeypatch.setattr(client, "send_command", send)
    return calls


def test_a_lost_answer_is_looked_up_not_sent_again(
    cloud: Sandbox, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = flaky_send(monkeypatch, ReadTimeoutError(endpoint_url="http://ssm"), carried_out=True)
    result = run_script(instance, script("lost"), timeout_s=60)
    assert result.ok and len(calls) == 1 and runs(cloud, instance, "lost") == 1
    listed = cloud.client("ssm").list_commands(CommandId=result.command_id)["Commands"]
    assert len(listed) == 1


def test_a_failure_before_the_service_and_a_throttled_call_are_sent_again(
    cloud: Sandbox, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = flaky_send(monkeypatch, ReadTimeoutError(endpoint_url="http://ssm"), carried_out=False)
    assert run_script(instance, script("dropped"), timeout_s=60).ok
    assert len(calls) == 2 and runs(cloud, instance, "dropped") == 1
    monkeypatch.undo()
    answer = {"Code": "ThrottlingException", "Message": "Rate exceeded"}
    throttled = ClientError({"Error": answer, "ResponseMetadata": {"HTTPStatusCode": 400}}, "SendCommand")
    calls = flaky_send(monkeypatch, throttled, carried_out=False)
    assert run_script(instance, script("throttled"), timeout_s=60).ok
    assert len(calls) == 2 and runs(cloud, instance, "throttled") == 1


def test_botocore_does_not_resend_send_command_by_itself() -> None:
    config = load_account(None).client("ssm", retries=False).meta.config
    assert config.retries["total_max_attempts"] == 1
    assert load_account(None).client("ssm").meta.config.retries["total_max_attempts"] > 1
