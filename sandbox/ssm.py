"""Placeholder: replaced by the real component (it registers its hooks in install)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.server import Sandbox


def install(sandbox: Sandbox) -> Any:
    return None
