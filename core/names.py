"""Names users give (volumes, snapshots, jobs, saved blocks) and EBS device names: one rule per kind, checked
before any call.

A name shows in tables, lands in tags, and may reach a shell or a path, so each kind allows only what is safe
everywhere it goes — never control characters, bidirectional overrides (text that displays differently from
what it is: U+202A–U+202E, U+2066–U+2069) or shell metacharacters. A refusal names the field and says what in
the value is wrong.

Device names: EC2's recommended names for EBS data volumes on Linux ("Device names on Linux instances",
EC2 User Guide): `/dev/sd[f-p]`, with an optional partition digit 1–6 (the paravirtual form `/dev/sd[f-p][1-6]`),
and the same letters spelled `/dev/xvd[f-p]` (how Xen instances show them). The root (`/dev/sda1`, `/dev/xvda`)
and the instance-store names (`/dev/sd[b-e]`) are refused: a data volume never goes there.
"""

from __future__ import annotations

import re
import unicodedata
from enum import StrEnum

from core.errors import InvalidInputError

DEVICE_NAME = re.compile(r"/dev/(?:sd|xvd)[f-p][1-6]?")
DEVICE_RULE = "an EBS device name /dev/sd[f-p] or /dev/xvd[f-p], optionally with a digit 1–6 (e.g. /dev/sdf)"

BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
SHELL_METACHARACTERS = frozenset(";&|$`\\\"'<>(){}[]*?!~#%^ \t\n\r")


class NameKind(StrEnum):
    """The kinds of names trainctl takes, each with one rule."""

    RESOURCE = "resource"  # the Name tag of a volume, snapshot or instance
    JOB = "job"  # becomes tags, S3 prefixes and folder names on the instance
    BLOCK = "block"  # a saved Prefect block: AwsAccount, InstanceTemplate, SafetyPolicy


# Tag values allow 256 characters, but names show in tables: 128 is plenty and keeps rows readable.
_RULES: dict[NameKind, tuple[re.Pattern[str], int, str]] = {
    NameKind.RESOURCE: (
        re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]*"),
        128,
        "1–128 letters, digits and . _ : @ + = -, starting with a letter or digit",
    ),
    NameKind.JOB: (
        re.compile(r"[a-z0-9][a-z0-9-]*"),
        63,
        "1–63 lowercase letters, digits or dashes, starting with a letter/digit",
    ),
    # Prefect's own rule for block document names (lowercase letters, digits, dashes).
    NameKind.BLOCK: (
        re.compile(r"[a-z0-9][a-z0-9-]*"),
        128,
        "a saved block's name: 1–128 lowercase letters, digits or dashes",
    ),
}


def _problem(value: str) -> str | None:
    """What makes `value` unsafe in any name, in words (None: nothing the rules' patterns need to explain)."""
    for char in value:
        code = f"U+{ord(char):04X}"
        if char in BIDI_CONTROLS:
            return f"it contains {code}, a bidirectional override that makes text display differently from what it is"
        if unicodedata.category(char) in {"Cc", "Cf", "Zl", "Zp"}:
            return f"it contains {code}, a control character"
        if char in SHELL_METACHARACTERS:
            return f"it contains {char!r}, a shell metacharacter" if char != " " else "it contains a space"
        if not char.isascii():
            return f"it contains {char!r} ({code}), which is not ASCII"
    return None


def validate_name(kind: NameKind, value: object, *, field: str) -> str:
    """Return `value` if it is a valid name of `kind`, else raise naming the field, the rule and the problem."""
    pattern, limit, rule = _RULES[kind]
    if isinstance(value, str) and len(value) <= limit and pattern.fullmatch(value):
        return value
    if not isinstance(value, str):
        raise InvalidInputError(field, value, rule)
    problem = _problem(value)
    if problem is None and len(value) > limit:
        problem = f"it is {len(value)} characters long"
    elif problem is None and not value:
        problem = "it is empty"
    raise InvalidInputError(field, value, f"{rule}; {problem}" if problem else rule)


def validate_device_name(value: object, *, field: str = "device") -> str:
    """Return `value` if it is a device name a data volume may be attached at (see the module docstring)."""
    if not isinstance(value, str) or not DEVICE_NAME.fullmatch(value):
        problem = _problem(value) if isinstance(value, str) else None
        raise InvalidInputError(field, value, f"{DEVICE_RULE}; {problem}" if problem else DEVICE_RULE)
    return value
