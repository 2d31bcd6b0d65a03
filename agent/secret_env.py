"""Secrets by reference (the spec's secret_env): read from SSM Parameter Store and Secrets Manager when the attempt
starts. Values go into the trainer's environment only: never into a file, a log line, S3 or an error message
(errors name the reference)."""

from __future__ import annotations

import base64
import http.client
import json

from .awsjson import AwsJsonClient
from .credentials import CredentialProvider
from .errors import AwsApiError, S3Error, SecretError
from .spec import parse_secret_ref


def _secret_value(kind: str, ident: str, key: str | None, client: AwsJsonClient) -> str:
    if kind == "ssm":
        return str(client.call("GetParameter", {"Name": ident, "WithDecryption": True})["Parameter"]["Value"])
    answer = client.call("GetSecretValue", {"SecretId": ident})
    if "SecretString" in answer:
        text = str(answer["SecretString"])
    else:
        try:
            text = base64.b64decode(answer.get("SecretBinary") or "").decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise SecretError("the secret is binary, not text") from None
    if key is None:
        return text
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise SecretError(f"the secret is not a JSON object, so it has no key {key!r}")
    if key not in document:
        raise SecretError(f"the secret's JSON object has no key {key!r}")
    value = document[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SecretError(f"the secret's key {key!r} holds a {type(value).__name__}, not a string or number")
    return str(value)


def _secret_hint(kind: str, error: AwsApiError, region: str) -> str:
    if error.code.startswith("AccessDenied"):
        action = "ssm:GetParameter (+ kms:Decrypt)" if kind == "ssm" else "secretsmanager:GetSecretValue"
        return f"; the instance profile needs {action} on it"
    if error.code in ("ParameterNotFound", "ResourceNotFoundException", "ParameterVersionNotFound"):
        return f"; check the name and the region ({region})"
    return ""


def resolve_secrets(
    secret_env: dict[str, str],
    *,
    region: str,
    credentials: CredentialProvider,
    endpoint_url: str | None = None,
) -> dict[str, str]:
    """{NAME: value} for the trainer's environment. Raises SecretError naming every reference that failed."""
    values: dict[str, str] = {}
    failures: list[str] = []
    clients: dict[tuple[str, str], AwsJsonClient] = {}
    for name, ref in sorted(secret_env.items()):
        kind, ident, key = parse_secret_ref(ref)
        # An ARN names its region; anything else is read in the instance's region.
        where = ident.split(":")[3] if ident.startswith("arn:") else region
        client = clients.get((kind, where))
        if client is None:
            client = AwsJsonClient(kind, region=where, credentials=credentials, endpoint_url=endpoint_url)
            clients[(kind, where)] = client
        try:
            value = _secret_value(kind, ident, key, client)
            if "\0" in value:
                raise SecretError("the value holds a NUL character, which no environment variable can")
            values[name] = value
        except AwsApiError as exc:
            detail = f"{exc.code}: {exc.message.rstrip('.')}" if exc.message else exc.code
            failures.append(f"{name} ({ref}): {detail}{_secret_hint(kind, exc, where)}")
        except S3Error as exc:  # no credentials (the provider's error)
            failures.append(f"{name} ({ref}): {exc.code}: {exc.message}")
        except (OSError, http.client.HTTPException) as exc:  # the instance profile's credentials from IMDS
            failures.append(f"{name} ({ref}): no credentials: {exc!r}")
        except SecretError as exc:
            failures.append(f"{name} ({ref}): {exc}")
    if failures:
        raise SecretError("secret_env: " + "; ".join(failures))
    return values
