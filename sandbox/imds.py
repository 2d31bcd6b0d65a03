"""The instance metadata service, one per instance: `<endpoint>/_imds/<instance-id>/latest/...` (IMDSv2 only).

Instances get `AWS_EC2_METADATA_SERVICE_ENDPOINT=<endpoint>/_imds/<id>/`; botocore appends `latest/api/token`
to it, a plain client appending `/latest/...` makes an empty path segment, which the router drops.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Response

from sandbox.protocol import ACCOUNT_ID, AwsRequest
from sandbox.runtime import InstanceRecord, InstanceRuntime, iso_z, new_token

if TYPE_CHECKING:
    from sandbox.server import Sandbox

MAX_TTL = 21600


def _text(body: str, status: int = 200) -> Response:
    return Response(body, status=status, content_type="text/plain")


_NOT_FOUND = (
    '<?xml version="1.0" encoding="iso-8859-1"?>\n<html><head><title>404 - Not Found</title></head>'
    "<body><h1>404 - Not Found</h1></body></html>\n"
)


def _not_found() -> Response:
    return Response(_NOT_FOUND, status=404, content_type="text/html")


class Imds:
    def __init__(self, sandbox: Sandbox, runtime: InstanceRuntime) -> None:
        self.sandbox = sandbox
        self.runtime = runtime
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (instance id, monotonic expiry)

    def reset(self) -> None:
        with self._lock:
            self._tokens.clear()

    def route(self, req: AwsRequest, parts: list[str]) -> Response:
        if not parts:
            return _not_found()
        instance_id, path = parts[0], parts[1:]
        rec = self.runtime.record(instance_id)
        if rec is None or not self.runtime.is_running(instance_id):
            return _not_found()  # no machine, no metadata service
        if path[:1] != ["latest"]:
            return _text("latest\n") if not path else _not_found()
        path = path[1:]
        if path == ["api", "token"]:
            return self._token(req, instance_id)
        if req.method not in ("GET", "HEAD"):
            return Response("", status=405)
        token = req.headers.get("x-aws-ec2-metadata-token", "")
        with self._lock:
            owner = self._tokens.get(token)
        if owner is None or owner[0] != instance_id or owner[1] < time.monotonic():
            return Response("", status=401)  # IMDSv2 only: no token, no answer
        return self._get(rec, path)

    def _token(self, req: AwsRequest, instance_id: str) -> Response:
        if req.method != "PUT":
            return Response("", status=405)
        ttl_header = req.headers.get("x-aws-ec2-metadata-token-ttl-seconds")
        try:
            ttl = int(ttl_header or "")
        except ValueError:
            return Response("", status=400)
        if not 1 <= ttl <= MAX_TTL:
            return Response("", status=400)
        token = new_token()
        with self._lock:
            now = time.monotonic()
            self._tokens = {t: v for t, v in self._tokens.items() if v[1] >= now}
            self._tokens[token] = (instance_id, now + ttl)
        response = _text(token)
        response.headers["X-aws-ec2-metadata-token-ttl-seconds"] = str(ttl)
        return response

    def _tree(self, rec: InstanceRecord) -> dict[str, Any]:
        """The metadata tree; leaves are callables so spot notices are read at request time."""
        lifecycle = self.runtime.lifecycle(rec.id)

        def spot_action() -> str | None:
            current = self.runtime.record(rec.id)
            return json.dumps(current.spot_action) if current and current.spot_action else None

        def termination_time() -> str | None:
            current = self.runtime.record(rec.id)
            return str(current.spot_action.get("time")) if current and current.spot_action else None

        def rebalance() -> str | None:
            current = self.runtime.record(rec.id)
            return json.dumps(current.rebalance) if current and current.rebalance else None

        identity = {
            "accountId": str(ACCOUNT_ID),
            "architecture": "x86_64",
            "availabilityZone": rec.availability_zone,
            "billingProducts": None,
            "devpayProductCodes": None,
            "marketplaceProductCodes": None,
            "imageId": rec.image_id,
            "instanceId": rec.id,
            "instanceType": rec.instance_type,
            "kernelId": None,
            "pendingTime": iso_z(rec.launched_at),
            "privateIp": rec.private_ip,
            "ramdiskId": None,
            "region": rec.region,
            "version": "2017-09-30",
        }
        meta: dict[str, Any] = {
            "ami-id": rec.image_id,
            "ami-launch-index": "0",
            "hostname": rec.hostname,
            "instance-id": rec.id,
            "instance-life-cycle": lifecycle,
            "instance-type": rec.instance_type,
            "local-hostname": rec.hostname,
            "local-ipv4": rec.private_ip,
            "placement": {
                "availability-zone": rec.availability_zone,
                "region": rec.region,
            },
            "events": {"recommendations": {"rebalance": rebalance}},
        }
        if lifecycle == "spot" or rec.spot_action is not None:
            meta["spot"] = {"instance-action": spot_action, "termination-time": termination_time}
        return {
            "meta-data": meta,
            "dynamic": {"instance-identity": {"document": json.dumps(identity, indent=2)}},
            "user-data": lambda: _user_data(rec),
        }

    def _get(self, rec: InstanceRecord, path: list[str]) -> Response:
        node: Any = self._tree(rec)
        if not path:
            return _text("\n".join(sorted(node)))
        for name in path:
            if not isinstance(node, dict) or name not in node:
                return _not_found()
            node = node[name]
        if callable(node):
            node = node()
        if node is None:
            return _not_found()
        if isinstance(node, dict):
            # A listing names sub-folders with a trailing slash; entries whose value is absent are not listed.
            names = [
                f"{key}/" if isinstance(value, dict) else key
                for key, value in sorted(node.items())
                if not callable(value) or value() is not None
            ]
            return _text("\n".join(names))
        return _text(str(node))


def _user_data(rec: InstanceRecord) -> str | None:
    path = rec.root / "var" / "lib" / "cloud" / "instance" / "user-data.txt"
    return path.read_text(errors="replace") if path.exists() else None


def install(sandbox: Sandbox) -> Imds:
    imds = Imds(sandbox, sandbox.runtime)
    route: Callable[[AwsRequest, list[str]], Response] = imds.route
    sandbox.raw_routes["_imds"] = route
    sandbox.on_reset(imds.reset)
    return imds
