"""trainctl blocks: configuration and client factories. `prefect block register -m blocks` registers them all.

The blocks are Prefect Blocks: importing them imports Prefect (~1 s). They load on first use (PEP 562), so a
command that only needs the AWS environment (`blocks.aws.load_account()`) never imports Prefect.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from blocks.account import AwsAccount
    from blocks.aws import load_account
    from blocks.policies import CostPolicy, SafetyPolicy
    from blocks.templates import InstanceTemplate

__all__ = ["AwsAccount", "CostPolicy", "InstanceTemplate", "SafetyPolicy", "load_account"]

_HOMES = {
    "AwsAccount": "blocks.account",
    "load_account": "blocks.aws",
    "CostPolicy": "blocks.policies",
    "SafetyPolicy": "blocks.policies",
    "InstanceTemplate": "blocks.templates",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # `prefect block register -m blocks` finds the blocks through inspect.getmembers, which asks dir().
    return sorted({*globals(), *__all__})
