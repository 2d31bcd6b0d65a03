"""EC2 spot, which moto 5.2.5 does not model for RunInstances: requests, interruptions, prices.

RunInstances with `InstanceMarketOptions.MarketType=spot` is refused with SpotMaxPriceTooLow when the max price is
under the current spot price; otherwise a spot request record (`sir-…`, active/fulfilled) is kept here, shown on
the instance (InstanceLifecycle, SpotInstanceRequestId) and answered by DescribeSpotInstanceRequests /
CancelSpotInstanceRequests. `interrupt_spot` posts the IMDS notice, sets the request's status and terminates the
instance after the delay with StateReason Server.SpotInstanceTermination. The status follows the EC2 User Guide
("Spot request status"): for a price interruption `marked-for-termination` (request active) during the notice, then
`instance-terminated-by-price` (closed); for a capacity interruption `instance-terminated-no-capacity` (closed) at
once, while the instance stays running until the delay is over. DescribeSpotPriceHistory is answered from the
on-demand table in `sandbox.pricing` (0.25–0.45 of it, fixed per AZ and type, a small drift every 6 hours).
"""

from __future__ import annotations

import itertools
import random
import string
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from moto.ec2.models.instances import Instance, StateReason
from werkzeug.wrappers import Response

from sandbox import pricing
from sandbox.ec2_common import Refusal, answers, backend, filters, glob, iso, now, paged_answer, parse_time
from sandbox.ec2_transitions import Transitions
from sandbox.protocol import AwsRequest, ec2_error, ec2_response

if TYPE_CHECKING:
    from sandbox.server import Sandbox

SPOT_TERMINATION_CODE = "Server.SpotInstanceTermination"
SPOT_TERMINATION_MESSAGE = "Server.SpotInstanceTermination: Spot instance termination"
PRICE_STEP = timedelta(hours=6)  # how often the sandbox's spot prices drift
PRICE_HISTORY_POINTS = 28  # one week of history at that step
PRODUCT_DESCRIPTIONS = ("Linux/UNIX", "Linux/UNIX (Amazon VPC)", "Windows")
UNKNOWN_TYPE_PRICE = 0.1  # on-demand $/hour assumed for a type outside the pricing table
INTERRUPTION_REASONS = ("price", "capacity")

# What AWS writes in a spot request's status (code → message).
SPOT_STATUS_MESSAGES = {
    "fulfilled": "Your spot request is fulfilled.",
    "marked-for-termination": "Your Spot Instance is marked for termination.",
    "instance-terminated-by-price": "Spot Instance terminated due to price.",
    "instance-terminated-by-user": "Spot Instance terminated due to user-initiated termination.",
    "request-canceled-and-instance-running": "Spot Instance request is canceled, but instance is still running.",
    "instance-terminated-no-capacity": "Spot Instance terminated due to no available capacity.",
}


@dataclass
class SpotRequest:
    """One spot instance request, as DescribeSpotInstanceRequests shows it."""

    id: str
    region: str
    instance_id: str
    instance_type: str
    image_id: str
    availability_zone: str
    max_price: float
    request_type: str = "one-time"
    interruption_behavior: str = "terminate"
    state: str = "active"
    status_code: str = "fulfilled"
    status_message: str = SPOT_STATUS_MESSAGES["fulfilled"]
    create_time: datetime = field(default_factory=now)
    update_time: datetime = field(default_factory=now)
    product_description: str = "Linux/UNIX"

    def set_status(self, code: str, state: str | None = None) -> None:
        self.status_code = code
        self.status_message = SPOT_STATUS_MESSAGES.get(code, "")
        self.update_time = now()
        if state is not None:
            self.state = state

    def filter_value(self, name: str) -> list[str]:
        values = {
            "instance-id": self.instance_id,
            "state": self.state,
            "status-code": self.status_code,
            "status-message": self.status_message,
            "spot-instance-request-id": self.id,
            "launched-availability-zone": self.availability_zone,
            "launch.instance-type": self.instance_type,
            "launch.image-id": self.image_id,
            "product-description": self.product_description,
            "type": self.request_type,
            "spot-price": f"{self.max_price:.6f}",
        }
        return [values[name]] if name in values else []

    def to_xml(self) -> str:
        return (
            "<item>"
            f"<spotInstanceRequestId>{self.id}</spotInstanceRequestId>"
            f"<spotPrice>{self.max_price:.6f}</spotPrice>"
            f"<type>{self.request_type}</type>"
            f"<state>{self.state}</state>"
            f"<status><code>{self.status_code}</code><updateTime>{iso(self.update_time)}</updateTime>"
            f"<message>{escape(self.status_message)}</message></status>"
            "<launchSpecification>"
            f"<imageId>{escape(self.image_id)}</imageId><instanceType>{escape(self.instance_type)}</instanceType>"
            f"<placement><availabilityZone>{self.availability_zone}</availabilityZone></placement>"
            "<groupSet/><monitoring><enabled>false</enabled></monitoring>"
            "</launchSpecification>"
            f"<instanceId>{self.instance_id}</instanceId>"
            f"<createTime>{iso(self.create_time)}</createTime>"
            f"<productDescription>{escape(self.product_description)}</productDescription>"
            f"<launchedAvailabilityZone>{self.availability_zone}</launchedAvailabilityZone>"
            f"<instanceInterruptionBehavior>{self.interruption_behavior}</instanceInterruptionBehavior>"
            "<tagSet/>"
            "</item>"
        )


def _step_index(when: datetime) -> int:
    return int(when.timestamp() // PRICE_STEP.total_seconds())


def on_demand(instance_type: str, region: str, product_description: str) -> float:
    """The on-demand $/hour the spot prices are a fraction of (us-east-1's when the region has none)."""
    system = "Windows" if product_description.startswith("Windows") else "Linux"
    price = pricing.on_demand_price(instance_type, region, system)
    if price is None:
        price = pricing.on_demand_price(instance_type, "us-east-1", system)
    return price if price is not None else UNKNOWN_TYPE_PRICE


def price_at(zone: str, instance_type: str, product_description: str, index: int) -> float:
    """Deterministic: a base fraction (0.28–0.40) per AZ and type, plus a drift of ±0.03 per 6-hour step."""
    region = zone[:-1] if zone[-1:].isalpha() else zone
    base = 0.28 + 0.12 * (zlib.crc32(f"{zone}/{instance_type}".encode()) % 1000) / 1000
    drift = 0.03 * ((zlib.crc32(f"{zone}/{instance_type}/{index}".encode()) % 2001) / 1000 - 1)
    fraction = min(max(base + drift, 0.25), 0.45)
    return round(on_demand(instance_type, region, product_description) * fraction, 6)


class SpotMarket:
    """Spot requests, interruptions and prices (see the module docstring)."""

    def __init__(self, sandbox: Sandbox, transitions: Transitions) -> None:
        self.sandbox = sandbox
        self.transitions = transitions
        self._requests: dict[str, SpotRequest] = {}
        self._random = random.Random()

    # -- public API ------------------------------------------------------------------------------------------
    def spot_price(self, availability_zone: str, instance_type: str, product_description: str = "Linux/UNIX") -> float:
        """The current spot price ($/hour) of a type in an AZ, as DescribeSpotPriceHistory shows it now."""
        return price_at(availability_zone, instance_type, product_description, _step_index(now()))

    def spot_requests(self) -> list[dict[str, Any]]:
        """A snapshot of every spot request record (for tests and the control surface)."""
        with self.sandbox.ec2_lock:
            return [
                {
                    "id": r.id,
                    "instance_id": r.instance_id,
                    "state": r.state,
                    "status_code": r.status_code,
                    "availability_zone": r.availability_zone,
                }
                for r in self._requests.values()
            ]

    def interrupt_spot(
        self, instance_id: str, *, delay_seconds: float = 120.0, reason: str = "price"
    ) -> dict[str, Any]:
        """The IMDS notice now, termination with StateReason Server.SpotInstanceTermination after the delay.
        `reason` ("price" or "capacity") picks the request status codes AWS shows (module docstring)."""
        if delay_seconds < 0:
            raise ValueError(f"delay_seconds must be >= 0, got {delay_seconds}")
        if reason not in INTERRUPTION_REASONS:
            raise ValueError(f"reason must be one of {', '.join(INTERRUPTION_REASONS)}, got {reason!r}")
        with self.sandbox.ec2_lock:
            request = self._interruptible(instance_id)
            when = now() + timedelta(seconds=delay_seconds)
            notice = {"action": "terminate", "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
            if reason == "capacity":
                request.set_status("instance-terminated-no-capacity", "closed")
            else:
                request.set_status("marked-for-termination")
        runtime = self.sandbox.runtime
        if runtime is not None and hasattr(runtime, "set_spot_action"):
            runtime.set_spot_action(instance_id, notice)
        self.transitions.schedule(delay_seconds, lambda: self._terminate(request), locked=False)
        return {
            "instance_id": instance_id,
            "spot_instance_request_id": request.id,
            "action": "terminate",
            "time": notice["time"],
            "delay_seconds": delay_seconds,
            "reason": reason,
        }

    def reset(self) -> None:
        self._requests.clear()

    # -- for the instance hooks (sandbox/ec2.py) -------------------------------------------------------------
    def request_for(self, instance_id: str) -> SpotRequest | None:
        for request in self._requests.values():
            if request.instance_id == instance_id:
                return request
        return None

    def max_price_refusal(self, req: AwsRequest, zone: str, instance_type: str) -> Response | None:
        """SpotMaxPriceTooLow (or a MaxPrice that is no number) for a spot RunInstances."""
        max_price = req.params.get("InstanceMarketOptions.SpotOptions.MaxPrice")
        if not max_price:
            return None
        try:
            wanted = float(max_price)
        except ValueError:
            return ec2_error("InvalidParameterValue", f"Invalid value '{max_price}' for MaxPrice.")
        current = self.spot_price(zone, instance_type)
        if wanted < current:
            return ec2_error(
                "SpotMaxPriceTooLow",
                f"Your Spot request price of {max_price} is lower than the minimum required Spot request "
                f"fulfillment price of {current:.4f}.",
            )
        return None

    def launched(self, req: AwsRequest, instance: Instance, answer: str) -> str:
        """Record the spot request of a launched instance; RunInstances' answer with the request shown on it."""
        request = self._record(req, instance)
        # Not declared on moto's Instance; once set, moto's DescribeInstances answers show them.
        instance.spot_instance_request_id = request.id  # type: ignore[attr-defined]
        instance.instance_lifecycle = "spot"  # type: ignore[attr-defined]
        # moto rendered the answer before the record existed: add the id to the instance's item.
        marker = f"<instanceId>{instance.id}</instanceId>"
        answer = answer.replace(marker, f"{marker}<spotInstanceRequestId>{request.id}</spotInstanceRequestId>")
        if "<instanceLifecycle>" not in answer:
            answer = answer.replace(marker, f"{marker}<instanceLifecycle>spot</instanceLifecycle>")
        return answer

    # -- internals -------------------------------------------------------------------------------------------
    def _interruptible(self, instance_id: str) -> SpotRequest:
        """The request of a running spot instance (ValueError otherwise); under the EC2 lock."""
        request = self.request_for(instance_id)
        if request is None:
            raise ValueError(f"{instance_id} is not a spot instance launched in this sandbox")
        instance = self.sandbox.ec2_backend(request.region).get_instance_by_id(instance_id)
        if instance is None:
            raise ValueError(f"unknown instance {instance_id}")
        if instance.state not in ("pending", "running"):
            raise ValueError(f"spot instance {instance_id} is {instance.state}, not running")
        return request

    def _record(self, req: AwsRequest, instance: Instance) -> SpotRequest:
        max_price = req.params.get("InstanceMarketOptions.SpotOptions.MaxPrice")
        request = SpotRequest(
            id=self._new_id(),
            region=req.region,
            instance_id=instance.id,
            instance_type=instance.instance_type,
            image_id=str(instance.image_id or ""),
            availability_zone=str(instance.availability_zone),
            # Without a max price AWS caps at the on-demand price.
            max_price=float(max_price) if max_price else on_demand(instance.instance_type, req.region, "Linux"),
            request_type=req.params.get("InstanceMarketOptions.SpotOptions.SpotInstanceType", "one-time"),
            interruption_behavior=req.params.get(
                "InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior", "terminate"
            ),
        )
        self._requests[request.id] = request
        return request

    def _new_id(self) -> str:
        alphabet = string.ascii_lowercase + string.digits
        while True:
            candidate = "sir-" + "".join(self._random.choice(alphabet) for _ in range(8))
            if candidate not in self._requests:
                return candidate

    def _terminate(self, request: SpotRequest) -> None:
        """The end of a spot interruption: terminate in moto with the spot StateReason, end the processes."""
        with self.sandbox.ec2_lock:
            ec2 = self.sandbox.ec2_backend(request.region)
            instance = ec2.get_instance_by_id(request.instance_id)
            if instance is None or instance.state in ("shutting-down", "terminated"):
                return  # the user got there first
            ec2.terminate_instances([instance.id])
            instance.state_reason = StateReason(SPOT_TERMINATION_MESSAGE, SPOT_TERMINATION_CODE)
            instance._reason = f"Service initiated ({now().strftime('%Y-%m-%d %H:%M:%S GMT')})"
            if self.transitions.delay > 0:
                self.transitions.shut_down_later(instance)
            if request.status_code != "instance-terminated-no-capacity":  # a capacity notice already has its code
                request.set_status("instance-terminated-by-price", "closed")
        runtime = self.sandbox.runtime
        if runtime is not None and hasattr(runtime, "terminate"):
            runtime.terminate(request.instance_id)

    def _named(self, req: AwsRequest) -> list[str] | None:
        """The request IDs a Describe/Cancel names, None when they are moto's (made with RequestSpotInstances)."""
        ids = req.param_list("SpotInstanceRequestId")
        if ids and not any(i in self._requests for i in ids):
            return None
        missing = [i for i in ids if i not in self._requests]
        if missing:
            raise Refusal(
                "InvalidSpotInstanceRequestID.NotFound",
                f"The spot instance request ID '{missing[0]}' does not exist",
            )
        return ids

    # -- hooks -----------------------------------------------------------------------------------------------
    @answers
    def _describe_requests(self, req: AwsRequest) -> Response | None:
        ids = self._named(req)
        if ids is None:
            return None
        requests = (
            [self._requests[i] for i in ids] if ids else [r for r in self._requests.values() if r.region == req.region]
        )
        for name, values in filters(req).items():
            requests = [r for r in requests if any(glob(v, x) for v in values for x in r.filter_value(name))]
        items = [r.to_xml() for r in requests]
        return paged_answer("DescribeSpotInstanceRequests", "spotInstanceRequestSet", items, req)

    @answers
    def _cancel_requests(self, req: AwsRequest) -> Response | None:
        ids = self._named(req)
        if ids is None:
            return None
        items = []
        for request_id in ids:
            request = self._requests[request_id]
            if request.state in ("open", "active"):
                instance = self.sandbox.ec2_backend(request.region).get_instance_by_id(request.instance_id)
                running = instance is not None and instance.state not in ("shutting-down", "terminated")
                request.set_status(
                    "request-canceled-and-instance-running" if running else "canceled-before-fulfillment",
                    "cancelled",
                )
            items.append(
                f"<item><spotInstanceRequestId>{request.id}</spotInstanceRequestId><state>{request.state}</state></item>"
            )
        return ec2_response(
            "CancelSpotInstanceRequests", f"<spotInstanceRequestSet>{''.join(items)}</spotInstanceRequestSet>"
        )

    @answers
    def _price_history(self, req: AwsRequest) -> Response | None:
        zones, types, descriptions = self._history_scope(req)
        end = parse_time(req.params["EndTime"]) if req.params.get("EndTime") else now()
        start = parse_time(req.params["StartTime"]) if req.params.get("StartTime") else None
        if start is not None and start > end:
            raise Refusal("InvalidParameterValue", "The start time must be before the end time.")
        last = _step_index(min(end, now()))
        first = _step_index(start) if start is not None else last - PRICE_HISTORY_POINTS + 1
        items: list[str] = []
        # Newest first, as AWS lists it; a price whose period began before StartTime is still in effect at it.
        for index, zone, instance_type, description in itertools.product(
            range(last, first - 1, -1), zones, types, descriptions
        ):
            stamp = datetime.fromtimestamp(index * PRICE_STEP.total_seconds(), UTC)
            items.append(
                "<item>"
                f"<availabilityZone>{zone}</availabilityZone>"
                f"<instanceType>{instance_type}</instanceType>"
                f"<productDescription>{escape(description)}</productDescription>"
                f"<spotPrice>{price_at(zone, instance_type, description, index):.6f}</spotPrice>"
                f"<timestamp>{iso(stamp)}</timestamp>"
                "</item>"
            )
        return paged_answer("DescribeSpotPriceHistory", "spotPriceHistorySet", items, req)

    def _history_scope(self, req: AwsRequest) -> tuple[list[str], list[str], list[str]]:
        """The AZs, instance types and product descriptions a DescribeSpotPriceHistory asks for."""
        wanted = filters(req)
        types = req.param_list("InstanceType") or wanted.get("instance-type") or list(pricing.INSTANCE_TYPES)
        types = [t for t in types if t in pricing.INSTANCE_TYPES or "*" in t or "?" in t]
        types = [t for t in pricing.INSTANCE_TYPES if any(glob(p, t) for p in types)]
        descriptions = req.param_list("ProductDescription") or wanted.get("product-description")
        descriptions = [d for d in PRODUCT_DESCRIPTIONS if not descriptions or any(glob(p, d) for p in descriptions)]
        zones = sorted(str(z.name) for z in backend(self.sandbox, req).describe_availability_zones())
        wanted_zone = req.params.get("AvailabilityZone")
        if wanted_zone:
            zones = [z for z in zones if z == wanted_zone]
        if wanted.get("availability-zone"):
            zones = [z for z in zones if any(glob(p, z) for p in wanted["availability-zone"])]
        return zones, types, descriptions

    def _control_interrupt(self, payload: dict[str, Any]) -> dict[str, Any]:
        return self.interrupt_spot(
            str(payload["instance_id"]),
            delay_seconds=float(payload.get("delay_seconds", 120.0)),
            reason=str(payload.get("reason", "price")),
        )

    def register(self) -> None:
        sb = self.sandbox
        sb.before("ec2", "DescribeSpotInstanceRequests", self._describe_requests)
        sb.before("ec2", "CancelSpotInstanceRequests", self._cancel_requests)
        sb.before("ec2", "DescribeSpotPriceHistory", self._price_history)
        sb.control("spot-interruption", self._control_interrupt)
        sb.control("spot-requests", lambda _: self.spot_requests())
