"""AWS resource ID patterns, checked before any call so a typo never reaches AWS."""

from __future__ import annotations

import re

from core.errors import InvalidInputError

# EC2 IDs are a prefix and 8 (older) or 17 hexadecimal characters.
_PATTERNS: dict[str, re.Pattern[str]] = {
    "instance": re.compile(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$"),
    "volume": re.compile(r"^vol-(?:[0-9a-f]{8}|[0-9a-f]{17})$"),
    "snapshot": re.compile(r"^snap-(?:[0-9a-f]{8}|[0-9a-f]{17})$"),
    "image": re.compile(r"^ami-(?:[0-9a-f]{8}|[0-9a-f]{17})$"),
    "subnet": re.compile(r"^subnet-(?:[0-9a-f]{8}|[0-9a-f]{17})$"),
    "security_group": re.compile(r"^sg-(?:[0-9a-f]{8}|[0-9a-f]{17})$"),
}
_EXAMPLES = {
    "instance": "i-0123456789abcdef0",
    "volume": "vol-0123456789abcdef0",
    "snapshot": "snap-0123456789abcdef0",
    "image": "ami-0123456789abcdef0",
    "subnet": "subnet-0123456789abcdef0",
    "security_group": "sg-0123456789abcdef0",
}
_AZ = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d[a-z]$")
_INSTANCE_TYPE = re.compile(r"[a-z0-9-]+\.[a-z0-9-]+")


def kind_of(resource_id: str) -> str | None:
    """Which kind of resource an ID names (`instance`, `volume`, ...), or None when it matches no pattern."""
    for kind, pattern in _PATTERNS.items():
        if pattern.match(resource_id):
            return kind
    return None


def validate_id(kind: str, value: str, *, field: str | None = None) -> str:
    """Return `value` if it is a well-formed ID of `kind`, else raise naming the field and an example."""
    pattern = _PATTERNS[kind]
    if not isinstance(value, str) or not pattern.fullmatch(value.strip()):
        raise InvalidInputError(
            field or f"{kind}_id",
            value,
            f"an EC2 {kind.replace('_', ' ')} ID such as {_EXAMPLES[kind]}",
            fix="Copy the ID from `trainctl resources list` or the AWS console.",
        )
    return value.strip()


def validate_availability_zone(value: str, *, field: str = "availability_zone") -> str:
    """Shape check only (`us-east-1a`); whether the zone exists is asked of AWS in the tasks."""
    if not isinstance(value, str) or not _AZ.fullmatch(value):
        raise InvalidInputError(field, value, "an availability zone such as us-east-1a")
    return value


def validate_instance_type(value: str, *, field: str = "instance_type") -> str:
    """Shape check only (`g5.xlarge`); whether the type is offered is asked of AWS in the tasks."""
    if not isinstance(value, str) or not _INSTANCE_TYPE.fullmatch(value):
        raise InvalidInputError(field, value, "an instance type such as g5.xlarge")
    return value
