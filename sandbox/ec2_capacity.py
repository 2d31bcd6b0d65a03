"""EC2 capacity: where RunInstances fails for want of it, and the spot placement scores that follow from that.

`set_capacity(az, type, available=False)` makes RunInstances there fail with InsufficientInstanceCapacity (with
`spot_only=True` only spot launches: AWS's spot pool runs dry while on-demand still launches, the case a spot →
on-demand fallback exists for), and GetSpotPlacementScores (moto lacks it) score that AZ 1 for the type, every
other AZ 9 (a region: 9 if any of its AZs has capacity). AWS's own scores for one or two instance types are "always
low" (its API reference recommends at least three types); the sandbox scores any number of types by its capacity
rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Response

from sandbox.ec2_common import Refusal, answers, backend, paged_answer
from sandbox.protocol import AwsRequest, ec2_error

if TYPE_CHECKING:
    from sandbox.server import Sandbox

PLACEMENT_SCORE_HIGH = 9
PLACEMENT_SCORE_LOW = 1


class Capacity:
    """The capacity rules (see the module docstring)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._no_capacity: set[tuple[str, str]] = set()
        self._no_spot_capacity: set[tuple[str, str]] = set()

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

    def reset(self) -> None:
        self._no_capacity.clear()
        self._no_spot_capacity.clear()

    def refusal(self, zone: str, instance_type: str, *, spot: bool) -> Response | None:
        """RunInstances' InsufficientInstanceCapacity for a launch in `zone` the rules leave no room for."""
        key = (zone, instance_type)
        if key not in self._no_capacity and not (spot and key in self._no_spot_capacity):
            return None
        return ec2_error(
            "InsufficientInstanceCapacity",
            f"We currently do not have sufficient {instance_type} capacity in the Availability Zone you "
            f"requested ({zone}). Our system will be working on provisioning additional capacity. You can "
            "currently get capacity by not specifying an Availability Zone in your request or choosing a "
            "different Availability Zone.",
            500,
        )

    @answers
    def _spot_placement_scores(self, req: AwsRequest) -> Response | None:
        """GetSpotPlacementScores (moto lacks it): per AZ (SingleAvailabilityZone, by AZ ID) or per region, 1 where
        no requested type has capacity (`set_capacity`), 9 elsewhere; highest first, paged by MaxResults."""
        types = _placement_types(req)
        ec2 = backend(self.sandbox, req)
        regions = req.param_list("RegionName") or sorted(str(r.name) for r in ec2.describe_regions())
        single_zone = req.params.get("SingleAvailabilityZone", "false").lower() == "true"
        scored: list[tuple[int, str, str | None]] = []
        for region in regions:
            zones = [(str(z.name), str(z.zone_id)) for z in ec2.zones.get(region, [])]
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
        return paged_answer("GetSpotPlacementScores", "spotPlacementScoreSet", items, req)

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

    def register(self) -> None:
        self.sandbox.before("ec2", "GetSpotPlacementScores", self._spot_placement_scores)
        self.sandbox.control("capacity", self._control_capacity)


def _placement_types(req: AwsRequest) -> list[str]:
    """GetSpotPlacementScores' instance types, its parameters checked as AWS checks them (a Refusal if not)."""
    types = req.param_list("InstanceType")
    with_requirements = any(k.startswith("InstanceRequirementsWithMetadata.") for k in req.params)
    if types and with_requirements:
        raise Refusal(
            "InvalidParameterCombination", "InstanceTypes and InstanceRequirementsWithMetadata cannot be combined."
        )
    if not types and not with_requirements:
        raise Refusal("MissingParameter", "Either InstanceTypes or InstanceRequirementsWithMetadata is required.")
    capacity = req.params.get("TargetCapacity", "")
    if not capacity.isdigit() or not 1 <= int(capacity) <= 2_000_000_000:
        raise Refusal("InvalidParameterValue", f"Invalid value '{capacity}' for TargetCapacity.")
    max_results = req.params.get("MaxResults")
    if max_results is not None and (not max_results.isdigit() or not 10 <= int(max_results) <= 1000):
        raise Refusal("InvalidParameterValue", f"Invalid value '{max_results}' for MaxResults (10 to 1000).")
    return types
