"""Safety and cost policies as Prefect blocks: the thresholds the planner and cost-watch apply (DESIGN.md 3)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal, Self

from prefect.blocks.core import Block
from pydantic import Field, model_validator

from blocks.aws import load_block
from core.cost import Thresholds
from core.jobs import MAX_LAUNCH_HOURLY_USD
from core.safety import DEFAULT_MIN_AGE_MINUTES


class SafetyPolicy(Block):
    """What trainctl refuses to destroy without `force`, and what happens to ephemeral volumes on teardown."""

    _block_type_name: ClassVar[str | None] = "Trainctl Safety Policy"
    _description: ClassVar[str | None] = "Safety thresholds for teardown and cleanup (DESIGN.md section 3)."

    min_age_minutes: float = Field(
        default=DEFAULT_MIN_AGE_MINUTES, ge=0, description="Resources younger than this need force to be deleted."
    )
    checkpoint_recency_minutes: float = Field(
        default=60, ge=0, description="Checkpoint objects younger than this are never deleted by cleanup."
    )
    ephemeral_volumes: Literal["delete", "keep"] = Field(
        default="delete", description="What teardown does with non-persistent volumes of a terminated instance."
    )
    training_wait_timeout_minutes: float = Field(
        default=60, gt=0, description="How long teardown with wait=True waits for a running job to finish."
    )

    @classmethod
    def load_or_default(cls, name: str | None = None) -> SafetyPolicy:
        """The saved policy `name`, or the defaults when no name is given."""
        return cls() if name is None else load_block(cls, name)


# Accepted range (exclusive low, inclusive high) of each CostPolicy number.
_COST_LIMITS: dict[str, tuple[float, float]] = {
    "max_hourly_usd": (0, 100_000),
    "max_daily_usd": (0, 1_000_000),
    "max_accumulated_usd": (0, 10_000_000),
    "job_budget_usd": (0, 1_000_000),
    "max_hourly_cost": (0, MAX_LAUNCH_HOURLY_USD),
    "idle_gpu_percent": (0, 100),
    "idle_minutes": (0, 7 * 24 * 60),
}


class CostPolicy(Block):
    """Spending thresholds cost-watch checks, and the optional actions when one is crossed."""

    _block_type_name: ClassVar[str | None] = "Trainctl Cost Policy"
    _description: ClassVar[str | None] = "Cost thresholds and actions for cost-watch (DESIGN.md section 3, rule 10)."

    max_hourly_usd: float = Field(default=50, description="Alert when the running rate exceeds this (USD/hour).")
    max_daily_usd: float = Field(default=100, description="Alert when the last 24 hours cost more (USD).")
    max_accumulated_usd: float = Field(default=500, description="Alert when all managed resources cost more (USD).")
    # Unset: no limit. A job spec's own budget_usd / max_hourly_cost wins over these.
    job_budget_usd: float | None = Field(None, description="Budget of each job across all its attempts (USD).")
    max_hourly_cost: float | None = Field(
        None, description="Refuse to launch an instance whose hourly price (spot now, else on-demand) is above this."
    )
    idle_gpu_percent: float = Field(default=5, description="A GPU below this utilisation (percent) counts as idle.")
    idle_minutes: float = Field(
        default=30, description="An instance whose GPUs all stay idle this long is stopped (checkpoint first)."
    )
    stop_idle_instances: bool = Field(
        default=False,
        description="Stop the job of a training instance whose GPUs stay idle and whose trainer makes no progress "
        "(checkpoint first).",
    )
    checkpoint_and_stop_over_budget: bool = Field(
        default=False, description="Ask an over-budget job to checkpoint, then stop its instance."
    )

    @model_validator(mode="after")
    def _sane(self) -> Self:
        # Zero, negative or absurd values are typos: refused when the block is built or loaded, naming the field.
        for name, (low, high) in _COST_LIMITS.items():
            value = getattr(self, name)
            if value is not None and not (low < value <= high):
                raise ValueError(f"{name}: {value:g} is not valid: expected more than {low:g} and at most {high:g}")
        # An hourly cap above the daily cap is always a typo (one hour can never cost more than its day).
        if self.max_hourly_usd > self.max_daily_usd:
            raise ValueError(
                f"max_hourly_usd ({self.max_hourly_usd}) is above max_daily_usd ({self.max_daily_usd}); "
                "raise max_daily_usd or lower max_hourly_usd"
            )
        return self

    def thresholds(self, job_budgets: Mapping[str, float] | None = None) -> Thresholds:
        """The limits as core/cost.py's plain values (`job_budgets`: the jobs' own budgets, which win)."""
        return Thresholds(
            hourly_usd=self.max_hourly_usd,
            daily_usd=self.max_daily_usd,
            accumulated_usd=self.max_accumulated_usd,
            job_budget_usd=self.job_budget_usd,
            job_budgets=dict(job_budgets or {}),
        )

    @classmethod
    def load_or_default(cls, name: str | None = None) -> CostPolicy:
        """The saved policy `name`, or the defaults when no name is given."""
        return cls() if name is None else load_block(cls, name)
