"""train-launch's data step: which strategy feeds the job its dataset (JobSpec.data), and getting it ready.

`plan_data` decides before any mutation: `auto` takes the advice's choice (flows/data.advise_data, in the job's AZ
and for its instance type), an explicit strategy is checked by the same advice (an impossible one is refused with
its numbers and the strategy that fits), and the AZ the data fixes is returned (a prewarmed volume's). `apply_data`
then acts: `prewarmed-ebs` runs the prewarm (which reuses a volume already holding the dataset: no second prewarm
instance) and the job continues as an existing-volume job on that volume. The job's spec comes back resolved — the
strategy that runs, and its volume — so that the record, spot-watch's resumes and the agent all see the same data.
"""

from __future__ import annotations

import hashlib
import time

from pydantic import BaseModel, Field

from blocks.aws import load_account
from core.data import Advice, AdviceRequest, Estimate, needed_gib
from core.ebs import VolumeSpec
from core.jobs import DataStrategy, JobSpec, TemplateSpec
from core.models import Volume
from core.prewarm import PrewarmSpec
from flows.data import advise_data
from flows.prewarm import prewarm
from tasks.ebs import describe_volume, find_dataset_volumes, resolve_availability_zone


class DataPlan(BaseModel):
    """What the data step will do, decided before any mutation."""

    strategy: DataStrategy = Field(description="the strategy that runs (never auto)")
    why: str = Field(description="why this strategy: the advice's reason, or the user's volume")
    zone: str | None = Field(default=None, description="the AZ the data fixes for the instance (None: no constraint)")
    estimate: Estimate | None = Field(default=None, description="the advice's estimate for this strategy")
    dataset_bytes: int = Field(default=0, description="the dataset's size, from the advice's listing")


class DataReport(BaseModel):
    """What the data step did: in the launch's report and artifact."""

    strategy: DataStrategy
    why: str
    seconds: float = Field(description="how long the data step took in the launch (a prewarm, when one ran)")
    volume_id: str | None = None
    estimate_first_batch_s: float | None = Field(default=None, description="the advice's time to the first batch")
    estimate_usd: float | None = Field(default=None, description="the advice's cost of the data for this run")


def plan_data(spec: JobSpec, template: TemplateSpec, zone: str | None, volume: Volume | None) -> DataPlan | None:
    """The data strategy of this launch (None: the job has no data). Raises on an impossible one."""
    if volume is not None:
        why = f"the job's data volume {volume.id}"
        if spec.data and not volume.attached_instance_id:
            # The advice checks the dataset fits the volume (its AZ and use were checked by the launch already).
            advice = _advice(spec, template, None, DataStrategy.EXISTING_EBS, volume.id)
            why = f"{why}; {advice.reason}"
        # prewarmed-ebs with a volume: the volume is the dataset's prewarm (a resolved spec, or the user's word).
        strategy = DataStrategy.PREWARMED_EBS if spec.data_strategy == DataStrategy.PREWARMED_EBS else None
        return DataPlan(strategy=strategy or DataStrategy.EXISTING_EBS, why=why, zone=volume.availability_zone)
    if spec.data is None:
        return None
    advice = _advice(spec, template, zone, spec.data_strategy, None)
    chosen = advice.estimate(advice.chosen)
    plan = DataPlan(
        strategy=advice.chosen, why=advice.reason, zone=zone, estimate=chosen, dataset_bytes=advice.dataset_bytes
    )
    if plan.strategy == DataStrategy.PREWARMED_EBS and zone is None:
        plan.zone = _prewarm_zone(spec, template)
    return plan


def _advice(
    spec: JobSpec, template: TemplateSpec, zone: str | None, strategy: DataStrategy, volume_id: str | None
) -> Advice:
    request = AdviceRequest.for_job(spec, template.instance_type, zone=zone, strategy=strategy, volume_id=volume_id)
    return advise_data(request)


def _prewarm_zone(spec: JobSpec, template: TemplateSpec) -> str:
    """Where a prewarmed volume serves a job free to run anywhere: a free volume already holding the dataset's AZ,
    else the first AZ offering the job's instance type (a new prewarm goes there)."""
    assert spec.data is not None
    free = sorted(
        (v for v in find_dataset_volumes(spec.data, account=spec.account) if v.state == "available"),
        key=lambda v: v.id,
    )
    if free and free[0].availability_zone:
        return free[0].availability_zone
    ec2 = load_account(spec.account).client("ec2")
    return resolve_availability_zone(ec2, instance_type=template.instance_type)


def apply_data(spec: JobSpec, plan: DataPlan, template: TemplateSpec) -> tuple[JobSpec, Volume | None, DataReport]:
    """Get the data ready (a prewarm for prewarmed-ebs) and return the spec resolved to what runs, the data volume
    (None: the launch's own), and the report of the step."""
    started = time.monotonic()
    resolved = spec.model_copy(update={"data_strategy": plan.strategy})
    volume: Volume | None = None
    why = plan.why
    if plan.strategy == DataStrategy.PREWARMED_EBS and spec.data_volume_id is None:
        report = prewarm(_prewarm_spec(spec, template, plan))
        volume = describe_volume(report.volume_id, account=spec.account)
        resolved = resolved.model_copy(update={"data_volume_id": volume.id})
        why = f"{why}; prewarm: {report.path} {volume.id} ({report.why})"
    estimate = plan.estimate
    return (
        resolved,
        volume,
        DataReport(
            strategy=plan.strategy,
            why=why,
            seconds=round(time.monotonic() - started, 1),
            volume_id=resolved.data_volume_id,
            estimate_first_batch_s=estimate.first_batch_s if estimate else None,
            estimate_usd=estimate.cost.total_usd if estimate else None,
        ),
    )


def _prewarm_spec(spec: JobSpec, template: TemplateSpec, plan: DataPlan) -> PrewarmSpec:
    """The prewarm of the job's dataset: a gp3 volume of the dataset plus headroom, named after the dataset (it is
    the dataset's, not the job's: later jobs reuse it), filled by a temporary instance in the job's AZ."""
    assert spec.data is not None
    size_gib = needed_gib(plan.dataset_bytes)
    digest = hashlib.sha256(spec.data.encode()).hexdigest()[:12]
    return PrewarmSpec(
        source=spec.data,
        volume=VolumeSpec(name=f"dataset-{digest}", size_gib=size_gib),
        availability_zone=plan.zone,
        instance_profile=template.instance_profile,
        security_group_ids=template.security_group_ids,
        subnet_id=template.subnet_id,
        filesystem=spec.filesystem,
        account=spec.account,
    )
