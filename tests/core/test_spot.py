"""core.spot: being interrupted / was interrupted, from the instance state, its StateReason and its spot request's
status code (the codes and their states as the EC2 User Guide's "Spot request status" lists them)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.models import Instance
from core.spot import SpotInterruption, spot_interruption

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
BEING = SpotInterruption.BEING_INTERRUPTED
WAS = SpotInterruption.INTERRUPTED
NONE = SpotInterruption.NONE


def spot(state: str, request_status: str | None, reason: str | None = None, *, lifecycle: str = "spot") -> Instance:
    return Instance(
        id="i-0123456789abcdef0",
        created_at=NOW,
        state=state,
        instance_type="g5.xlarge",
        lifecycle=lifecycle,
        spot_request_id="sir-abcdefgh" if lifecycle == "spot" else None,
        spot_request_status=request_status,
        state_reason_code=reason,
    )


@pytest.mark.parametrize(
    ("state", "status", "reason", "expected"),
    [
        # Running normally.
        ("running", "fulfilled", None, NONE),
        ("pending", "fulfilled", None, NONE),
        # The notice: price interruption marks the request; capacity interruption sets its final code at once
        # while the instance keeps running for its two minutes.
        ("running", "marked-for-termination", None, BEING),
        ("running", "instance-terminated-no-capacity", None, BEING),
        ("running", "marked-for-stop", None, BEING),
        # EC2 took the capacity back.
        ("shutting-down", "instance-terminated-by-price", "Server.SpotInstanceTermination", WAS),
        ("terminated", "instance-terminated-by-price", "Server.SpotInstanceTermination", WAS),
        ("terminated", "instance-terminated-no-capacity", "Server.SpotInstanceTermination", WAS),
        ("terminated", "instance-terminated-capacity-oversubscribed", None, WAS),
        ("stopped", "instance-stopped-no-capacity", "Server.SpotInstanceShutdown", WAS),
        # The request record gone (or not read): the StateReason alone says it.
        ("terminated", None, "Server.SpotInstanceTermination", WAS),
        # The notice was given, then the instance went down before the request showed the final code.
        ("shutting-down", "marked-for-termination", None, WAS),
        # Ended by its user, or by itself (the agent's shutdown at the end of a job): no interruption.
        ("terminated", "instance-terminated-by-user", "Client.UserInitiatedShutdown", NONE),
        ("terminated", "instance-terminated-by-user", "Client.InstanceInitiatedShutdown", NONE),
        ("stopped", "instance-stopped-by-user", "Client.UserInitiatedShutdown", NONE),
        ("running", "request-canceled-and-instance-running", None, NONE),
    ],
)
def test_spot_interruption_from_state_reason_and_request_status(
    state: str, status: str | None, reason: str | None, expected: SpotInterruption
) -> None:
    assert spot_interruption(spot(state, status, reason)) is expected


def test_on_demand_instances_are_never_interrupted() -> None:
    for state in ("running", "terminated"):
        assert spot_interruption(spot(state, None, "Client.UserInitiatedShutdown", lifecycle="on-demand")) is NONE
    assert spot_interruption(spot("terminated", None, None, lifecycle="on-demand")) is NONE


def test_the_request_status_defaults_to_unknown() -> None:
    built = Instance.from_aws(
        {"InstanceId": "i-1", "LaunchTime": NOW, "State": {"Name": "running"}, "InstanceLifecycle": "spot"}
    )
    assert built.spot_request_status is None
    assert spot_interruption(built) is NONE
