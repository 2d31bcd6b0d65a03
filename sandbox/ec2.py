"""EC2 the way AWS answers it, where moto 5.2.5 does not: volume rules, state transitions, spot, capacity.

Volume rules (before-hooks, answered before moto sees the call):
  DescribeVolumes InvalidVolume.NotFound naming the unknown ID (moto puts a Python set in the message).
  AttachVolume   InvalidVolume.ZoneMismatch, VolumeInUse, IncorrectState, IncorrectInstanceState, device clash
                 (InvalidParameterValue); unknown IDs are left to moto's own NotFound errors.
  DetachVolume   IncorrectState for a volume that is not attached.
  DeleteVolume   moto already answers VolumeInUse with AWS's message.

Transitions (only when `sandbox.transition_delay > 0`; 0 keeps moto's instant behaviour): instances
pending → running, stopping → stopped, shutting-down → terminated; attachments attaching → attached and
detaching → (volume) available; volumes creating → available; snapshots pending → completed. moto's models are
mutated after moto answered, and a `threading.Timer` finishes each transition under `sandbox.ec2_lock`. As on
AWS, a volume being attached is already `in-use` (the attachment says `attaching`).

Spot: RunInstances with `InstanceMarketOptions.MarketType=spot` is refused with SpotMaxPriceTooLow when the max
price is under the current spot price; otherwise a spot request record (`sir-…`, active/fulfilled) is kept here,
shown on the instance (InstanceLifecycle, SpotInstanceRequestId) and answered by DescribeSpotInstanceRequests /
CancelSpotInstanceRequests. `interrupt_spot` posts the IMDS notice, sets the request's status and terminates the
instance after the delay with StateReason Server.SpotInstanceTermination. The status follows the EC2 User Guide
("Spot request status"): for a price interruption `marked-for-termination` (request active) during the notice, then
`instance-terminated-by-price` (closed); for a capacity interruption `instance-terminated-no-capacity` (closed) at
once, while the instance stays running until the delay is over. DescribeSpotPriceHistory is answered from the
on-demand table in `sandbox.pricing` (0.25–0.45 of it, fixed per AZ and type, a small drift every 6 hours).

Capacity: `set_capacity(az, type, available=False)` makes RunInstances there fail with
InsufficientInstanceCapacity (with `spot_only=True` only spot launches: AWS's spot pool runs dry while on-demand
still launches, the case a spot → on-demand fallback exists for), and GetSpotPlacementScores (moto lacks it) score
that AZ 1 for the type, every other AZ 9 (a region: 9 if any of its AZs has capacity). AWS's own scores for one or
two instance types are "always low" (its API reference recommends at least three types); the sandbox scores any
number of types by its capacity rules.

Client tokens (RunInstances, CreateVolume): see sandbox/idempotency.py, installed here after the rules above.
"""

from __future__ import annotations

import functools
import itertools
import random
import re
import string
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from xml.sax.saxutils import escape

from moto.ec2.models.elastic_block_store import Snapshot, Volume
from moto.ec2.models.instances import Instance, InstanceState, StateReason
from werkzeug.wrappers import Response

from sandbox import idempotency, pricing
from sandbox.protocol import AwsRequest, ec2_error, ec2_response

if TYPE_CHECKING:
    from sandbox.server import Sandbox

SPOT_TERMINATION_CODE = "Server.SpotInstanceTermination"
SPOT_TERMINATION_MESSAGE = "Server.SpotInstanceTermination: Spot instance termination"
INITIATED_SHUTDOWN_CODE = "Client.InstanceInitiatedShutdown"
INITIATED_SHUTDOWN_MESSAGE = "Client.InstanceInitiatedShutdown: Instance initiated shutdown"
PRICE_STEP = timedelta(hours=6)  # how often the sandbox's spot prices drift
PRICE_HISTORY_POINTS = 28  # one week of history at that step
PRODUCT_DESCRIPTIONS = ("Linux/UNIX", "Linux/UNIX (Amazon VPC)", "Windows")
UNKNOWN_TYPE_PRICE = 0.1  # on-demand $/hour assumed for a type outside the pricing table

INTERRUPTION_REASONS = ("price", "capacity")
PLACEMENT_SCORE_HIGH = 9
PLACEMENT_SCORE_LOW = 1

# What AWS writes in a spot request's status (code → message).
SPOT_STATUS_MESSAGES = {
    "fulfilled": "Your spot request is fulfilled.",
    "marked-for-termination": "Your Spot Instance is marked for termination.",
    "instance-terminated-by-price": "Spot Instance terminated due to price.",
    "instance-terminated-by-user": "Spot Instance terminated due to user-initiated termination.",
    "request-canceled-and-instance-running": "Spot Instance request is canceled, but instance is still running.",
    "instance-terminated-no-capacity": "Spot Instance terminated due to no available capacity.",
}

_STATE_CODES = {
    "pending": 0,
    "running": 16,
    "shutting-down": 32,
    "terminated": 48,
    "stopping": 64,
    "stopped": 80,
}


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _parse_time(value: str) -> datetime:
    """An EC2 timestamp parameter (botocore sends ISO 8601; epoch seconds are accepted too)."""
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return datetime.fromtimestamp(float(value), UTC)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _install_model_overrides() -> None:
    """Let a volume show `creating` and a snapshot show its progress: both are read-only properties in moto.

    The override only applies to objects the sandbox marked (attribute set), so plain moto use is unaffected.
    """
    if getattr(Volume, "_sandbox_patched", False):
        return
    original_status = Volume.status

    def volume_status(self: Volume) -> str:
        override = self.__dict__.get("_sandbox_status")
        return str(override) if override else str(original_status.fget(self))  # type: ignore[attr-defined]

    def snapshot_progress(self: Snapshot) -> str:
        return str(self.__dict__.get("_sandbox_progress", "100%"))

    Volume.status = property(volume_status)  # type: ignore[method-assign,assignment]
    Snapshot.progress = property(snapshot_progress)  # type: ignore[method-assign,assignment]
    Volume._sandbox_patched = True  # type: ignore[attr-defined]


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
    create_time: datetime = field(default_factory=_now)
    update_time: datetime = field(default_factory=_now)
    product_description: str = "Linux/UNIX"

    def set_status(self, code: str, state: str | None = None) -> None:
        self.status_code = code
        self.status_message = SPOT_STATUS_MESSAGES.get(code, "")
        self.update_time = _now()
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
            f"<status><code>{self.status_code}</code><updateTime>{_iso(self.update_time)}</updateTime>"
            f"<message>{escape(self.status_message)}</message></status>"
            "<launchSpecification>"
            f"<imageId>{escape(self.image_id)}</imageId><instanceType>{escape(self.instance_type)}</instanceType>"
            f"<placement><availabilityZone>{self.availability_zone}</availabilityZone></placement>"
            "<groupSet/><monitoring><enabled>false</enabled></monitoring>"
            "</launchSpecification>"
            f"<instanceId>{self.instance_id}</instanceId>"
            f"<createTime>{_iso(self.create_time)}</createTime>"
            f"<productDescription>{escape(self.product_description)}</productDescription>"
            f"<launchedAvailabilityZone>{self.availability_zone}</launchedAvailabilityZone>"
            f"<instanceInterruptionBehavior>{self.interruption_behavior}</instanceInterruptionBehavior>"
            "<tagSet/>"
            "</item>"
        )


def _filters(req: AwsRequest) -> dict[str, list[str]]:
    """Query-protocol filters (`Filter.N.Name`, `Filter.N.Value.M`) as name → values."""
    found: dict[str, list[str]] = {}
    for key, name in req.params.items():
        m = re.fullmatch(r"Filter\.(\d+)\.Name", key)
        if m:
            found.setdefault(name, []).extend(req.param_list(f"Filter.{m.group(1)}.Value"))
    return found


def _glob(pattern: str, value: str) -> bool:
    """EC2 filter values accept `*` and `?` wildcards."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value) is not None


def _paginate(items: list[str], req: AwsRequest, default: int) -> tuple[list[str], str | None]:
    start = 0
    token = req.params.get("NextToken")
    if token:
        if not token.isdigit():
            raise _Refusal("InvalidNextToken", "The specified token is invalid.")
        start = int(token)
    size = int(req.params.get("MaxResults") or default)
    page = items[start : start + size]
    return page, str(start + size) if start + size < len(items) else None


class _Refusal(Exception):
    """An EC2 error to answer with (raised inside hooks, turned into the XML error)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_Hook = Callable[["Ec2Rules", AwsRequest], Response | None]


def _answer_method(fn: _Hook) -> _Hook:
    """Turn a `_Refusal` raised in a before-hook into the EC2 error answer."""

    def hook(self: Ec2Rules, req: AwsRequest) -> Response | None:
        try:
            return fn(self, req)
        except _Refusal as exc:
            return ec2_error(exc.code, exc.message)

    return hook


class Ec2Rules:
    """The sandbox's EC2 layer over moto (see the module docstring). `sandbox.ec2` is this object."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._timers: set[threading.Timer] = set()
        self._timers_lock = threading.Lock()
        self._generation = 0  # bumped on reset/stop so a timer that already fired does nothing
        self._no_capacity: set[tuple[str, str]] = set()
        self._no_spot_capacity: set[tuple[str, str]] = set()
        self._spot: dict[str, SpotRequest] = {}
        self._detaching: dict[str, tuple[Any, Any, str, Any]] = {}
        self._random = random.Random()

    # -- public API ------------------------------------------------------------------------------------------
    def set_capacity(
        self, availability_zone: str, instance_type: str, *, available: bool, spot_only: bool = False
    ) -> None:
        """Make RunInstances of `instance_type` in `availability_zone` fail (only spot ones with `spot_only`), or
        succeed again."""
        key = (availability_zone, instance_type)
        rules = self._no_spot_capacity if spot_only else self._no_capacity
        with self.sandbox.ec2_lock:
            if available:
                rules.discard(key)
            else:
                rules.add(key)

    def spot_price(self, availability_zone: str, instance_type: str, product_description: str = "Linux/UNIX") -> float:
        """The current spot price ($/hour) of a type in an AZ, as DescribeSpotPriceHistory shows it now."""
        return self._price_at(availability_zone, instance_type, product_description, self._step_index(_now()))

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
                for r in self._spot.values()
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
            request = self._request_for(instance_id)
            if request is None:
                raise ValueError(f"{instance_id} is not a spot instance launched in this sandbox")
            instance = self.sandbox.ec2_backend(request.region).get_instance_by_id(instance_id)
            if instance is None:
                raise ValueError(f"unknown instance {instance_id}")
            if instance.state not in ("pending", "running"):
                raise ValueError(f"spot instance {instance_id} is {instance.state}, not running")
            when = _now() + timedelta(seconds=delay_seconds)
            notice = {"action": "terminate", "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
            if reason == "capacity":
                request.set_status("instance-terminated-no-capacity", "closed")
            else:
                request.set_status("marked-for-termination")
        runtime = self.sandbox.runtime
        if runtime is not None and hasattr(runtime, "set_spot_action"):
            runtime.set_spot_action(instance_id, notice)
        self._schedule(delay_seconds, lambda: self._spot_terminate(request), locked=False)
        return {
            "instance_id": instance_id,
            "spot_instance_request_id": request.id,
            "action": "terminate",
            "time": notice["time"],
            "delay_seconds": delay_seconds,
            "reason": reason,
        }

    def reset(self) -> None:
        """Forget spot requests and capacity rules; cancel every pending transition."""
        self._cancel_timers()
        with self.sandbox.ec2_lock:
            self._no_capacity.clear()
            self._no_spot_capacity.clear()
            self._spot.clear()
            self._detaching.clear()

    def stop(self) -> None:
        self._cancel_timers()

    # -- timers ----------------------------------------------------------------------------------------------
    def _cancel_timers(self) -> None:
        with self._timers_lock:
            self._generation += 1
            timers = list(self._timers)
            self._timers.clear()
        for timer in timers:
            timer.cancel()

    def _schedule(self, delay: float, action: Callable[[], None], *, locked: bool = True) -> None:
        """Run `action` after `delay` seconds (under the EC2 lock when `locked`), unless reset first."""
        with self._timers_lock:
            generation = self._generation

        def fire() -> None:
            with self._timers_lock:
                self._timers.discard(timer)
                if generation != self._generation:
                    return
            try:
                if locked:
                    with self.sandbox.ec2_lock:
                        action()
                else:
                    action()
            except Exception as exc:  # a timer must never crash silently into the void: log it
                self.sandbox.log(f"ec2 transition failed: {exc!r}")

        timer = threading.Timer(max(delay, 0.0), fire)
        timer.daemon = True
        with self._timers_lock:
            self._timers.add(timer)
        timer.start()

    @property
    def _delay(self) -> float:
        return float(self.sandbox.transition_delay or 0.0)

    # -- helpers ---------------------------------------------------------------------------------------------
    def _backend(self, req: AwsRequest) -> Any:
        return self.sandbox.ec2_backend(req.region)

    def _request_for(self, instance_id: str) -> SpotRequest | None:
        for request in self._spot.values():
            if request.instance_id == instance_id:
                return request
        return None

    def _new_spot_id(self) -> str:
        alphabet = string.ascii_lowercase + string.digits
        while True:
            candidate = "sir-" + "".join(self._random.choice(alphabet) for _ in range(8))
            if candidate not in self._spot:
                return candidate

    @staticmethod
    def _set_state(instance: Instance, name: str) -> None:
        instance._state = InstanceState(name, _STATE_CODES[name])

    def _launch_zone(self, req: AwsRequest) -> str:
        """The AZ a RunInstances call lands in: Placement, else the subnet's AZ, else moto's default (`<region>a`)."""
        zone = req.params.get("Placement.AvailabilityZone")
        if zone:
            return zone
        subnet_id = req.params.get("SubnetId") or req.params.get("NetworkInterface.1.SubnetId")
        if subnet_id:
            try:
                subnet = self._backend(req).get_subnet(subnet_id)
            except Exception:
                subnet = None  # moto answers the unknown subnet itself
            if subnet is not None:
                return str(subnet.availability_zone)
        return f"{req.region}a"

    @staticmethod
    def _instance_ids(body: bytes) -> list[str]:
        return re.findall(r"<instanceId>(i-[0-9a-f]+)</instanceId>", body.decode("utf-8", "replace"))

    # -- spot prices -----------------------------------------------------------------------------------------
    @staticmethod
    def _step_index(when: datetime) -> int:
        return int(when.timestamp() // PRICE_STEP.total_seconds())

    @staticmethod
    def _on_demand(instance_type: str, region: str, product_description: str) -> float:
        system = "Windows" if product_description.startswith("Windows") else "Linux"
        price = pricing.on_demand_price(instance_type, region, system)
        if price is None:
            price = pricing.on_demand_price(instance_type, "us-east-1", system)
        return price if price is not None else UNKNOWN_TYPE_PRICE

    def _price_at(self, zone: str, instance_type: str, product_description: str, index: int) -> float:
        """Deterministic: a base fraction (0.28–0.40) per AZ and type, plus a drift of ±0.03 per 6-hour step."""
        region = zone[:-1] if zone[-1:].isalpha() else zone
        base = 0.28 + 0.12 * (zlib.crc32(f"{zone}/{instance_type}".encode()) % 1000) / 1000
        drift = 0.03 * ((zlib.crc32(f"{zone}/{instance_type}/{index}".encode()) % 2001) / 1000 - 1)
        fraction = min(max(base + drift, 0.25), 0.45)
        return round(self._on_demand(instance_type, region, product_description) * fraction, 6)

    def _zones(self, req: AwsRequest) -> list[str]:
        return sorted(str(z.name) for z in self._backend(req).describe_availability_zones())

    # -- hooks: volumes --------------------------------------------------------------------------------------
    def _attach_before(self, req: AwsRequest) -> Response | None:
        backend = self._backend(req)
        volume_id, instance_id = req.params.get("VolumeId", ""), req.params.get("InstanceId", "")
        device = req.params.get("Device", "")
        volume = backend.volumes.get(volume_id)
        instance = backend.get_instance_by_id(instance_id)
        if volume is None or instance is None:
            return None  # moto's own InvalidVolume.NotFound / InvalidInstanceID.NotFound
        if instance.state not in ("running", "stopped"):
            return ec2_error("IncorrectInstanceState", f"Instance '{instance_id}' is not 'running'.")
        if volume.availability_zone != instance.availability_zone:
            return ec2_error(
                "InvalidVolume.ZoneMismatch",
                f"The volume '{volume_id}' is not in the same availability zone as instance '{instance_id}'",
            )
        if volume.attachment is not None:
            return ec2_error("VolumeInUse", f"{volume_id} is already attached to an instance")
        if volume.status != "available":
            return ec2_error("IncorrectState", f"Volume '{volume_id}' is in the '{volume.status}' state.")
        if device in instance.block_device_mapping or device == instance.root_device_name:
            return ec2_error(
                "InvalidParameterValue",
                f"Invalid value '{device}' for unixDevice. Attachment point {device} is already in use",
            )
        return None

    def _describe_volumes_before(self, req: AwsRequest) -> Response | None:
        """AWS names the unknown volume; moto 5.2.5 formats the whole set of IDs (`'{'vol-…'}'`) into it."""
        backend = self._backend(req)
        unknown = [v for v in req.param_list("VolumeId") if v not in backend.volumes]
        if unknown:
            return ec2_error("InvalidVolume.NotFound", f"The volume '{unknown[0]}' does not exist.")
        return None

    def _attach_after(self, req: AwsRequest, status: int, body: bytes) -> bytes | None:
        if status != 200 or self._delay <= 0:
            return None
        backend = self._backend(req)
        volume = backend.volumes.get(req.params.get("VolumeId", ""))
        if volume is None or volume.attachment is None:
            return None
        attachment = volume.attachment
        attachment.status = "attaching"
        mapping = attachment.instance.block_device_mapping.get(attachment.device)
        if mapping is not None:
            mapping.status = "attaching"

        def done() -> None:
            if volume.attachment is attachment and attachment.status == "attaching":
                attachment.status = "attached"
                if mapping is not None:
                    mapping.status = "in-use"

        self._schedule(self._delay, done)
        return None

    def _detach_before(self, req: AwsRequest) -> Response | None:
        backend = self._backend(req)
        volume_id = req.params.get("VolumeId", "")
        volume = backend.volumes.get(volume_id)
        if volume is None:
            return None
        if volume.attachment is None:
            return ec2_error("IncorrectState", f"Volume '{volume_id}' is in the '{volume.status}' state.")
        attachment = volume.attachment
        instance = attachment.instance
        if not req.params.get("InstanceId") and req.body:
            # AWS lets the caller omit InstanceId; moto 5.2.5 crashes without it, so complete the request.
            req.params["InstanceId"] = instance.id
            req.body = req.body + b"&InstanceId=" + quote(instance.id).encode()
        # Remember the attachment: with a transition delay it stays visible as `detaching` after moto drops it.
        self._detaching[volume_id] = (
            volume,
            attachment,
            attachment.device,
            instance.block_device_mapping.get(attachment.device),
        )
        return None

    def _detach_after(self, req: AwsRequest, status: int, body: bytes) -> bytes | None:
        volume_id = req.params.get("VolumeId", "")
        remembered = self._detaching.pop(volume_id, None)
        if status != 200 or self._delay <= 0 or remembered is None:
            return None
        volume, attachment, device, mapping = remembered
        instance = attachment.instance
        attachment.status = "detaching"
        volume.attachment = attachment
        if mapping is not None:
            mapping.status = "detaching"
            instance.block_device_mapping[device] = mapping

        def done() -> None:
            if volume.attachment is attachment:
                volume.attachment = None
                attachment.status = "detached"
            if mapping is not None and instance.block_device_mapping.get(device) is mapping:
                del instance.block_device_mapping[device]

        self._schedule(self._delay, done)
        return re.sub(rb"<status>[a-z]+</status>", b"<status>detaching</status>", body, count=1)

    def _create_volume_after(self, req: AwsRequest, status: int, body: bytes) -> bytes | None:
        if status != 200 or self._delay <= 0:
            return None
        m = re.search(rb"<volumeId>(vol-[0-9a-f]+)</volumeId>", body)
        volume = self._backend(req).volumes.get(m.group(1).decode()) if m else None
        if volume is None:
            return None
        volume._sandbox_status = "creating"

        def done() -> None:
            volume.__dict__.pop("_sandbox_status", None)

        self._schedule(self._delay, done)
        return body.replace(b"<status>available</status>", b"<status>creating</status>", 1)

    def _create_snapshot_after(self, req: AwsRequest, status: int, body: bytes) -> bytes | None:
        if status != 200 or self._delay <= 0:
            return None
        m = re.search(rb"<snapshotId>(snap-[0-9a-f]+)</snapshotId>", body)
        snapshot = self._backend(req).snapshots.get(m.group(1).decode()) if m else None
        if snapshot is None:
            return None
        snapshot.status = "pending"
        snapshot._sandbox_progress = "0%"

        def halfway() -> None:
            if snapshot.status == "pending":
                snapshot._sandbox_progress = "50%"

        def done() -> None:
            if snapshot.status == "pending":
                snapshot.status = "completed"
                snapshot.__dict__.pop("_sandbox_progress", None)

        self._schedule(self._delay / 2, halfway)
        self._schedule(self._delay, done)
        body = body.replace(b"<status>completed</status>", b"<status>pending</status>", 1)
        return body.replace(b"<progress>100%</progress>", b"<progress>0%</progress>", 1)

    # -- hooks: instances ------------------------------------------------------------------------------------
    def _run_before(self, req: AwsRequest) -> Response | None:
        zone = self._launch_zone(req)
        instance_type = req.params.get("InstanceType", "m1.small")
        spot = req.params.get("InstanceMarketOptions.MarketType") == "spot"
        if (zone, instance_type) in self._no_capacity or (spot and (zone, instance_type) in self._no_spot_capacity):
            return ec2_error(
                "InsufficientInstanceCapacity",
                f"We currently do not have sufficient {instance_type} capacity in the Availability Zone you "
                f"requested ({zone}). Our system will be working on provisioning additional capacity. You can "
                "currently get capacity by not specifying an Availability Zone in your request or choosing a "
                "different Availability Zone.",
                500,
            )
        if req.params.get("InstanceMarketOptions.MarketType") == "spot":
            max_price = req.params.get("InstanceMarketOptions.SpotOptions.MaxPrice")
            if max_price:
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

    def _run_after(self, req: AwsRequest, status: int, body: bytes) -> bytes | None:
        if status != 200:
            return None
        backend = self._backend(req)
        spot = req.params.get("InstanceMarketOptions.MarketType") == "spot"
        text = body.decode("utf-8")
        changed = False
        for instance_id in self._instance_ids(body):
            instance = backend.get_instance_by_id(instance_id)
            if instance is None:
                continue
            if self._delay > 0:
                self._set_state(instance, "pending")
                self._schedule(self._delay, functools.partial(self._advance, instance, "pending", "running"))
            if spot:
                request = self._record_spot(req, instance)
                instance.spot_instance_request_id = request.id
                instance.instance_lifecycle = "spot"
                # moto rendered the answer before the record existed: add the id to the instance's item.
                marker = f"<instanceId>{instance_id}</instanceId>"
                text = text.replace(marker, f"{marker}<spotInstanceRequestId>{request.id}</spotInstanceRequestId>")
                if "<instanceLifecycle>" not in text:
                    text = text.replace(marker, f"{marker}<instanceLifecycle>spot</instanceLifecycle>")
                changed = True
        return text.encode("utf-8") if changed else None

    def _record_spot(self, req: AwsRequest, instance: Instance) -> SpotRequest:
        zone = str(instance.availability_zone)
        max_price = req.params.get("InstanceMarketOptions.SpotOptions.MaxPrice")
        request = SpotRequest(
            id=self._new_spot_id(),
            region=req.region,
            instance_id=instance.id,
            instance_type=instance.instance_type,
            image_id=str(instance.image_id or ""),
            availability_zone=zone,
            # Without a max price AWS caps at the on-demand price.
            max_price=float(max_price) if max_price else self._on_demand(instance.instance_type, req.region, "Linux"),
            request_type=req.params.get("InstanceMarketOptions.SpotOptions.SpotInstanceType", "one-time"),
            interruption_behavior=req.params.get(
                "InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior", "terminate"
            ),
        )
        self._spot[request.id] = request
        return request

    def _advance(self, instance: Instance, expected: str, target: str) -> None:
        """Finish a transition unless something else changed the state meanwhile (compare-and-set)."""
        if instance.state == expected:
            self._set_state(instance, target)

    def _start_after(self, req: AwsRequest, status: int, body: bytes) -> bytes | None:
        if status != 200 or self._delay <= 0:
            return None
        backend = self._backend(req)
        for instance_id in req.param_list("InstanceId"):
            instance = backend.get_instance_by_id(instance_id)
            if instance is not None and instance.state == "running":
                self._set_state(instance, "pending")
                self._schedule(self._delay, functools.partial(self._advance, instance, "pending", "running"))
        return None

    def _stop_after(self, req: AwsRequest, status: int, body: bytes) -> bytes | None:
        if status != 200 or self._delay <= 0:
            return None
        backend = self._backend(req)
        for instance_id in req.param_list("InstanceId"):
            instance = backend.get_instance_by_id(instance_id)
            if instance is not None and instance.state == "stopped":
                self._set_state(instance, "stopping")
                self._schedule(self._delay, functools.partial(self._advance, instance, "stopping", "stopped"))
        return None

    def _terminate_after(self, req: AwsRequest, status: int, body: bytes) -> bytes | None:
        if status != 200:
            return None
        backend = self._backend(req)
        for instance_id in req.param_list("InstanceId"):
            request = self._request_for(instance_id)
            if request is not None and request.state != "closed":
                # A cancelled request stays cancelled; an active one closes.
                request.set_status("instance-terminated-by-user", None if request.state == "cancelled" else "closed")
            instance = backend.get_instance_by_id(instance_id)
            if self._delay > 0 and instance is not None and instance.state == "terminated":
                self._shut_down_later(instance)
        return None

    def _shut_down_later(self, instance: Instance) -> None:
        self._set_state(instance, "shutting-down")
        self._schedule(self._delay, lambda: self._advance(instance, "shutting-down", "terminated"))

    def _spot_terminate(self, request: SpotRequest) -> None:
        """The end of a spot interruption: terminate in moto with the spot StateReason, end the processes."""
        with self.sandbox.ec2_lock:
            backend = self.sandbox.ec2_backend(request.region)
            instance = backend.get_instance_by_id(request.instance_id)
            if instance is None or instance.state in ("shutting-down", "terminated"):
                return  # the user got there first
            backend.terminate_instances([instance.id])
            instance.state_reason = StateReason(SPOT_TERMINATION_MESSAGE, SPOT_TERMINATION_CODE)
            instance._reason = f"Service initiated ({_now().strftime('%Y-%m-%d %H:%M:%S GMT')})"
            if self._delay > 0:
                self._shut_down_later(instance)
            if request.status_code != "instance-terminated-no-capacity":  # a capacity notice already has its code
                request.set_status("instance-terminated-by-price", "closed")
        runtime = self.sandbox.runtime
        if runtime is not None and hasattr(runtime, "terminate"):
            runtime.terminate(request.instance_id)

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
                request = self._request_for(instance_id)
                if request is not None and request.state != "closed":
                    request.set_status("instance-terminated-by-user", "closed")
            else:
                instance.stop()
            instance.state_reason = StateReason(INITIATED_SHUTDOWN_MESSAGE, INITIATED_SHUTDOWN_CODE)
            instance._reason = f"User initiated ({_now().strftime('%Y-%m-%d %H:%M:%S GMT')})"
            if self._delay > 0 and behavior == "terminate":
                self._shut_down_later(instance)
            elif self._delay > 0:
                self._set_state(instance, "stopping")
                self._schedule(self._delay, functools.partial(self._advance, instance, "stopping", "stopped"))
        return "terminate" if behavior == "terminate" else "stop"

    # -- hooks: spot requests --------------------------------------------------------------------------------
    @_answer_method
    def _describe_spot_requests(self, req: AwsRequest) -> Response | None:
        ids = req.param_list("SpotInstanceRequestId")
        if ids and not any(i in self._spot for i in ids):
            return None  # requests made with RequestSpotInstances live in moto
        missing = [i for i in ids if i not in self._spot]
        if missing:
            raise _Refusal(
                "InvalidSpotInstanceRequestID.NotFound",
                f"The spot instance request ID '{missing[0]}' does not exist",
            )
        requests = [self._spot[i] for i in ids] if ids else [r for r in self._spot.values() if r.region == req.region]
        for name, values in _filters(req).items():
            requests = [r for r in requests if any(_glob(v, x) for v in values for x in r.filter_value(name))]
        page, token = _paginate([r.to_xml() for r in requests], req, 1000)
        inner = f"<spotInstanceRequestSet>{''.join(page)}</spotInstanceRequestSet>"
        if token:
            inner += f"<nextToken>{token}</nextToken>"
        return ec2_response("DescribeSpotInstanceRequests", inner)

    @_answer_method
    def _cancel_spot_requests(self, req: AwsRequest) -> Response | None:
        ids = req.param_list("SpotInstanceRequestId")
        if ids and not any(i in self._spot for i in ids):
            return None
        missing = [i for i in ids if i not in self._spot]
        if missing:
            raise _Refusal(
                "InvalidSpotInstanceRequestID.NotFound",
                f"The spot instance request ID '{missing[0]}' does not exist",
            )
        items = []
        for request_id in ids:
            request = self._spot[request_id]
            if request.state in ("open", "active"):
                backend = self.sandbox.ec2_backend(request.region)
                instance = backend.get_instance_by_id(request.instance_id)
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

    @_answer_method
    def _spot_price_history(self, req: AwsRequest) -> Response | None:
        filters = _filters(req)
        types = req.param_list("InstanceType") or filters.get("instance-type") or list(pricing.INSTANCE_TYPES)
        types = [t for t in types if t in pricing.INSTANCE_TYPES or "*" in t or "?" in t]
        types = [t for t in pricing.INSTANCE_TYPES if any(_glob(p, t) for p in types)]
        descriptions = req.param_list("ProductDescription") or filters.get("product-description")
        descriptions = [d for d in PRODUCT_DESCRIPTIONS if not descriptions or any(_glob(p, d) for p in descriptions)]
        zones = self._zones(req)
        wanted_zone = req.params.get("AvailabilityZone")
        if wanted_zone:
            zones = [z for z in zones if z == wanted_zone]
        if filters.get("availability-zone"):
            zones = [z for z in zones if any(_glob(p, z) for p in filters["availability-zone"])]
        now = _now()
        end = _parse_time(req.params["EndTime"]) if req.params.get("EndTime") else now
        start = _parse_time(req.params["StartTime"]) if req.params.get("StartTime") else None
        if start is not None and start > end:
            raise _Refusal("InvalidParameterValue", "The start time must be before the end time.")
        end = min(end, now)
        step = PRICE_STEP.total_seconds()
        last = self._step_index(end)
        first = self._step_index(start) if start is not None else last - PRICE_HISTORY_POINTS + 1
        rows: list[tuple[float, str]] = []
        # Newest first, as AWS lists it; a price whose period began before StartTime is still in effect at it.
        for index, zone, instance_type, description in itertools.product(
            range(last, first - 1, -1), zones, types, descriptions
        ):
            price = self._price_at(zone, instance_type, description, index)
            stamp = datetime.fromtimestamp(index * step, UTC)
            rows.append(
                (
                    -index,
                    "<item>"
                    f"<availabilityZone>{zone}</availabilityZone>"
                    f"<instanceType>{instance_type}</instanceType>"
                    f"<productDescription>{escape(description)}</productDescription>"
                    f"<spotPrice>{price:.6f}</spotPrice>"
                    f"<timestamp>{_iso(stamp)}</timestamp>"
                    "</item>",
                )
            )
        page, token = _paginate([xml for _, xml in rows], req, 1000)
        inner = f"<spotPriceHistorySet>{''.join(page)}</spotPriceHistorySet>"
        if token:
            inner += f"<nextToken>{token}</nextToken>"
        return ec2_response("DescribeSpotPriceHistory", inner)

    # -- hooks: spot placement scores ------------------------------------------------------------------------
    @_answer_method
    def _spot_placement_scores(self, req: AwsRequest) -> Response | None:
        """GetSpotPlacementScores (moto lacks it): per AZ (SingleAvailabilityZone, by AZ ID) or per region, 1 where
        no requested type has capacity (`set_capacity`), 9 elsewhere; highest first, paged by MaxResults."""
        types = req.param_list("InstanceType")
        with_requirements = any(k.startswith("InstanceRequirementsWithMetadata.") for k in req.params)
        if types and with_requirements:
            raise _Refusal(
                "InvalidParameterCombination", "InstanceTypes and InstanceRequirementsWithMetadata cannot be combined."
            )
        if not types and not with_requirements:
            raise _Refusal("MissingParameter", "Either InstanceTypes or InstanceRequirementsWithMetadata is required.")
        capacity = req.params.get("TargetCapacity", "")
        if not capacity.isdigit() or not 1 <= int(capacity) <= 2_000_000_000:
            raise _Refusal("InvalidParameterValue", f"Invalid value '{capacity}' for TargetCapacity.")
        max_results = req.params.get("MaxResults")
        if max_results is not None and (not max_results.isdigit() or not 10 <= int(max_results) <= 1000):
            raise _Refusal("InvalidParameterValue", f"Invalid value '{max_results}' for MaxResults (10 to 1000).")
        backend = self._backend(req)
        regions = req.param_list("RegionName") or sorted(str(r.name) for r in backend.describe_regions())
        single_zone = req.params.get("SingleAvailabilityZone", "false").lower() == "true"
        scored: list[tuple[int, str, str | None]] = []
        for region in regions:
            zones = [(str(z.name), str(z.zone_id)) for z in backend.zones.get(region, [])]
            # With requirements instead of types the sandbox knows no type, so no capacity rule applies.
            per_zone = {
                zone_id: PLACEMENT_SCORE_LOW
                if types and all((name, t) in self._no_capacity | self._no_spot_capacity for t in types)
                else PLACEMENT_SCORE_HIGH
                for name, zone_id in zones
            }
            if single_zone:
                scored.extend((score, region, zone_id) for zone_id, score in per_zone.items())
            elif per_zone:
                scored.append((max(per_zone.values()), region, None))
        scored.sort(key=lambda s: (-s[0], s[1], s[2] or ""))
        items = [
            f"<item><region>{region}</region>"
            + (f"<availabilityZoneId>{zone_id}</availabilityZoneId>" if zone_id else "")
            + f"<score>{score}</score></item>"
            for score, region, zone_id in scored
        ]
        page, token = _paginate(items, req, 1000)
        inner = f"<spotPlacementScoreSet>{''.join(page)}</spotPlacementScoreSet>"
        if token:
            inner += f"<nextToken>{token}</nextToken>"
        return ec2_response("GetSpotPlacementScores", inner)

    # -- registration ----------------------------------------------------------------------------------------
    def register(self) -> None:
        sb = self.sandbox
        sb.before("ec2", "DescribeVolumes", self._describe_volumes_before)
        sb.before("ec2", "AttachVolume", self._attach_before)
        sb.after("ec2", "AttachVolume", self._attach_after)
        sb.before("ec2", "DetachVolume", self._detach_before)
        sb.after("ec2", "DetachVolume", self._detach_after)
        sb.after("ec2", "CreateVolume", self._create_volume_after)
        sb.after("ec2", "CreateSnapshot", self._create_snapshot_after)
        sb.before("ec2", "RunInstances", self._run_before)
        sb.after("ec2", "RunInstances", self._run_after)
        sb.after("ec2", "StartInstances", self._start_after)
        sb.after("ec2", "StopInstances", self._stop_after)
        sb.after("ec2", "TerminateInstances", self._terminate_after)
        sb.before("ec2", "DescribeSpotInstanceRequests", self._describe_spot_requests)
        sb.before("ec2", "CancelSpotInstanceRequests", self._cancel_spot_requests)
        sb.before("ec2", "DescribeSpotPriceHistory", self._spot_price_history)
        sb.before("ec2", "GetSpotPlacementScores", self._spot_placement_scores)
        sb.on_reset(self.reset)
        sb.on_stop(self.stop)
        sb.control("capacity", self._control_capacity)
        sb.control("spot-interruption", self._control_interrupt)
        sb.control("spot-requests", lambda _: self.spot_requests())

    def _control_capacity(self, payload: dict[str, Any]) -> dict[str, Any]:
        zone, instance_type = str(payload["availability_zone"]), str(payload["instance_type"])
        available = bool(payload.get("available", False))
        spot_only = bool(payload.get("spot_only", False))
        self.set_capacity(zone, instance_type, available=available, spot_only=spot_only)
        return {
            "availability_zone": zone,
            "instance_type": instance_type,
            "available": available,
            "spot_only": spot_only,
        }

    def _control_interrupt(self, payload: dict[str, Any]) -> dict[str, Any]:
        return self.interrupt_spot(
            str(payload["instance_id"]),
            delay_seconds=float(payload.get("delay_seconds", 120.0)),
            reason=str(payload.get("reason", "price")),
        )


def install(sandbox: Sandbox) -> Ec2Rules:
    _install_model_overrides()
    rules = Ec2Rules(sandbox)
    rules.register()
    idempotency.install(sandbox)
    return rules
