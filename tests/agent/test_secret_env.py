"""Secrets by reference (agent/secret_env.py): resolved from the sandbox's SSM and Secrets Manager; refused ones are
named by reference, never by value; requests signed as botocore signs them."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from agent.credentials import CredentialProvider, Credentials
from agent.errors import SecretError
from agent.secret_env import resolve_secrets
from sandbox import Sandbox

pytestmark = pytest.mark.sandbox


SANDBOX_CREDENTIALS = CredentialProvider(static=Credentials("sandbox-access-key", "sandbox-secret-key"))


def test_secret_references_resolve_from_ssm_and_secrets_manager(cloud: Sandbox) -> None:
    cloud.client("ssm").put_parameter(Name="/agent-test/db/password", Value="pw-from-ssm", Type="SecureString")
    sm = cloud.client("secretsmanager")
    arn = sm.create_secret(Name="agent-test/api", SecretString=json.dumps({"token": "tok-from-sm", "port": 5432}))
    sm.create_secret(Name="agent-test/plain", SecretString="plain-from-sm")
    parameter_arn = f"arn:aws:ssm:{cloud.region}:123456789012:parameter/agent-test/db/password"
    refs = {
        "DB_PASSWORD": "ssm:/agent-test/db/password",  # SecureString, read with decryption
        "DB_PASSWORD_BY_ARN": f"ssm:{parameter_arn}",
        "API_TOKEN": "secretsmanager:agent-test/api#token",
        "API_PORT": f"secretsmanager:{arn['ARN']}#port",
        "PLAIN": "secretsmanager:agent-test/plain",
    }
    values = resolve_secrets(
        refs, region=cloud.region, credentials=SANDBOX_CREDENTIALS, endpoint_url=cloud.endpoint_url
    )
    assert values == {
        "DB_PASSWORD": "pw-from-ssm",
        "DB_PASSWORD_BY_ARN": "pw-from-ssm",
        "API_TOKEN": "tok-from-sm",
        "API_PORT": "5432",
        "PLAIN": "plain-from-sm",
    }


def test_unreadable_secrets_are_named_by_reference_never_by_value(cloud: Sandbox) -> None:
    sm = cloud.client("secretsmanager")
    sm.create_secret(Name="agent-test/json", SecretString=json.dumps({"user": "admin", "password": "leak-1"}))
    sm.create_secret(Name="agent-test/text", SecretString="leak-2")
    refs = {
        "A": "ssm:/agent-test/missing",
        "B": "secretsmanager:agent-test/missing",
        "C": "secretsmanager:agent-test/json#nokey",
        "D": "secretsmanager:agent-test/text#password",
    }
    with pytest.raises(SecretError) as err:
        resolve_secrets(refs, region=cloud.region, credentials=SANDBOX_CREDENTIALS, endpoint_url=cloud.endpoint_url)
    message = str(err.value)
    assert "A (ssm:/agent-test/missing): ParameterNotFound: Parameter /agent-test/missing not found" in message
    assert "B (secretsmanager:agent-test/missing): ResourceNotFoundException" in message
    assert f"check the name and the region ({cloud.region})" in message
    assert "C (secretsmanager:agent-test/json#nokey): the secret's JSON object has no key 'nokey'" in message
    assert "D (secretsmanager:agent-test/text#password): the secret is not a JSON object" in message
    assert "leak-" not in message and "admin" not in message


def test_access_denied_says_which_permission_and_requests_are_signed_as_botocore_signs_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AWS itself, stood in for by a server that refuses (moto does not enforce IAM): the message names the
    reference and the permission the instance profile lacks; the request is the one botocore would send."""
    import threading
    from datetime import UTC
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    seen: list[tuple[dict[str, str], bytes]] = []

    class DenyingAws(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return None

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
            answer = json.dumps({"__type": "AccessDeniedException", "Message": "User: role/train is not authorized"})
            data = answer.encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), DenyingAws)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    creds = CredentialProvider(static=Credentials("AKIDEXAMPLE", "secret/key+x", "session-token"))
    try:
        with pytest.raises(SecretError) as err:
            refs = {"DB_PASSWORD": "ssm:/db/password", "API_TOKEN": "secretsmanager:prod/api#token"}
            resolve_secrets(refs, region="eu-west-1", credentials=creds, endpoint_url=endpoint)
    finally:
        server.shutdown()
    message = str(err.value)
    assert "DB_PASSWORD (ssm:/db/password): AccessDeniedException: User: role/train is not authorized" in message
    assert "the instance profile needs ssm:GetParameter (+ kms:Decrypt) on it" in message
    assert "API_TOKEN (secretsmanager:prod/api#token): AccessDeniedException" in message
    assert "the instance profile needs secretsmanager:GetSecretValue on it" in message
    by_target = {headers["x-amz-target"]: (headers, body) for headers, body in seen}
    assert json.loads(by_target["AmazonSSM.GetParameter"][1]) == {"Name": "/db/password", "WithDecryption": True}
    assert json.loads(by_target["secretsmanager.GetSecretValue"][1]) == {"SecretId": "prod/api"}
    for (service, target), (headers, body) in zip(
        (("ssm", "AmazonSSM.GetParameter"), ("secretsmanager", "secretsmanager.GetSecretValue")),
        (by_target["AmazonSSM.GetParameter"], by_target["secretsmanager.GetSecretValue"]),
        strict=True,
    ):
        signed_at = datetime.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda at=signed_at: at)
        request = AWSRequest(
            method="POST",
            url=endpoint + "/",
            data=body,
            headers={"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"},
        )
        botocore.auth.SigV4Auth(
            BotoCredentials("AKIDEXAMPLE", "secret/key+x", "session-token"), service, "eu-west-1"
        ).add_auth(request)
        assert headers["authorization"] == request.headers["Authorization"], service
