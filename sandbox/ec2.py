"""EC2 the way AWS answers it, where moto 5.2.5 does not: one registration point for the rule modules.

    sandbox/ec2_volumes.py      volume rules: attach/detach refusals (ZoneMismatch, VolumeInUse, IncorrectState,
                                device clashes), DescribeVolumes' NotFound; attaching/detaching/creating volumes,
                                pending snapshots
    sandbox/ec2_transitions.py  state transitions and their delays (`sandbox.transition_delay`), the timers
    sandbox/ec2_spot.py         spot: requests, interruptions, prices (DescribeSpotPriceHistory)
    sandbox/ec2_capacity.py     capacity: InsufficientInstanceCapacity, spot placement scores
    sandbox/ec2_common.py       what they share (refusals, filters, pages, time stamps)

This module keeps the instance hooks that cross those seams — RunInstances (capacity, then the spot max price;
the pending state, then the spot request record), TerminateInstances (the spot request's status, shutting-down)
and a shutdown from inside the instance — and `Ec2Rules`, the one object `sandbox.ec2` is: its public methods
(`set_capacity`, `spot_price`, `spot_requests`, `interrupt_spot`, `instance_initiated_shutdown`) are what tests,
benchmarks and the control surface use.

Client tokens (RunInstances, CreateVolume): see sandbox/idempotency.py, installed here after the rules above.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from moto.ec2.models.instances import StateReason
from werkzeug.wrappers import Response

from sandbox import idempotency
from sandbox.ec2_capacity import Capacity
from sandbox.ec2_common import backend, now
from sandbox.ec2_spot import SpotMarket
from sandbox.ec2_transitions import Transitions
from sandbox.ec2_volumes import VolumeRules, install_model_overrides
from sandbox.protocol import AwsRequest

if TYPE_CHECKING:
    from sandbox.server import Sandbox

INITIATED_SHUTDOWN_CODE = "Client.InstanceInitiatedShutdown"
INITIATED_SHUTDOWN_MESSAGE = "Client.InstanceInitiatedShutdown: Instance initiated shutdown"


class Ec2Rules:
    """The sandbox's EC2 layer over moto (see the module docstring). `sandbox.ec2` is this object."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.transitions = Transitions(sandbox)
        self.volumes = VolumeRules(sandbox, self.transitions)
        self.spot = SpotMarket(sandbox, self.transitions)
        self.capacity = Capacity(sandbox)

    # -- public API ------------------------------------------------------------------------------------------
    def set_capacity(
        self, availability_zone: str, instance_type: str, *, available: bool, spot_only: bool = False
    ) -> None:
        """Make RunInstances of `instance_type` in `availability_zone` fail (only spot ones with `spot_only`), or
        succeed again."""
        self.capacity.set_capacity(availability_zone, instance_type, available=available, spot_only=spot_only)

    def spot_price(self, availability_zone: str, instance_type: str, product_description: str = "Linux/UNIX") -> float:
        """The current spot price ($/hour) of a type in an AZ, as DescribeSpotPriceHistory shows it now."""
        return self.spot.spot_price(availability_zone, instance_type, product_description)

    def spot_requests(self) -> list[dict[str, Any]]:
        """A snapshot of every spot request record (for tests and the control surface)."""
        return self.spot.spot_requests()

    def interrupt_spot(
        self, instance_id: str, *, delay_seconds: float = 120.0, reason: str = "price"
    ) -> dict[str, Any]:
        """The IMDS notice now, termination with StateReason Server.SpotInstanceTermination after the delay
        (sandbox/ec2_spot.py)."""
        return self.spot.interrupt_spot(instance_id, delay_seconds=delay_seconds, reason=reason)

    def reset(self) -> None:
        """Forget spot requests and capacity rules; cancel every pending transition."""
        self.transitions.cancel()
        with self.sandbox.ec2_lock:
            self.capacity.reset()
            self.spot.reset()
            self.volumes.reset()

    def stop(self) -> None:
        self.transitions.cancel()

    def instance_initiated_shutdown(self, instance_id: str, region: str) -> str | None:
        """The instance ran `shutdown`/`poweroff`: stop or terminate it in moto as its
        InstanceInitiatedShutdownBehavior says (AWS's default: stop), with AWS's StateReason and the usual
        transition. Returns what happened ("stop" | "terminate"), None when it was not running. The caller ends the
        processes (the runtime)."""
        with self.sandbox.ec2_lock:
            instance = self.sandbox.ec2_backend(region).get_instance_by_id(instance_id)
            if instance is None or instance.state != "running":
                return None
            behavior = str(getattr(instance, "instance_initiated_shutdown_behavior", None) or "stop")
            # The model's own stop/terminate: DisableApiStop/Termination guard the API, not a shutdown from inside.
            if behavior == "terminate":
                instance.terminate()  # deletes DeleteOnTermination volumes, detaches the others
                request = self.spot.request_for(instance_id)
                if request is not None and request.state != "closed":
                    request.set_status("instance-terminated-by-user", "closed")
            else:
                instance.stop()
            instance.state_reason = StateReason(INITIATED_SHUTDOWN_MESSAGE, INITIATED_SHUTDOWN_CODE)
            instance._reason = f"User initiated ({now().strftime('%Y-%m-%d %H:%M:%S GMT')})"
            if self.transitions.delay > 0 and behavior == "terminate":
                self.transitions.shut_down_later(instance)
            elif self.transitions.delay > 0:
                self.transitions.begin(instance, "stopping", "stopped")
        return "terminate" if behavior == "terminate" else "stop"

    # -- hooks: instances ------------------------------------------------------------------------------------
    def _run_before(self, req: AwsRequest) -> Response | None:
        zone = self._launch_zone(req)
        instance_type = req.params.get("InstanceType", "m1.small")
        spot = req.params.get("InstanceMarketOptions.MarketType") == "spot"
        refused = self.capacity.refusal(zone, instance_type, spot=spot)
        if refused is None and spot:
            refused = self.spot.max_price_refusal(req, zone, instance_type)
        return refused

    def _run_after(self, req: AwsRequest, status: int, body: bytes) -> bytes | None:
        if status != 200:
            return None
        ec2 = backend(self.sandbox, req)
        spot = req.params.get("InstanceMarketOptions.MarketType") == "spot"
        text = body.decode("utf-8")
        changed = False
        for instance_id in re.findall(r"<instanceId>(i-[0-9a-f]+)</instanceId>", text):
            instance = ec2.get_instance_by_id(instance_id)
            if instance is None:
                continue
            if self.transitions.delay > 0:
                self.transitions.begin(instance, "pending", "running")
            if spot:
                text = self.spot.launched(req, instance, text)
                changed = True
        return text.encode("utf-8") if changed else None

    def _terminate_after(self, req: AwsRequest, status: int, body: bytes) -> bytes | None:
        if status != 200:
            return None
        ec2 = backend(self.sandbox, req)
        for instance_id in req.param_list("InstanceId"):
            request = self.spot.request_for(instance_id)
            if request is not None and request.state != "closed":
                # A cancelled request stays cancelled; an active one closes.
                request.set_status("instance-terminated-by-user", None if request.state == "cancelled" else "closed")
            instance = ec2.get_instance_by_id(instance_id)
            if self.transitions.delay > 0 and instance is not None and instance.state == "terminated":
                self.transitions.shut_down_later(instance)
        return None

    def _launch_zone(self, req: AwsRequest) -> str:
        """The AZ a RunInstances call lands in: Placement, else the subnet's AZ, else moto's default (`<region>a`)."""
        zone = req.params.get("Placement.AvailabilityZone")
        if zone:
            return zone
        subnet_id = req.params.get("SubnetId") or req.params.get("NetworkInterface.1.SubnetId")
        if subnet_id:
            try:
                subnet = backend(self.sandbox, req).get_subnet(subnet_id)
            except Exception:
                subnet = None  # moto answers the unknown subnet itself
            if subnet is not None:
                return str(subnet.availability_zone)
        return f"{req.region}a"

    # -- registration ----------------------------------------------------------------------------------------
    def register(self) -> None:
        sb = self.sandbox
        self.volumes.register()
        sb.before("ec2", "RunInstances", self._run_before)
        sb.after("ec2", "RunInstances", self._run_after)
        self.transitions.register()
        sb.after("ec2", "TerminateInstances", self._terminate_after)
        self.spot.register()
        self.capacity.register()
        sb.on_reset(self.reset)
        sb.on_stop(self.stop)


def install(sandbox: Sandbox) -> Ec2Rules:
    install_model_overrides()
    rules = Ec2Rules(sandbox)
    rules.register()
    idempotency.install(sandbox)
    return rules
