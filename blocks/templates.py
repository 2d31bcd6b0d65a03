"""The InstanceTemplate block: what a training instance is (type, AMI, network, profile, root size, tags).

Saved once (`InstanceTemplate(instance_type="g5.xlarge", ...).save("gpu")`) and named by jobs
(`JobSpec(template="gpu")`); a JobSpec may also carry the same fields inline (core.launch.TemplateSpec).
"""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import Field

from blocks.aws import load_block
from core.jobs import TemplateSpec


class InstanceTemplate(Block):
    """Instance type, AMI (or the SSM public parameter naming it), subnet/AZ, security groups, profile, root size."""

    _block_type_name: ClassVar[str | None] = "Trainctl Instance Template"
    _description: ClassVar[str | None] = (
        "What a trainctl training instance is. The AZ follows the job's data volume when it has one."
    )

    instance_type: str = Field(description="EC2 instance type, e.g. g5.xlarge.")
    image_id: str | None = Field(default=None, description="AMI ID; default: image_parameter, else Amazon Linux 2023.")
    image_parameter: str | None = Field(
        default=None, description="SSM public parameter naming the AMI (e.g. a Deep Learning AMI's)."
    )
    subnet_id: str | None = Field(default=None, description="Subnet (fixes the AZ).")
    availability_zone: str | None = Field(default=None, description="AZ when no subnet is given.")
    security_group_ids: list[str] = Field(default_factory=list)
    instance_profile: str | None = Field(default=None, description="Instance profile: SSM + S3 access to the bucket.")
    root_volume_gib: int | None = Field(default=None, description="Root volume size; default the AMI's.")
    extra_tags: dict[str, str] = Field(default_factory=dict, description="Tags added to the instance and its root.")

    def to_spec(self) -> TemplateSpec:
        """The fields, validated as a JobSpec's inline template is."""
        return TemplateSpec(**{name: getattr(self, name) for name in TemplateSpec.model_fields})


def load_template(template: str | TemplateSpec) -> TemplateSpec:
    """A JobSpec's template: the inline fields, or the saved block of that name."""
    if isinstance(template, TemplateSpec):
        return template
    return load_block(InstanceTemplate, template).to_spec()
