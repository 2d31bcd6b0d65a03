"""IMDSv2 (agent/imds.py) through the sandbox's endpoint, and the instance profile's credentials read from it
(agent/credentials.py)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from agent.credentials import CredentialProvider
from agent.host import parse_time
from agent.imds import Imds
from sandbox import Sandbox
from tests.agent.test_runner import launch

pytestmark = pytest.mark.sandbox


def test_role_credentials_from_imds_are_cached_and_refreshed_before_expiration(monkeypatch: pytest.MonkeyPatch) -> None:
    """On AWS the instance has no keys in its environment: the agent reads the instance profile's (IMDSv2)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    issued: list[str] = []
    expiration = ["2099-01-01T00:00:00Z"]

    class FakeImds(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return None

        def do_PUT(self) -> None:
            ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
            self._answer(200 if ok else 400, "tok")

        def do_GET(self) -> None:
            if self.headers.get("X-aws-ec2-metadata-token") != "tok":
                return self._answer(401, "")
            base = "/latest/meta-data/iam/security-credentials/"
            if self.path == base:
                return self._answer(200, "train-role")
            if self.path == base + "train-role":
                issued.append(self.path)
                doc = {
                    "Code": "Success",
                    "AccessKeyId": f"ASIA{len(issued)}",
                    "SecretAccessKey": "s",
                    "Token": "t",
                    "Expiration": expiration[0],
                }
                return self._answer(200, json.dumps(doc))
            return self._answer(404, "")

        def _answer(self, status: int, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeImds)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
        provider = CredentialProvider(Imds(f"http://127.0.0.1:{server.server_port}"))
        first = provider.get()
        assert (first.access_key, first.token) == ("ASIA1", "t") and provider.get().access_key == "ASIA1"
        assert len(issued) == 1  # cached while far from its expiration
        expiration[0] = "2000-01-01T00:00:00Z"  # the next document expires at once: refreshed on every use
        provider.invalidate()
        assert provider.get().access_key == "ASIA2" and provider.get().access_key == "ASIA3"
    finally:
        server.shutdown()


def test_imds_v2_through_the_sandbox_endpoint(cloud: Sandbox) -> None:
    machine = launch(cloud)
    endpoint = cloud.runtime.imds_endpoint(machine.instance_id)
    for variant in (endpoint, endpoint.rstrip("/")):  # with or without the trailing slash
        imds = Imds(variant)
        assert imds.get("meta-data/instance-id") == machine.instance_id
        assert imds.get("meta-data/spot/instance-action") is None
    cloud.runtime.set_spot_action(machine.instance_id, {"action": "stop", "time": "2030-01-02T03:04:05Z"})
    action = Imds(endpoint).get("/meta-data/spot/instance-action")
    assert action is not None and json.loads(action)["action"] == "stop"
    assert parse_time("2030-01-02T03:04:05Z") == datetime.fromisoformat("2030-01-02T03:04:05+00:00").timestamp()
