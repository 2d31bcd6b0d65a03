"""EBS volume specifications and their limits, checked before any AWS call.

Limits are the CreateVolume API reference's (gp3 3,000–16,000 IOPS and 125–1,000 MiB/s; io1 100–64,000 IOPS at
most 50 per GiB; io2 100–256,000 IOPS at most 1,000 per GiB; sizes per type). AWS raises limits from time to
time: this table is the one place to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.errors import InvalidInputError
from core.ids import validate_id
from core.names import NameKind, validate_name

VolumeType = Literal["gp3", "gp2", "io1", "io2", "st1", "sc1", "standard"]


@dataclass(frozen=True)
class VolumeLimits:
    min_size_gib: int
    max_size_gib: int
    iops: tuple[int, int] | None = None  # provisionable IOPS range, None = not settable
    iops_per_gib: int | None = None
    iops_required: bool = False
    throughput: tuple[int, int] | None = None  # MiB/s, gp3 only
    default_iops: int | None = None
    default_throughput: int | None = None


LIMITS: dict[str, VolumeLimits] = {
    "gp3": VolumeLimits(
        1,
        16_384,
        iops=(3_000, 16_000),
        iops_per_gib=500,
        throughput=(125, 1_000),
        default_iops=3_000,
        default_throughput=125,
    ),
    "gp2": VolumeLimits(1, 16_384),
    "io1": VolumeLimits(4, 16_384, iops=(100, 64_000), iops_per_gib=50, iops_required=True),
    "io2": VolumeLimits(4, 65_536, iops=(100, 256_000), iops_per_gib=1_000, iops_required=True),
    "st1": VolumeLimits(125, 16_384),
    "sc1": VolumeLimits(125, 16_384),
    "standard": VolumeLimits(1, 1_024),
}
# gp3 throughput may be at most 0.25 MiB/s per provisioned IOPS.
GP3_MIBPS_PER_IOPS = 0.25


class VolumeSpec(BaseModel):
    """What the user asks for when creating a volume. Validated in full before CreateVolume is called."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="volume name, unique among trainctl volumes")
    size_gib: int = Field(description="size in GiB")
    volume_type: VolumeType = Field(default="gp3", description="EBS volume type")
    iops: int | None = Field(default=None, description="provisioned IOPS (gp3, io1, io2)")
    throughput: int | None = Field(default=None, description="throughput in MiB/s (gp3)")
    encrypted: bool = Field(default=True, description="encrypt the volume at rest")
    kms_key_id: str | None = Field(
        default=None, description="KMS key to encrypt with; default: the account's default EBS key"
    )
    persistent: bool = Field(default=True, description="kept (detached) when its instance goes; false: deleted with it")
    protected: bool = Field(default=False, description="never deleted by cleanup; deleting it needs force")
    snapshot_id: str | None = Field(default=None, description="create the volume from this snapshot (snap-…)")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_name(NameKind.RESOURCE, value, field="name")

    @field_validator("snapshot_id")
    @classmethod
    def _snapshot_id(cls, value: str | None) -> str | None:
        return None if value is None else validate_id("snapshot", value, field="snapshot_id")

    @model_validator(mode="after")
    def _within_limits(self) -> VolumeSpec:
        check_volume_limits(self.volume_type, self.size_gib, self.iops, self.throughput)
        return self


def check_volume_limits(volume_type: str, size_gib: int, iops: int | None, throughput: int | None) -> None:
    """Raise InvalidInputError naming the field when a value is outside what AWS accepts for the type."""
    limits = LIMITS.get(volume_type)
    if limits is None:
        raise InvalidInputError("volume_type", volume_type, f"one of {', '.join(LIMITS)}")
    if not limits.min_size_gib <= size_gib <= limits.max_size_gib:
        raise InvalidInputError(
            "size_gib", size_gib, f"{limits.min_size_gib}–{limits.max_size_gib} GiB for {volume_type}"
        )
    if iops is not None:
        if limits.iops is None:
            raise InvalidInputError(
                "iops", iops, f"no value: {volume_type} volumes have no provisioned IOPS", fix="Leave iops unset."
            )
        low, high = limits.iops
        if not low <= iops <= high:
            raise InvalidInputError("iops", iops, f"{low}–{high} for {volume_type}")
        if limits.iops_per_gib and iops > limits.iops_per_gib * size_gib:
            raise InvalidInputError(
                "iops",
                iops,
                f"at most {limits.iops_per_gib} IOPS per GiB for {volume_type} "
                f"({limits.iops_per_gib * size_gib} for {size_gib} GiB)",
                fix="Lower iops or make the volume larger.",
            )
    elif limits.iops_required:
        raise InvalidInputError("iops", None, f"a value: {volume_type} volumes need provisioned IOPS")
    if throughput is not None:
        if limits.throughput is None:
            raise InvalidInputError("throughput", throughput, f"no value: only gp3 takes throughput, not {volume_type}")
        low, high = limits.throughput
        if not low <= throughput <= high:
            raise InvalidInputError("throughput", throughput, f"{low}–{high} MiB/s for gp3")
        effective_iops = iops or limits.default_iops or 0
        if throughput > effective_iops * GP3_MIBPS_PER_IOPS:
            raise InvalidInputError(
                "throughput",
                throughput,
                f"at most {GP3_MIBPS_PER_IOPS} MiB/s per IOPS ({int(effective_iops * GP3_MIBPS_PER_IOPS)} MiB/s "
                f"at {effective_iops} IOPS)",
                fix="Raise iops along with throughput.",
            )


def nvme_serial(volume_id: str) -> str:
    """How a Nitro instance names the volume's device: the ID without its dash (`vol0123...`)."""
    return volume_id.replace("-", "", 1)


def device_by_id_path(volume_id: str) -> str:
    """The stable device path of an attached EBS volume on a Nitro instance (before the $TRAINCTL_ROOT prefix)."""
    return f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{nvme_serial(volume_id)}"


def mount_point(volume_id: str) -> str:
    """Where trainctl mounts a data volume on an instance."""
    return f"/mnt/trainctl/{volume_id}"
