"""EC2 client tokens honoured as AWS does: moto 5.2.5 stores RunInstances' ClientToken but never checks it, and
ignores CreateVolume's, so a retried or concurrent launch made a second instance here and not on AWS.

A call that names a token an earlier successful call of the same action (same region) used:
- with the same parameters gets the earlier answer again (same reservation, instances, volume) and creates nothing;
- with other parameters gets IdempotentParameterMismatch;
- RunInstances whose instances are all terminated gets IdempotentInstanceTerminated (AWS's answer since 2025-01).
Calls naming one token run one at a time (`Sandbox.serialise`), so of two that arrive together the second gets the
first one's answer. A refused call records nothing (a retry may act). AWS forgets a token some hours after the
call (a day after an instance's termination); the sandbox keeps it until reset.
"""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from werkzeug.wrappers import Response

from sandbox.protocol import AwsRequest, ec2_error

if TYPE_CHECKING:
    from sandbox.server import Sandbox

ACTIONS = ("RunInstances", "CreateVolume")
MISMATCH_MESSAGE = "Arguments on this idempotent request are inconsistent with arguments used in previous request(s)."
TERMINATED_MESSAGE = (
    "The client token you have provided is associated with a terminated instance. Please use a different client token."
)
_NOT_PARAMETERS = frozenset({"Action", "Version", "ClientToken"})


@dataclass(frozen=True)
class _Answer:
    parameters: dict[str, str]
    body: bytes
    instance_ids: tuple[str, ...]


def _parameters(req: AwsRequest) -> dict[str, str]:
    return {k: v for k, v in req.params.items() if k not in _NOT_PARAMETERS}


def _token_key(req: AwsRequest) -> tuple[str, str, str] | None:
    token = req.params.get("ClientToken")
    return (req.region, req.action or "", token) if token and req.action in ACTIONS else None


class ClientTokens:
    """The answers of successful calls that named a client token, by (region, action, token)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._answers: dict[tuple[str, str, str], _Answer] = {}
        self._lock = threading.Lock()

    def serial_key(self, req: AwsRequest) -> str | None:
        key = _token_key(req)
        return "client-token/" + "/".join(key) if key else None

    def replay(self, req: AwsRequest) -> Response | None:
        key = _token_key(req)
        with self._lock:
            answer = self._answers.get(key) if key else None
        if answer is None:
            return None
        if _parameters(req) != answer.parameters:
            return ec2_error("IdempotentParameterMismatch", MISMATCH_MESSAGE)
        if answer.instance_ids and all(self._terminated(req.region, i) for i in answer.instance_ids):
            return ec2_error("IdempotentInstanceTerminated", TERMINATED_MESSAGE)
        # Every AWS answer has its own request ID; the rest is the first call's answer.
        body = re.sub(rb"<requestId>[^<]*</requestId>", f"<requestId>{uuid.uuid4()}</requestId>".encode(), answer.body)
        return Response(body, status=200, content_type="text/xml")

    def record(self, req: AwsRequest, status: int, body: bytes) -> bytes | None:
        key = _token_key(req)
        if key is not None and status == 200:
            ids = re.findall(r"<instanceId>(i-[0-9a-f]+)</instanceId>", body.decode("utf-8", "replace"))
            with self._lock:
                self._answers[key] = _Answer(_parameters(req), body, tuple(dict.fromkeys(ids)))
        return None

    def reset(self) -> None:
        with self._lock:
            self._answers.clear()

    def _terminated(self, region: str, instance_id: str) -> bool:
        instance = self.sandbox.ec2_backend(region).get_instance_by_id(instance_id)
        return instance is None or instance.state == "terminated"


def install(sandbox: Sandbox) -> ClientTokens:
    """Register after every other EC2 hook: the replay answers before the EC2 rules (a repeat is answered as the
    first call was, whatever capacity says now), and the answer recorded is the one the caller got."""
    tokens = ClientTokens(sandbox)
    for action in ACTIONS:
        sandbox.before("ec2", action, tokens.replay, first=True)
        sandbox.after("ec2", action, tokens.record)
    sandbox.serialise("ec2", tokens.serial_key)
    sandbox.on_reset(tokens.reset)
    return tokens
