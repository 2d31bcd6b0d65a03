"""sample_gpus and the one-command-for-many SSM runner under it, in the sandbox: batches of SendCommand, an instance
that goes offline between the listing and the send, a command over its timeout, output and errors. What each
instance was sent is read back from SSM's own command list."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import tasks.ssm as ssm_module
from sandbox import Sandbox
from tasks.gpu import sample_gpus
from tasks.ssm import run_script_on_instances
from tests.conftest import exported_sandbox
from tests.sandbox.test_ssm import launch

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def cloud() -> Iterator[Sandbox]:
    with exported_sandbox() as sandbox:
        yield sandbox


def _sent(cloud: Sandbox, comment: str) -> list[list[str]]:
    pages = cloud.client("ssm").get_paginator("list_commands").paginate()
    return [c["InstanceIds"] for page in pages for c in page["Commands"] if c["Comment"].startswith(comment)]


def test_batches_of_send_command_and_an_instance_gone_offline_before_the_send(
    cloud: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, going = (launch(cloud, InstanceType="g5.xlarge") for _ in range(3))
    cloud.set_gpu_utilization(first, 40)
    monkeypatch.setattr(ssm_module, "SEND_LIMIT", 2)
    real_online = ssm_module.online_instances
    listed: list[list[str]] = []

    def online_then_gone(instance_ids: list[str], **kwargs: Any) -> list[str]:
        found = real_online(instance_ids, **kwargs)
        listed.append(found)
        if len(listed) == 1:  # listed Online, then stopped before SendCommand reaches it
            cloud.client("ec2").stop_instances(InstanceIds=[going])
            assert cloud.wait_for(lambda: going not in real_online([going]), 10)
        return found

    monkeypatch.setattr(ssm_module, "online_instances", online_then_gone)
    readings = sample_gpus.fn([going, first, second, first])
    assert [(r.instance_id, r.state, r.busiest) for r in readings] == [
        (going, "no-answer", None),
        (first, "ok", 40),
        (second, "ok", 0),
    ]
    # Two per SendCommand; the first batch refused as a whole for the stopped one, then sent to the other.
    assert listed == [[going, first, second], [first]]
    assert sorted(_sent(cloud, "trainctl: GPU sample")) == sorted([[first], [second]])


def test_an_invocation_over_its_timeout_is_reported_timed_out_and_output_is_split(cloud: Sandbox) -> None:
    instance_id = launch(cloud)
    results = run_script_on_instances([instance_id], ["sleep 5", "echo late"], timeout_s=1, comment="slow")
    slow = results[instance_id]
    assert (slow.status, slow.status_details, slow.ok) == ("TimedOut", "ExecutionTimedOut", False)
    quick = run_script_on_instances([instance_id], ["echo quick", "echo oops >&2"], timeout_s=20, comment="quick")
    result = quick[instance_id]
    assert (result.status, result.exit_code, result.stdout, result.stderr) == ("Success", 0, "quick\n", "oops\n")
