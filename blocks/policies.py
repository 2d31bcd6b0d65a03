"""Safety and cost policies as Prefect blocks: the thresholds the planner and cost-watch apply (DESIGN.md 3)."""

from __future__ import annotations

from typing import ClassVar, Literal, Self

from prefect.blocks.core import Block
from pydantic import Field, model_validator

from blocks.aws import load_block


class SafetyPolicy(Block):
    """What trainctl refuses to destroy without `force`, and what happens to ephemeral volumes on teardown."""

    _block_type_name: ClassVar[str | None] = "Trainctl Safety Policy"
    _description: ClassVar[str | None] = "Safety thresholds for teardown and cleanup (DESIGN.md section 3)."

    min_age_minutes: float = Field(default=5, ge=0, description="Resources younger than this need force to be deleted.")
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


class CostPolicy(Block):
    """Spending thresholds cost-watch checks, and the optional actions when one is crossed."""

    _block_type_name: ClassVar[str | None] = "Trainctl Cost Policy"
    _description: ClassVar[str | None] = "Cost thresholds and actions for cost-watch (DESIGN.md section 3, rule 10)."

    max_hourly_usd: float = Field(default=50, ge=0, description="Alert when the running rate exceeds this.")
    max_daily_usd: float = Field(default=100, ge=0, description="Alert when the last 24 hours cost more.")
    max_accumulated_usd: float = Field(default=500, ge=0, description="Alert when all managed resources cost more.")
    stop_idle_instances: bool = Field(default=False, description="Stop managed instances that run no job.")
    checkpoint_and_stop_over_budget: bool = Field(
        default=False, description="Ask an over-budget job to checkpoint, then stop its instance."
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        # An hourly cap above the daily cap is always a typo (one hour can never cost more than its day).
        if self.max_hourly_usd > self.max_daily_usd:
            raise ValueError(
                f"max_hourly_usd ({self.max_hourly_usd}) is above max_daily_usd ({self.max_daily_usd}); "
                "raise max_daily_usd or lower max_hourly_usd"
            )
        return self

    @classmethod
    def load_or_default(cls, name: str | None = None) -> CostPolicy:
        """The saved policy `name`, or the defaults when no name is given."""
        return cls() if name is None else load_block(cls, name)
