"""Secrets by reference: what a job's environment may point at, and which plain values look like secrets.

A job's `secret_env` maps a variable name to a reference, never a value:

    ssm:/path/to/param                        SSM Parameter Store (SecureString read with decryption); also a
    ssm:arn:aws:ssm:<region>:<acct>:parameter/path   parameter ARN, and `name:<version or label>`
    secretsmanager:<secret name or ARN>       Secrets Manager: the SecretString as is
    secretsmanager:<secret name or ARN>#key   ... or one key of the JSON object it holds

The agent resolves them on the instance (agent/spec.py has a copy of this grammar; tests/agent checks
both agree) and hands the values to the trainer's environment only: job.json, agent-spec.json, logs and S3 show
the reference. The instance profile needs ssm:GetParameter (+ kms:Decrypt for a customer-managed key) and
secretsmanager:GetSecretValue on those resources.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator

from core.errors import InvalidInputError

SSM: Literal["ssm"] = "ssm"
SECRETS_MANAGER: Literal["secretsmanager"] = "secretsmanager"
_SSM_NAME = re.compile(r"^/?[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)*(?::[A-Za-z0-9_.\-]{1,100})?$")
_SSM_ARN = re.compile(r"^arn:aws[a-z\-]*:ssm:[a-z0-9\-]+:\d{12}:parameter/[A-Za-z0-9_.\-/]+(?::[A-Za-z0-9_.\-]+)?$")
_SECRET_NAME = re.compile(r"^[A-Za-z0-9/_+=.@\-]{1,512}$")
_SECRET_ARN = re.compile(r"^arn:aws[a-z\-]*:secretsmanager:[a-z0-9\-]+:\d{12}:secret:[A-Za-z0-9/_+=.@\-]+$")
FORMS = "ssm:/path/to/param or secretsmanager:<secret name or ARN>[#json-key]"
NOT_SHOWN = "<not shown: it may be the secret itself>"


@dataclass(frozen=True)
class ParsedRef:
    kind: Literal["ssm", "secretsmanager"]
    id: str  # the parameter name/ARN (with any :version) or the secret name/ARN
    json_key: str | None = None


def parse_secret_ref(ref: str, *, field: str = "secret_env") -> ParsedRef:
    """The reference's parts; InvalidInputError naming `field` when it is not one of the forms above."""
    kind, sep, rest = ref.partition(":") if isinstance(ref, str) else ("", "", "")
    if sep and kind == SSM and len(rest) <= 2048 and (_SSM_NAME.match(rest) or _SSM_ARN.match(rest)):
        return ParsedRef(SSM, rest)
    if sep and kind == SECRETS_MANAGER:
        secret, hash_, key = rest.partition("#")
        key_ok = not hash_ or (key and key.isprintable())
        if key_ok and (_SECRET_NAME.match(secret) or _SECRET_ARN.match(secret)):
            return ParsedRef(SECRETS_MANAGER, secret, key if hash_ else None)
    # Not echoed unless it was meant as a reference: a mistaken `NAME=<the secret itself>` must not reach a log.
    shown = ref if kind in {SSM, SECRETS_MANAGER} or not isinstance(ref, str) else NOT_SHOWN
    raise InvalidInputError(field, shown, FORMS)


def _valid_ref(ref: str) -> str:
    parse_secret_ref(ref)
    return ref


SecretRef = Annotated[str, AfterValidator(_valid_ref)]
"""A reference to a secret (`ssm:/db/password`, `secretsmanager:prod/db#password`), validated on construction."""


# -- plain values that look like secrets (a warning, never a refusal) --------------------------------------------

_SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD")
_AWS_ACCESS_KEY = re.compile(r"^(?:AKIA|ASIA)[A-Z0-9]{16}$")
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9+/=_\-]{20,}$")
_HEX = re.compile(r"^[0-9a-fA-F]{32,}$")


def _entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def looks_secret(name: str, value: str) -> bool:
    """A name such as *KEY*, *SECRET*, *TOKEN*, *PASSWORD*; an AWS access key ID; or a long random-looking
    token (base64-like of 20+ characters above 4.2 bits each, or 32+ hex digits): random tokens carry more
    entropy than the run names, dates and model names an --env usually holds."""
    if any(word in name.upper() for word in _SECRET_WORDS):
        return True
    if _AWS_ACCESS_KEY.match(value):
        return True
    if _HEX.match(value):
        return _entropy(value) >= 3.0
    return bool(_TOKEN_CHARS.match(value)) and _entropy(value) >= 4.2


def secret_like(env: Mapping[str, str]) -> list[str]:
    """The names of plain variables whose name or value looks like a secret (values are never repeated)."""
    return [name for name, value in env.items() if looks_secret(name, value)]
