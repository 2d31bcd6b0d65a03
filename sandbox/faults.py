"""Fault injection: throttling on a fraction of AWS calls, answered with each service's own throttling error."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Response

from sandbox.protocol import AwsRequest, error_for

if TYPE_CHECKING:
    from sandbox.server import Sandbox

# What each protocol family answers when AWS throttles it (code, HTTP status).
_THROTTLE: dict[str, tuple[str, int]] = {
    "ec2": ("RequestLimitExceeded", 503),
    "s3": ("SlowDown", 503),
}
_DEFAULT_THROTTLE = ("ThrottlingException", 400)


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.fraction = 0.0
        self.services: frozenset[str] | None = None
        self.throttled = 0
        self._random = random.Random()

    def throttle(self, fraction: float, services: Iterable[str] | None = None) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
        with self._lock:
            self.fraction = fraction
            self.services = frozenset(services) if services else None

    def before(self, req: AwsRequest) -> Response | None:
        if req.service is None or self.fraction <= 0.0:
            return None
        if self.services is not None and req.service not in self.services:
            return None
        with self._lock:
            hit = self._random.random() < self.fraction
            if hit:
                self.throttled += 1
        if not hit:
            return None
        code, status = _THROTTLE.get(req.service, _DEFAULT_THROTTLE)
        return error_for(req, code, "Rate exceeded (sandbox fault injection)", status)

    def reset(self) -> None:
        self.throttle(0.0)


def install(sandbox: Sandbox) -> Faults:
    faults = Faults()
    sandbox.before("*", "*", faults.before)
    sandbox.on_reset(faults.reset)

    def control(payload: dict[str, Any]) -> dict[str, Any]:
        faults.throttle(float(payload.get("fraction", 0.0)), payload.get("services"))
        return {"fraction": faults.fraction, "services": sorted(faults.services or [])}

    sandbox.control("throttle", control)
    return faults
