"""What the sandbox's EC2 rule modules share: time stamps as EC2 writes them, a refusal raised inside a hook and
answered as EC2's XML error, and the query protocol's filters and pages (sandbox/ec2.py lists the modules)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from werkzeug.wrappers import Response

from sandbox.protocol import AwsRequest, ec2_error, ec2_response

_Rules = TypeVar("_Rules")
_Hook = Callable[[_Rules, AwsRequest], Response | None]


def now() -> datetime:
    return datetime.now(UTC)


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def parse_time(value: str) -> datetime:
    """An EC2 timestamp parameter (botocore sends ISO 8601; epoch seconds are accepted too)."""
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return datetime.fromtimestamp(float(value), UTC)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class Refusal(Exception):
    """An EC2 error to answer with (raised inside hooks, turned into the XML error)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def answers(fn: _Hook[_Rules]) -> _Hook[_Rules]:
    """Turn a `Refusal` raised in a before-hook into the EC2 error answer."""

    def hook(self: _Rules, req: AwsRequest) -> Response | None:
        try:
            return fn(self, req)
        except Refusal as exc:
            return ec2_error(exc.code, exc.message)

    return hook


def filters(req: AwsRequest) -> dict[str, list[str]]:
    """Query-protocol filters (`Filter.N.Name`, `Filter.N.Value.M`) as name → values."""
    found: dict[str, list[str]] = {}
    for key, name in req.params.items():
        m = re.fullmatch(r"Filter\.(\d+)\.Name", key)
        if m:
            found.setdefault(name, []).extend(req.param_list(f"Filter.{m.group(1)}.Value"))
    return found


def glob(pattern: str, value: str) -> bool:
    """EC2 filter values accept `*` and `?` wildcards."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value) is not None


def paginate(items: list[str], req: AwsRequest, default: int) -> tuple[list[str], str | None]:
    start = 0
    token = req.params.get("NextToken")
    if token:
        if not token.isdigit():
            raise Refusal("InvalidNextToken", "The specified token is invalid.")
        start = int(token)
    size = int(req.params.get("MaxResults") or default)
    page = items[start : start + size]
    return page, str(start + size) if start + size < len(items) else None


def paged_answer(action: str, set_name: str, items: list[str], req: AwsRequest) -> Response:
    """`action`'s answer: one page of `items` (XML `<item>`s) in `<set_name>`, and the next token if any."""
    page, token = paginate(items, req, 1000)
    inner = f"<{set_name}>{''.join(page)}</{set_name}>"
    if token:
        inner += f"<nextToken>{token}</nextToken>"
    return ec2_response(action, inner)


def backend(sandbox: Any, req: AwsRequest) -> Any:
    """moto's EC2 backend for the request's region."""
    return sandbox.ec2_backend(req.region)
