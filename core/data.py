"""Data strategies: how a job gets its dataset, and which way is fastest for it (pure: no boto3, no Prefect, no I/O).

Four strategies: `direct-s3` (the trainer reads S3 itself), `local-cache` (copied onto the instance's NVMe
instance store before each run), `prewarmed-ebs` (a gp3 volume filled once by a prewarm — or one that already
holds this dataset — attached to each run) and `existing-ebs` (a volume the user names). `advise` estimates, for
each, the time to the first batch, the I/O-bound time per epoch and the cost, says which are possible (and why
not), and picks the one with the least data time over all the planned runs (the cheaper one when two are within
10%). The figures are the named constants below, each with its source; they are estimates for choosing, not
promises: a trainer's own compute usually hides part of the I/O time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator

from core import tags as t
from core.cost import FALLBACK_DATE, GP3_FREE_IOPS, GP3_FREE_THROUGHPUT_MIBPS, HOURS_PER_MONTH, PriceBook
from core.ebs import GP3_MIBPS_PER_IOPS, LIMITS
from core.errors import InvalidInputError
from core.ids import validate_availability_zone, validate_id, validate_instance_type
from core.jobs import DataStrategy as Strategy  # a JobSpec field: core.cost imports core.jobs, which can't import us
from core.jobs import JobSpec
from core.models import Volume
from core.s3uri import parse_s3_uri

MB = 1_000_000  # S3, network and instance-store figures are decimal
MIB = 1024 * 1024  # EBS throughput is MiB/s
GB = 1_000_000_000  # instance store sizes (TotalSizeInGB) are decimal GB
GIB = 1024**3  # EBS sizes are GiB

# -- EBS gp3: https://docs.aws.amazon.com/ebs/latest/userguide/general-purpose.html (limits in core/ebs.py) ---------
GP3_BASELINE_MIBPS = GP3_FREE_THROUGHPUT_MIBPS  # 125 MiB/s included
GP3_BASELINE_IOPS = GP3_FREE_IOPS  # 3,000 IOPS included
GP3_MAX_MIBPS = LIMITS["gp3"].throughput[1] if LIMITS["gp3"].throughput else 1000  # provisioned up to 1,000 MiB/s
GP3_MAX_IOPS = LIMITS["gp3"].iops[1] if LIMITS["gp3"].iops else 16000  # provisioned up to 16,000
# EBS counts one I/O per 256 KiB at most (docs: "I/O characteristics and monitoring"): a small file is one I/O.
EBS_IO_BYTES = 256 * 1024
# Attach + mount of a volume that exists (an estimate: AWS publishes no figure; seconds in practice).
ATTACH_S = 15.0

# -- instance store NVMe: https://docs.aws.amazon.com/ec2/latest/instancetypes/ (instance store volume
# performance tables). Conservative per-device figures, below the smallest current SSD device listed there
# (g4dn.xlarge: 42,500 random-read IOPS); one device is counted even when a type has several (no striping).
NVME_MBPS_PER_DEVICE = 1000.0
NVME_IOPS_PER_DEVICE = 40_000
# Room left for the filesystem and the trainer's own files: a dataset may fill 90% of the store.
LOCAL_CACHE_USABLE = 0.9
# Formatting and mounting the store before the copy (an estimate: mkfs on an empty NVMe takes seconds).
LOCAL_CACHE_SETUP_S = 10.0

# -- S3: https://docs.aws.amazon.com/AmazonS3/latest/userguide/optimizing-performance.html and its
# design-patterns page: 85-90 MB/s per connection ("one concurrent request per 85-90 MB/s"), at least 5,500
# GET/HEAD requests per second per prefix, first-byte latencies of 100-200 ms for small requests.
S3_MBPS_PER_CONNECTION = 85.0
S3_GETS_PER_SECOND_PER_PREFIX = 5500
S3_FIRST_BYTE_S = 0.1
# A large object is read in ranged GETs of this size (s5cmd's and most loaders' default part size: 8 MiB).
S3_GET_BYTES = 8 * MIB
# Concurrent requests: a trainer's data loader (the parallelism trainctl advises it; PR #750 in the seeds needed
# 64 loaders for ResNet-18) and s5cmd (its default --numworkers is 256) for copies.
DIRECT_S3_CONNECTIONS = 32
COPY_CONNECTIONS = 256
# S3 Standard GET price, us-east-1, https://aws.amazon.com/s3/pricing/ (same date as core/cost.py's fallback).
S3_GET_USD_PER_1000 = 0.0004
S3_GET_PRICE_SOURCE = f"fallback {FALLBACK_DATE}"

# -- snapshots: https://docs.aws.amazon.com/ebs/latest/userguide/ebs-initialize.html — a volume restored from a
# snapshot fetches each block from S3 on its first read. AWS publishes no rate; these are conservative estimates.
SNAPSHOT_LAZY_MBPS = 40.0  # first read of a block of a fresh restore
SNAPSHOT_CREATE_MBPS = 100.0  # a first (full) snapshot of the prewarmed volume
RESTORE_S = 60.0  # CreateVolume from a snapshot until `available`, then attach
# Fast Snapshot Restore removes the lazy-loading penalty: $0.75 per snapshot per AZ-hour, 1 hour minimum
# (https://aws.amazon.com/ebs/pricing/, us-east-1).
FSR_USD_PER_AZ_HOUR = 0.75

# -- prewarm: the temporary instance (core/prewarm.py's default type) launches, comes online over SSM, formats the
# volume, copies, verifies and detaches. The fixed part is an estimate (a few minutes in the sandbox and on AWS).
PREWARM_OVERHEAD_S = 300.0
# A prewarmed volume is the dataset plus headroom for the filesystem (and a re-sync's changed files).
PREWARM_HEADROOM = 1.15

DEFAULT_HOURS_PER_RUN = 4.0  # how long one run keeps its volume, when the user does not say
TIE_FRACTION = 0.10  # data times within 10% count as equal: the cheaper strategy wins
# A tag value is at most 256 characters: a longer dataset URI is tagged as its digest.
TAG_VALUE_MAX = 256


STRATEGIES = (Strategy.DIRECT_S3, Strategy.LOCAL_CACHE, Strategy.PREWARMED_EBS, Strategy.EXISTING_EBS)


def dataset_filters(uri: str) -> list[dict[str, Any]]:
    """DescribeVolumes filters for the finished prewarms of this dataset (managed filter sets are added by tasks)."""
    return [
        {"Name": f"tag:{t.DATASET}", "Values": [t.dataset_tag_value(uri)]},
        {"Name": f"tag:{t.PREWARM}", "Values": [t.PREWARM_DONE]},
    ]


class InstanceTypeIO(BaseModel):
    """What an instance type can read at: its instance store and its sustained network and EBS bandwidth."""

    model_config = ConfigDict(frozen=True)

    instance_type: str
    instance_store_gb: int = Field(default=0, ge=0, description="total instance store (TotalSizeInGB); 0 = none")
    instance_store_disks: int = Field(default=0, ge=0)
    network_gbps: float = Field(gt=0, description="baseline (sustained) bandwidth of the default network card")
    ebs_mbps: float = Field(gt=0, description="baseline EBS throughput of the instance (MB/s)")
    ebs_iops: int = Field(gt=0, description="baseline EBS IOPS of the instance")

    @property
    def network_mbps(self) -> float:
        return self.network_gbps * 1000 / 8

    @classmethod
    def from_aws(cls, data: Mapping[str, Any]) -> InstanceTypeIO:
        """Build from one DescribeInstanceTypes `InstanceTypes[]` element (sustained figures, not the bursts)."""
        storage = data.get("InstanceStorageInfo") or {}
        network = data.get("NetworkInfo") or {}
        cards = network.get("NetworkCards") or []
        default = network.get("DefaultNetworkCardIndex", 0)
        card = next((c for c in cards if c.get("NetworkCardIndex") == default), cards[0] if cards else {})
        ebs = (data.get("EbsInfo") or {}).get("EbsOptimizedInfo") or {}
        return cls(
            instance_type=str(data["InstanceType"]),
            instance_store_gb=int(storage.get("TotalSizeInGB", 0)),
            instance_store_disks=sum(int(d.get("Count", 1)) for d in storage.get("Disks", [])),
            network_gbps=float(card.get("BaselineBandwidthInGbps") or _gbps(network.get("NetworkPerformance", ""))),
            ebs_mbps=float(ebs.get("BaselineThroughputInMBps") or GP3_BASELINE_MIBPS * MIB / MB),
            ebs_iops=int(ebs.get("BaselineIops") or GP3_BASELINE_IOPS),
        )


def _gbps(performance: str) -> float:
    """`10 Gigabit`, `Up to 10 Gigabit` → Gb/s; "up to" (a burst) counts a quarter; unknown → 0.5 (Low/Moderate)."""
    numbers = [float(w) for w in performance.split() if w.replace(".", "", 1).isdigit()]
    if not numbers:
        return 0.5
    return numbers[0] / 4 if performance.lower().startswith("up to") else numbers[0]


class AdviceRequest(BaseModel):
    """What a user asks the advice about (`trainctl data advise`); checked in full before AWS is asked anything."""

    dataset_uri: str = Field(description="s3://bucket/prefix of the dataset")
    instance_type: str = Field(description="the training instance type")
    runs: int = Field(default=1, ge=1, description="how many runs will read the dataset")
    epochs: int = Field(default=1, ge=1, description="passes over the dataset per run")
    hours_per_run: float = Field(default=DEFAULT_HOURS_PER_RUN, gt=0, description="how long a run keeps its data")
    availability_zone: str | None = Field(default=None, description="the job's AZ; None: wherever fits best")
    volume_id: str | None = Field(default=None, description="an existing volume holding the dataset")
    strategy: Strategy = Strategy.AUTO
    account: str | None = Field(default=None, description="AwsAccount block name; default: the AWS environment")

    @classmethod
    def for_job(
        cls,
        spec: JobSpec,
        instance_type: str,
        *,
        zone: str | None,
        strategy: Strategy,
        volume_id: str | None,
    ) -> AdviceRequest:
        """The advice a launch asks for its job: its dataset, type and AZ, and the runs and epochs it plans."""
        if spec.data is None:
            raise InvalidInputError("data", None, "the dataset's s3:// URI to advise on (--data s3://…)")
        return cls(
            dataset_uri=spec.data,
            instance_type=instance_type,
            runs=spec.data_runs,
            epochs=spec.data_epochs,
            availability_zone=zone,
            volume_id=volume_id,
            strategy=strategy,
            account=spec.account,
        )

    @field_validator("dataset_uri")
    @classmethod
    def _s3(cls, value: str) -> str:
        parse_s3_uri(value, field="dataset")
        return value

    @field_validator("instance_type")
    @classmethod
    def _type(cls, value: str) -> str:
        return validate_instance_type(value)

    @field_validator("availability_zone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value is None else validate_availability_zone(value)

    @field_validator("volume_id")
    @classmethod
    def _volume(cls, value: str | None) -> str | None:
        return None if value is None else validate_id("volume", value)


class DataInputs(BaseModel):
    """What the advice needs: the dataset (one S3 listing), the plan, the instance types, and the volumes."""

    dataset_uri: str
    dataset_bytes: int = Field(ge=0)
    file_count: int = Field(ge=0)
    runs: int = Field(default=1, ge=1)
    epochs: int = Field(default=1, ge=1)
    hours_per_run: float = Field(default=DEFAULT_HOURS_PER_RUN, gt=0, description="how long a run keeps its data")
    instance: InstanceTypeIO
    prewarm_instance: InstanceTypeIO = Field(description="the temporary instance a new prewarm would use")
    availability_zone: str | None = Field(default=None, description="the job's AZ; None: wherever fits best")
    prewarmed: list[Volume] = Field(default_factory=list, description="finished prewarms of this dataset")
    existing_volume: Volume | None = Field(default=None, description="a volume the user says holds the dataset")
    requested: Strategy = Strategy.AUTO


class Cost(BaseModel):
    """USD attributable to the planned runs; None where a price is unknown (never counted as $0)."""

    ebs_usd: float | None = 0.0
    prewarm_usd: float | None = 0.0
    s3_get_usd: float = 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_usd(self) -> float | None:
        if self.ebs_usd is None or self.prewarm_usd is None:
            return None
        return round(self.ebs_usd + self.prewarm_usd + self.s3_get_usd, 4)


class Estimate(BaseModel):
    """One strategy for this dataset and plan. Times in seconds; `total_s` is the data time of all the runs."""

    strategy: Strategy
    possible: bool = True
    why_not: str | None = None
    setup_s: float = 0.0  # once, before the first run (a prewarm, a cross-AZ copy)
    start_s: float = 0.0  # each run, before its first batch (attach, copy to the instance store)
    epoch_s: float = 0.0  # one pass over the data, bound by I/O
    first_epoch_extra_s: float = 0.0  # the first pass of a volume restored from a snapshot (lazy loading)
    total_s: float = 0.0
    cost: Cost = Field(default_factory=Cost)
    plan: str = ""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def first_batch_s(self) -> float:
        """Time to the first batch of the first run."""
        return round(self.setup_s + self.start_s, 1)


class Advice(BaseModel):
    dataset_uri: str
    dataset_bytes: int
    file_count: int
    instance_type: str
    availability_zone: str | None
    runs: int
    epochs: int
    estimates: list[Estimate]
    chosen: Strategy
    reason: str
    price_source: str

    def estimate(self, strategy: Strategy) -> Estimate:
        return next(e for e in self.estimates if e.strategy == strategy)


# -- reading: S3 over connections, a block device by throughput and IOPS ----------------------------------------


def s3_read_s(size: int, files: int, connections: int, network_mbps: float) -> float:
    """Seconds to GET `files` objects totalling `size` bytes over `connections` concurrent requests: the slowest of
    the connections' own work (a first-byte latency per object, then the transfer), the instance's network, and
    the prefix's request rate. Many small files are bound by the latency, big ones by the bandwidth."""
    requests = s3_requests(size, files)
    per_connection = (files * S3_FIRST_BYTE_S + size / (S3_MBPS_PER_CONNECTION * MB)) / connections
    return max(per_connection, size / (network_mbps * MB), requests / S3_GETS_PER_SECOND_PER_PREFIX)


def s3_requests(size: int, files: int) -> int:
    """GET requests for one pass: one per object, or one per 8 MiB range of a large one."""
    return max(files, math.ceil(size / S3_GET_BYTES))


def block_read_s(size: int, files: int, mbps: float, iops: float) -> float:
    """Seconds to read every file of a block device: bound by its throughput, or by its IOPS (each file at least
    one I/O, each 256 KiB another) when the files are small."""
    ios = files + size / EBS_IO_BYTES
    return max(size / (mbps * MB), ios / iops)


def needed_gib(dataset_bytes: int) -> int:
    """The size a volume needs to take a dataset: its bytes plus PREWARM_HEADROOM (the filesystem, and a re-sync's
    changed files, which land in a partial folder before the old ones go), in whole GiB."""
    return max(1, math.ceil(dataset_bytes * PREWARM_HEADROOM / GIB))


def _gp3_for(size: int, files: int, instance: InstanceTypeIO) -> Volume:
    """The gp3 volume a new prewarm makes: the dataset plus headroom; throughput up to what the instance's EBS link
    carries; IOPS enough that the files' count binds no sooner than the throughput does (at least the baseline
    and throughput/0.25, at most 16,000, 500 per GiB and the instance's own)."""
    size_gib = needed_gib(size)
    throughput = max(GP3_BASELINE_MIBPS, int(min(GP3_MAX_MIBPS, instance.ebs_mbps * MB / MIB)))
    read_s = size / (min(throughput * MIB / MB, instance.ebs_mbps) * MB)
    needed = max(math.ceil((files + size / EBS_IO_BYTES) / read_s), math.ceil(throughput / GP3_MIBPS_PER_IOPS))
    cap = min(GP3_MAX_IOPS, (LIMITS["gp3"].iops_per_gib or 500) * size_gib, instance.ebs_iops)
    iops = max(GP3_BASELINE_IOPS, min(needed, cap))
    return _volume("new", size_gib, iops=iops, throughput=min(throughput, int(iops * GP3_MIBPS_PER_IOPS)))


def _volume(volume_id: str, size_gib: int, *, iops: int, throughput: int, zone: str | None = None) -> Volume:
    # A model only for pricing and reading rates: the creation time is irrelevant (no clock in core).
    return Volume(
        id=volume_id,
        created_at=datetime(1970, 1, 1, tzinfo=UTC),
        state="available",
        availability_zone=zone,
        size_gib=size_gib,
        volume_type="gp3",
        iops=iops,
        throughput=throughput,
    )


def _ebs_epoch_s(inputs: DataInputs, volume: Volume) -> float:
    """One pass over the dataset on `volume`, capped by the instance's own EBS bandwidth."""
    baseline = LIMITS.get(volume.volume_type)
    volume_mibps = volume.throughput or (baseline.default_throughput if baseline else None) or GP3_BASELINE_MIBPS
    volume_iops = volume.iops or (baseline.default_iops if baseline else None) or GP3_BASELINE_IOPS
    mbps = min(volume_mibps * MIB / MB, inputs.instance.ebs_mbps)
    return block_read_s(inputs.dataset_bytes, inputs.file_count, mbps, min(volume_iops, inputs.instance.ebs_iops))


def _volume_usd(volume: Volume, hours: float, book: PriceBook) -> float | None:
    monthly = book.volume_monthly(volume)
    return None if monthly is None else round(monthly * hours / HOURS_PER_MONTH, 4)


def _get_usd(requests: int) -> float:
    return round(requests * S3_GET_USD_PER_1000 / 1000, 4)


def size_text(size: float) -> str:
    """Bytes for people: `18.6 GB`, `2.0 TB`, `512 MB` (decimal, as S3 and the instance store count)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} B"


def duration(seconds: float) -> str:
    """`0.4 s`, `45 s`, `12 min`, `3.4 h`: for tables and reasons."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# -- the strategies -----------------------------------------------------------------------------------------------


def _impossible(strategy: Strategy, why: str) -> Estimate:
    return Estimate(strategy=strategy, possible=False, why_not=why)


def _direct_s3(inputs: DataInputs, book: PriceBook) -> Estimate:
    size, files = inputs.dataset_bytes, inputs.file_count
    requests = s3_requests(size, files) * inputs.epochs * inputs.runs
    return Estimate(
        strategy=Strategy.DIRECT_S3,
        start_s=S3_FIRST_BYTE_S,
        epoch_s=s3_read_s(size, files, DIRECT_S3_CONNECTIONS, inputs.instance.network_mbps),
        cost=Cost(s3_get_usd=_get_usd(requests)),
        plan=f"the trainer reads S3 itself (TRAINCTL_DATA_URI) with {DIRECT_S3_CONNECTIONS} parallel requests; "
        "every epoch reads S3 again",
    )


def _local_cache(inputs: DataInputs, book: PriceBook) -> Estimate:
    instance, size, files = inputs.instance, inputs.dataset_bytes, inputs.file_count
    if instance.instance_store_gb == 0:
        return _impossible(Strategy.LOCAL_CACHE, f"{instance.instance_type} has no instance store")
    usable = instance.instance_store_gb * GB * LOCAL_CACHE_USABLE
    if size > usable:
        return _impossible(
            Strategy.LOCAL_CACHE,
            f"the dataset ({size_text(size)}) is larger than {instance.instance_type}'s instance store "
            f"({instance.instance_store_gb} GB, {size_text(usable)} usable)",
        )
    local = block_read_s(size, files, NVME_MBPS_PER_DEVICE, NVME_IOPS_PER_DEVICE)
    copy = max(s3_read_s(size, files, COPY_CONNECTIONS, instance.network_mbps), local)
    return Estimate(
        strategy=Strategy.LOCAL_CACHE,
        start_s=LOCAL_CACHE_SETUP_S + copy,
        epoch_s=local,
        cost=Cost(s3_get_usd=_get_usd(s3_requests(size, files) * inputs.runs)),
        plan=f"copy it onto the {instance.instance_store_gb} GB NVMe instance store with s5cmd before each run "
        f"({duration(copy)}; the store is emptied when the instance stops), then read it locally",
    )


def _prewarmed_ebs(inputs: DataInputs, book: PriceBook) -> Estimate:
    zone = inputs.availability_zone
    ready = sorted(
        (v for v in inputs.prewarmed if not v.attached and (zone is None or v.availability_zone == zone)),
        key=lambda v: v.id,
    )
    if ready and ready[0].size_gib < needed_gib(inputs.dataset_bytes):
        # The prewarm would re-sync this volume (the dataset grew since) and refuses: it no longer fits.
        volume, need = ready[0], needed_gib(inputs.dataset_bytes)
        return _impossible(
            Strategy.PREWARMED_EBS,
            f"{volume.id} ({volume.size_gib} GiB) holds an older version of the dataset, which is now "
            f"{size_text(inputs.dataset_bytes)} and needs {need} GiB (trainctl ebs prewarm --no-reuse --size {need})",
        )
    if ready:
        return _reuse(inputs, ready[0], book)
    if inputs.prewarmed:  # in another AZ, or in use by another job: a copy from a snapshot
        return _restored_copy(inputs, sorted(inputs.prewarmed, key=lambda v: v.id)[0], book)
    return _new_prewarm(inputs, book)


def _reuse(inputs: DataInputs, volume: Volume, book: PriceBook) -> Estimate:
    hours = inputs.runs * inputs.hours_per_run
    return Estimate(
        strategy=Strategy.PREWARMED_EBS,
        start_s=ATTACH_S,
        epoch_s=_ebs_epoch_s(inputs, volume),
        cost=Cost(ebs_usd=_volume_usd(volume, hours, book)),
        plan=f"reuse {volume.id} ({volume.availability_zone}), already prewarmed with this dataset: "
        "attach it to each run, no new prewarm",
    )


def _restored_copy(inputs: DataInputs, source: Volume, book: PriceBook) -> Estimate:
    size = inputs.dataset_bytes
    copy = _volume(
        "copy",
        source.size_gib,
        iops=source.iops or GP3_BASELINE_IOPS,
        throughput=source.throughput or GP3_BASELINE_MIBPS,
        zone=inputs.availability_zone,
    )
    setup = size / (SNAPSHOT_CREATE_MBPS * MB) + RESTORE_S
    epoch = _ebs_epoch_s(inputs, copy)
    lazy = max(0.0, size / (SNAPSHOT_LAZY_MBPS * MB) - epoch)
    hours = setup / 3600 + inputs.runs * inputs.hours_per_run
    where = f"into {inputs.availability_zone}" if inputs.availability_zone else "where the job runs"
    busy = f", attached to {source.attached_instance_id}" if source.attached else ""
    return Estimate(
        strategy=Strategy.PREWARMED_EBS,
        setup_s=setup,
        start_s=ATTACH_S,
        epoch_s=epoch,
        first_epoch_extra_s=lazy,
        cost=Cost(ebs_usd=_volume_usd(copy, hours, book)),
        plan=f"copy {source.id} ({source.availability_zone}{busy}) {where} from a snapshot; the copy's first "
        f"epoch is {duration(lazy)} slower while its blocks load from S3, unless Fast Snapshot Restore is on "
        f"(${FSR_USD_PER_AZ_HOUR:.2f} per AZ-hour, 1 hour minimum)",
    )


def _new_prewarm(inputs: DataInputs, book: PriceBook) -> Estimate:
    size, files, helper = inputs.dataset_bytes, inputs.file_count, inputs.prewarm_instance
    max_gib = LIMITS["gp3"].max_size_gib
    if size * PREWARM_HEADROOM > max_gib * GIB:
        return _impossible(
            Strategy.PREWARMED_EBS,
            f"the dataset ({size_text(size)}) is larger than a gp3 volume can be ({max_gib} GiB)",
        )
    volume = _gp3_for(size, files, inputs.instance)
    write_mbps = min(helper.ebs_mbps, (volume.throughput or GP3_BASELINE_MIBPS) * MIB / MB)
    write = block_read_s(size, files, write_mbps, min(volume.iops or GP3_BASELINE_IOPS, helper.ebs_iops))
    setup = PREWARM_OVERHEAD_S + max(s3_read_s(size, files, COPY_CONNECTIONS, helper.network_mbps), write)
    price = book.instances.get(helper.instance_type)
    hours = setup / 3600 + inputs.runs * inputs.hours_per_run
    return Estimate(
        strategy=Strategy.PREWARMED_EBS,
        setup_s=setup,
        start_s=ATTACH_S,
        epoch_s=_ebs_epoch_s(inputs, volume),
        cost=Cost(
            ebs_usd=_volume_usd(volume, hours, book),
            prewarm_usd=None if price is None else round(price.usd * setup / 3600, 4),
            s3_get_usd=_get_usd(s3_requests(size, files)),
        ),
        plan=f"prewarm a new gp3 volume ({volume.size_gib} GiB, {volume.throughput} MiB/s, {volume.iops} IOPS) "
        f"once on a temporary {helper.instance_type} ({duration(setup)}), then attach it to each run",
    )


def _existing_ebs(inputs: DataInputs, book: PriceBook) -> Estimate:
    volume, size, zone = inputs.existing_volume, inputs.dataset_bytes, inputs.availability_zone
    if volume is None:
        return _impossible(Strategy.EXISTING_EBS, "no volume given (--volume vol-…)")
    if volume.size_gib * GIB < size:
        return _impossible(
            Strategy.EXISTING_EBS,
            f"the dataset ({size_text(size)}) is larger than {volume.id} ({volume.size_gib} GiB = "
            f"{size_text(volume.size_gib * GIB)})",
        )
    if zone is not None and volume.availability_zone != zone:
        return _impossible(
            Strategy.EXISTING_EBS,
            f"{volume.id} is in {volume.availability_zone}, the job in {zone} (trainctl ebs move)",
        )
    if volume.attached:
        return _impossible(Strategy.EXISTING_EBS, f"{volume.id} is attached to {volume.attached_instance_id}")
    return Estimate(
        strategy=Strategy.EXISTING_EBS,
        start_s=ATTACH_S,
        epoch_s=_ebs_epoch_s(inputs, volume),
        cost=Cost(ebs_usd=_volume_usd(volume, inputs.runs * inputs.hours_per_run, book)),
        plan=f"attach {volume.id} ({volume.size_gib} GiB {volume.volume_type}, {volume.availability_zone}) to each "
        "run, as it is",
    )


_ESTIMATORS: dict[Strategy, Callable[[DataInputs, PriceBook], Estimate]] = {
    Strategy.DIRECT_S3: _direct_s3,
    Strategy.LOCAL_CACHE: _local_cache,
    Strategy.PREWARMED_EBS: _prewarmed_ebs,
    Strategy.EXISTING_EBS: _existing_ebs,
}


# -- the advice ---------------------------------------------------------------------------------------------------


def advise(inputs: DataInputs, book: PriceBook) -> Advice:
    """Every strategy estimated for this dataset and plan, and the chosen one: the requested strategy if it is
    possible (refused, naming the numbers and what fits, if not), else the one with the least data time."""
    _check_dataset(inputs)
    estimates = [_totalled(_ESTIMATORS[s](inputs, book), inputs) for s in STRATEGIES]
    possible = [e for e in estimates if e.possible]  # direct-s3 always is
    best = _fastest(possible)
    chosen = best
    if inputs.requested is not Strategy.AUTO:
        chosen = next(e for e in estimates if e.strategy == inputs.requested)
        if not chosen.possible:
            raise InvalidInputError(
                "data_strategy",
                inputs.requested.value,
                f"a strategy that can work here ({chosen.why_not})",
                fix=f"Use {best.strategy.value}, which fits ({best.plan}), or auto",
            )
    return Advice(
        dataset_uri=inputs.dataset_uri,
        dataset_bytes=inputs.dataset_bytes,
        file_count=inputs.file_count,
        instance_type=inputs.instance.instance_type,
        availability_zone=inputs.availability_zone,
        runs=inputs.runs,
        epochs=inputs.epochs,
        estimates=estimates,
        chosen=chosen.strategy,
        reason=_reason(chosen, possible, inputs, asked=inputs.requested is not Strategy.AUTO),
        price_source=f"{_source(book)}; S3 GET {S3_GET_PRICE_SOURCE}",
    )


def _check_dataset(inputs: DataInputs) -> None:
    if inputs.dataset_bytes == 0 or inputs.file_count == 0:
        raise InvalidInputError(
            "dataset",
            inputs.dataset_uri,
            f"a prefix holding data (found {inputs.file_count} objects, {inputs.dataset_bytes} bytes)",
            fix="Check the URI, or upload the dataset first",
        )


def _totalled(estimate: Estimate, inputs: DataInputs) -> Estimate:
    if not estimate.possible:
        return estimate
    per_run = estimate.start_s + inputs.epochs * estimate.epoch_s
    total = estimate.setup_s + inputs.runs * per_run + estimate.first_epoch_extra_s
    return estimate.model_copy(update={"total_s": round(total, 1), "epoch_s": round(estimate.epoch_s, 1)})


def _fastest(possible: list[Estimate]) -> Estimate:
    """The least data time; among those within TIE_FRACTION of it, the cheapest (an unknown price last)."""
    quickest = min(e.total_s for e in possible)
    close = [e for e in possible if e.total_s <= quickest * (1 + TIE_FRACTION)]
    return min(close, key=lambda e: (math.inf if e.cost.total_usd is None else e.cost.total_usd, e.total_s))


def _reason(chosen: Estimate, possible: list[Estimate], inputs: DataInputs, *, asked: bool) -> str:
    data = f"{size_text(inputs.dataset_bytes)} in {inputs.file_count:,} files"
    plan = f"{inputs.runs} run(s) × {inputs.epochs} epoch(s) of {data}"
    why = "as asked" if asked else "least data time"
    head = f"{chosen.strategy.value} ({why}): {duration(chosen.total_s)} for {plan}"
    others = sorted((e for e in possible if e.strategy != chosen.strategy), key=lambda e: e.total_s)
    if not others:
        return f"{head}; the other strategies are not possible here"
    runner = others[0]
    return f"{head}, against {runner.strategy.value} {duration(runner.total_s)} ({_dominant(runner, inputs)})"


def _dominant(estimate: Estimate, inputs: DataInputs) -> str:
    """What most of a strategy's data time goes to, in words."""
    parts = {
        f"the prewarm or copy takes {duration(estimate.setup_s)}": estimate.setup_s,
        f"each run waits {duration(estimate.start_s)} for its data": inputs.runs * estimate.start_s,
        f"each epoch reads for {duration(estimate.epoch_s)}": inputs.runs * inputs.epochs * estimate.epoch_s,
    }
    return max(parts, key=lambda k: parts[k])


def _source(book: PriceBook) -> str:
    sources = {rate.source for rate in (*book.instances.values(), *book.volumes.values())}
    return ", ".join(sorted(sources)) or "no prices"
