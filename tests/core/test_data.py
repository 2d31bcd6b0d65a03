"""The data-strategy advice (core/data.py) against hand-computed tables, like the seeds' table of strategies.

Instance figures are DescribeInstanceTypes' (moto's data, as AWS publishes them): g5.xlarge 250 GB NVMe, 2.5 Gb/s
baseline network (312.5 MB/s), EBS 87.5 MB/s and 3,000 IOPS baseline; m5.large no store, 0.75 Gb/s (93.75 MB/s),
EBS 81.25 MB/s, 3,600 IOPS; p3.2xlarge no store, EBS 218.75 MB/s and 10,000 IOPS (its published EBS
figures), its network taken as 10 Gb/s (1,250 MB/s).
Constants used by hand below: S3 85 MB/s and 0.1 s first byte per request, 32 loader / 256 copy connections;
NVMe 1,000 MB/s and 40,000 IOPS; EBS one I/O per file plus one per 256 KiB; attach 15 s; prewarm 300 s + copy.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from core import tags as t
from core.cost import fallback_book
from core.data import (
    AdviceRequest,
    DataInputs,
    InstanceTypeIO,
    Strategy,
    advise,
    block_read_s,
    dataset_filters,
    s3_read_s,
)
from core.errors import InvalidInputError
from core.jobs import JobSpec
from core.models import Volume, VolumeAttachment
from core.tags import dataset_tag_value

G5 = InstanceTypeIO(
    instance_type="g5.xlarge",
    instance_store_gb=250,
    instance_store_disks=1,
    network_gbps=2.5,
    ebs_mbps=87.5,
    ebs_iops=3000,
)
M5 = InstanceTypeIO(instance_type="m5.large", network_gbps=0.75, ebs_mbps=81.25, ebs_iops=3600)
P3 = InstanceTypeIO(instance_type="p3.2xlarge", network_gbps=10, ebs_mbps=218.75, ebs_iops=10000)
GB = 10**9
URI = "s3://datasets/imagenet/"


def inputs(instance: InstanceTypeIO, size: int, files: int, runs: int, epochs: int, **extra: Any) -> DataInputs:
    return DataInputs(
        dataset_uri=URI,
        dataset_bytes=size,
        file_count=files,
        runs=runs,
        epochs=epochs,
        instance=instance,
        prewarm_instance=M5,
        **extra,
    )


def volume(zone: str, *, size_gib: int = 30, attached_to: str | None = None) -> Volume:
    attachments = (
        [VolumeAttachment(instance_id=attached_to, device="/dev/sdf", state="attached")] if attached_to else []
    )
    return Volume(
        id="vol-0123456789abcdef0",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        state="in-use" if attached_to else "available",
        availability_zone=zone,
        size_gib=size_gib,
        volume_type="gp3",
        iops=3000,
        throughput=250,
        attachments=attachments,
    )


# -- the reading model -------------------------------------------------------------------------------------------


def test_s3_reads_are_bound_by_bandwidth_for_big_files_and_by_latency_for_small_ones() -> None:
    # 2 TB in 500k files over g5.xlarge's 312.5 MB/s: the network binds (2e12 / 312.5e6).
    assert s3_read_s(2000 * GB, 500_000, 32, 312.5) == pytest.approx(6400)
    # 20 GB in 200k files: every request waits 0.1 s first; 32 connections share (200k × 0.1 + 20e9 / 85e6) / 32.
    assert s3_read_s(20 * GB, 200_000, 32, 1250) == pytest.approx((20_000 + 20e9 / 85e6) / 32)
    # 1M tiny files over 100,000 connections: the prefix's 5,500 GET/s binds.
    assert s3_read_s(GB, 1_000_000, 100_000, 1250) == pytest.approx(1_000_000 / 5500)


def test_block_reads_are_bound_by_throughput_or_by_iops_for_many_files() -> None:
    assert block_read_s(100 * GB, 100_000, 1000, 40_000) == pytest.approx(100)  # 100 GB at 1,000 MB/s
    # 1 GB in 1M files on a 3,000-IOPS gp3: (1M files + 1e9 / 256 KiB) I/Os at 3,000 per second.
    assert block_read_s(GB, 1_000_000, 131, 3000) == pytest.approx((1_000_000 + 1e9 / 262_144) / 3000)


# -- the seeds' table: which strategy for which dataset and plan --------------------------------------------------


def test_small_data_many_runs_prewarms_an_ebs_volume_once() -> None:
    advice = advise(inputs(P3, 20 * GB, 200_000, runs=10, epochs=3), fallback_book())
    assert advice.chosen == Strategy.PREWARMED_EBS
    direct, local = advice.estimate(Strategy.DIRECT_S3), advice.estimate(Strategy.LOCAL_CACHE)
    ebs = advice.estimate(Strategy.PREWARMED_EBS)
    assert not local.possible and local.why_not == "p3.2xlarge has no instance store"
    assert direct.epoch_s == pytest.approx((20_000 + 20e9 / 85e6) / 32, abs=0.1)  # 632.4 s, latency-bound
    # New gp3: ceil(20 GB × 1.15 / GiB) = 22 GiB; 208 MiB/s (the instance's 218.75 MB/s); IOPS so that the
    # 200k files + 76,294 × 256 KiB I/Os take no longer than the bytes: ceil(276,294 / 91.70 s) = 3,014.
    assert "22 GiB, 208 MiB/s, 3014 IOPS" in ebs.plan
    read = 20e9 / (208 * 1.048576e6)
    assert ebs.epoch_s == pytest.approx(read, abs=0.1)
    # Prewarm on m5.large: 300 s + the slower of its network (20e9 / 93.75e6) and its EBS link (20e9 / 81.25e6).
    assert ebs.setup_s == pytest.approx(300 + 20e9 / 81.25e6)
    assert ebs.first_batch_s == pytest.approx(300 + 20e9 / 81.25e6 + 15, abs=0.1)
    assert ebs.total_s == pytest.approx(300 + 20e9 / 81.25e6 + 10 * (15 + 3 * read), abs=0.5)
    # Cost: 22 GiB × $0.08 + 14 IOPS × $0.005 + 83 MiB/s × $0.04 per month, for the prewarm and 10 × 4 h;
    # the m5.large ($0.096/h) while it prewarms; 200k GETs at $0.0004 per 1,000.
    hours = ebs.setup_s / 3600 + 40
    assert ebs.cost.ebs_usd == pytest.approx((22 * 0.08 + 14 * 0.005 + 83 * 0.04) * hours / 730, abs=1e-4)
    assert ebs.cost.prewarm_usd == pytest.approx(0.096 * ebs.setup_s / 3600, abs=1e-4)
    assert ebs.cost.s3_get_usd == pytest.approx(0.08)
    assert direct.cost.s3_get_usd == pytest.approx(200_000 * 3 * 10 * 0.0004 / 1000)  # every epoch reads S3 again
    assert "least data time" in advice.reason and "direct-s3" in advice.reason


def test_big_data_one_run_reads_s3_directly() -> None:
    advice = advise(inputs(G5, 2000 * GB, 500_000, runs=1, epochs=1), fallback_book())
    assert advice.chosen == Strategy.DIRECT_S3
    direct = advice.estimate(Strategy.DIRECT_S3)
    assert direct.epoch_s == pytest.approx(6400)  # 2 TB at g5.xlarge's 312.5 MB/s
    assert direct.first_batch_s == pytest.approx(0.1)
    local = advice.estimate(Strategy.LOCAL_CACHE)
    assert local.why_not == "the dataset (2.0 TB) is larger than g5.xlarge's instance store (250 GB, 225.0 GB usable)"
    # A prewarm would copy 2 TB through m5.large's 81.25 MB/s EBS link first: hours before the first batch.
    assert advice.estimate(Strategy.PREWARMED_EBS).setup_s == pytest.approx(300 + 2e12 / 81.25e6)


@pytest.mark.parametrize(("epochs", "chosen"), [(5, Strategy.LOCAL_CACHE), (1, Strategy.DIRECT_S3)])
def test_data_that_fits_the_instance_store_is_cached_when_several_epochs_read_it(epochs: int, chosen: Strategy) -> None:
    advice = advise(inputs(G5, 100 * GB, 100_000, runs=1, epochs=epochs), fallback_book())
    local, direct = advice.estimate(Strategy.LOCAL_CACHE), advice.estimate(Strategy.DIRECT_S3)
    # Copy: 100 GB at 312.5 MB/s = 320 s (+10 s to format the store); then each epoch at NVMe's 1,000 MB/s.
    assert local.start_s == pytest.approx(330)
    assert local.epoch_s == pytest.approx(100)
    assert local.total_s == pytest.approx(330 + epochs * 100)
    # From S3, each epoch: (100k × 0.1 s + 100e9 / 85e6) / 32 = 349.3 s, above the network's 320 s.
    assert direct.epoch_s == pytest.approx((10_000 + 100e9 / 85e6) / 32, abs=0.1)
    assert advice.chosen == chosen


@pytest.mark.parametrize(("runs", "chosen"), [(1, Strategy.DIRECT_S3), (10, Strategy.PREWARMED_EBS)])
def test_auto_weighs_the_runs_and_epochs_the_job_plans(runs: int, chosen: Strategy) -> None:
    # The first table's dataset (20 GB in 200k files) on p3.2xlarge, one epoch per run. Direct S3: 0.1 + 632.4 s
    # per run. A new prewarm: 300 + 20e9 / 81.25e6 = 546.2 s once, then 15 + 91.7 s per run. One run: 632.5 s
    # against 652.9 s, within 10%: the cheaper, direct S3 (its 200k GETs; the prewarm pays them too, and EBS).
    # Ten runs: 6,325 s against 1,613 s: the prewarm.
    spec = JobSpec(name="j", bucket="ml-jobs", template="t", command=["x"], data=URI, data_runs=runs, data_epochs=1)
    request = AdviceRequest.for_job(spec, "p3.2xlarge", zone=None, strategy=spec.data_strategy, volume_id=None)
    assert (request.runs, request.epochs, request.dataset_uri) == (runs, 1, URI)
    advice = advise(inputs(P3, 20 * GB, 200_000, runs=request.runs, epochs=request.epochs), fallback_book())
    assert advice.chosen == chosen
    direct, ebs = advice.estimate(Strategy.DIRECT_S3), advice.estimate(Strategy.PREWARMED_EBS)
    read = 20e9 / (208 * 1.048576e6)
    assert direct.total_s == pytest.approx(runs * (0.1 + (20_000 + 20e9 / 85e6) / 32), abs=0.5)
    assert ebs.total_s == pytest.approx(300 + 20e9 / 81.25e6 + runs * (15 + read), abs=0.5)
    assert f"{runs} run(s) × 1 epoch(s)" in advice.reason


def test_an_existing_prewarmed_volume_in_the_az_is_reused() -> None:
    without = advise(inputs(P3, 20 * GB, 100_000, 1, 1, availability_zone="us-east-1a"), fallback_book())
    assert without.chosen == Strategy.DIRECT_S3  # a new prewarm costs 9 min first: not worth one epoch
    assert without.estimate(Strategy.PREWARMED_EBS).total_s > without.estimate(Strategy.DIRECT_S3).total_s
    prewarmed = [volume("us-east-1a")]
    advice = advise(
        inputs(P3, 20 * GB, 100_000, 1, 1, availability_zone="us-east-1a", prewarmed=prewarmed), fallback_book()
    )
    assert advice.chosen == Strategy.PREWARMED_EBS
    reuse = advice.estimate(Strategy.PREWARMED_EBS)
    assert "reuse vol-0123456789abcdef0 (us-east-1a)" in reuse.plan
    assert reuse.setup_s == 0 and reuse.cost.prewarm_usd == 0 and reuse.cost.s3_get_usd == 0
    assert reuse.total_s == pytest.approx(15 + 20e9 / 218.75e6, abs=0.1)  # attach, then the instance's EBS link
    # 30 GiB × $0.08 + 125 MiB/s above the baseline × $0.04, per month, for one 4-hour run.
    assert reuse.cost.ebs_usd == pytest.approx((30 * 0.08 + 125 * 0.04) * 4 / 730, abs=1e-4)


def test_a_prewarmed_volume_the_grown_dataset_no_longer_fits_is_not_reused() -> None:
    # 30 GB + 15% = 34.5e9 bytes = 32.1 GiB: 33 GiB needed, the volume in the AZ has 30.
    data = inputs(
        P3, 30 * GB, 1000, runs=10, epochs=3, availability_zone="us-east-1a", prewarmed=[volume("us-east-1a")]
    )
    advice = advise(data, fallback_book())
    ebs = advice.estimate(Strategy.PREWARMED_EBS)
    assert not ebs.possible and advice.chosen != Strategy.PREWARMED_EBS
    assert ebs.why_not == (
        "vol-0123456789abcdef0 (30 GiB) holds an older version of the dataset, which is now 30.0 GB and needs 33 GiB "
        "(trainctl ebs prewarm --no-reuse --size 33)"
    )
    with pytest.raises(InvalidInputError, match="needs 33 GiB") as refused:
        advise(data.model_copy(update={"requested": Strategy.PREWARMED_EBS}), fallback_book())
    assert refused.value.field == "data_strategy"
    # 25 GB fits its 30 GiB (28.75e9 bytes = 26.8 GiB): reused.
    assert (
        "reuse vol-"
        in advise(data.model_copy(update={"dataset_bytes": 25 * GB}), fallback_book())
        .estimate(Strategy.PREWARMED_EBS)
        .plan
    )


@pytest.mark.parametrize(
    ("prewarmed", "shown"),
    [
        (volume("us-east-1b"), "copy vol-0123456789abcdef0 (us-east-1b) into us-east-1a"),
        (volume("us-east-1a", attached_to="i-0123456789abcdef0"), "attached to i-0123456789abcdef0"),
    ],
)
def test_a_prewarmed_volume_elsewhere_or_in_use_is_copied_from_a_snapshot(prewarmed: Volume, shown: str) -> None:
    advice = advise(
        inputs(P3, 20 * GB, 100_000, runs=1, epochs=1, availability_zone="us-east-1a", prewarmed=[prewarmed]),
        fallback_book(),
    )
    copy = advice.estimate(Strategy.PREWARMED_EBS)
    assert shown in copy.plan and "Fast Snapshot Restore" in copy.plan and "$0.75 per AZ-hour" in copy.plan
    assert copy.setup_s == pytest.approx(20e9 / 100e6 + 60)  # a snapshot at 100 MB/s, then the restore
    # The copy's first epoch reads at the lazy-loading 40 MB/s instead of its 91.4 s.
    assert copy.first_epoch_extra_s == pytest.approx(20e9 / 40e6 - 20e9 / 218.75e6, abs=0.1)


def test_a_requested_strategy_that_works_is_kept_even_when_slower() -> None:
    advice = advise(inputs(G5, 100 * GB, 100_000, runs=1, epochs=5, requested=Strategy.DIRECT_S3), fallback_book())
    assert advice.chosen == Strategy.DIRECT_S3
    assert advice.reason.startswith("direct-s3 (as asked)") and "local-cache" in advice.reason


# -- bad input: refused, naming the numbers and the strategy that fits -------------------------------------------


def test_an_empty_dataset_is_refused() -> None:
    with pytest.raises(InvalidInputError) as caught:
        advise(inputs(G5, 0, 0, runs=1, epochs=1), fallback_book())
    assert caught.value.field == "dataset"
    assert "found 0 objects, 0 bytes" in str(caught.value)


def test_local_cache_on_a_type_without_instance_store_is_refused_naming_what_fits() -> None:
    fits = advise(inputs(M5, 20 * GB, 1000, runs=1, epochs=1), fallback_book()).chosen
    with pytest.raises(InvalidInputError) as caught:
        advise(inputs(M5, 20 * GB, 1000, runs=1, epochs=1, requested=Strategy.LOCAL_CACHE), fallback_book())
    assert caught.value.field == "data_strategy"
    assert "m5.large has no instance store" in str(caught.value)
    assert f"Use {fits.value}, which fits" in str(caught.value)


def test_a_dataset_larger_than_the_instance_store_is_refused_with_both_sizes() -> None:
    with pytest.raises(InvalidInputError) as caught:
        advise(inputs(G5, 300 * GB, 1000, runs=1, epochs=3, requested=Strategy.LOCAL_CACHE), fallback_book())
    assert "the dataset (300.0 GB) is larger than g5.xlarge's instance store (250 GB, 225.0 GB usable)" in str(
        caught.value
    )
    assert "Use direct-s3, which fits" in str(caught.value)


@pytest.mark.parametrize(
    ("existing", "why"),
    [
        (None, "no volume given (--volume vol-…)"),
        (volume("us-east-1a", size_gib=100), "the dataset (200.0 GB) is larger than vol-0123456789abcdef0 (100 GiB"),
        (volume("us-east-1b", size_gib=300), "vol-0123456789abcdef0 is in us-east-1b, the job in us-east-1a"),
        (volume("us-east-1a", size_gib=300, attached_to="i-0123456789abcdef0"), "attached to i-0123456789abcdef0"),
    ],
)
def test_an_existing_volume_that_cannot_serve_the_job_is_refused(existing: Volume | None, why: str) -> None:
    request = inputs(
        G5,
        200 * GB,
        1000,
        runs=1,
        epochs=1,
        availability_zone="us-east-1a",
        existing_volume=existing,
        requested=Strategy.EXISTING_EBS,
    )
    with pytest.raises(InvalidInputError) as caught:
        advise(request, fallback_book())
    assert why in str(caught.value)


def test_the_request_is_checked_before_aws_is_asked() -> None:
    with pytest.raises(InvalidInputError, match="dataset"):
        AdviceRequest(dataset_uri="imagenet/", instance_type="g5.xlarge")
    with pytest.raises(InvalidInputError, match="availability_zone"):
        AdviceRequest(dataset_uri=URI, instance_type="g5.xlarge", availability_zone="east")
    with pytest.raises(InvalidInputError, match="volume_id"):
        AdviceRequest(dataset_uri=URI, instance_type="g5.xlarge", volume_id="disk-1")
    with pytest.raises(ValueError, match="runs"):
        AdviceRequest(dataset_uri=URI, instance_type="g5.xlarge", runs=0)


# -- the inputs' shapes ---------------------------------------------------------------------------------------------


def test_instance_type_figures_come_from_describe_instance_types() -> None:
    g5 = InstanceTypeIO.from_aws(
        {
            "InstanceType": "g5.xlarge",
            "InstanceStorageInfo": {"TotalSizeInGB": 250, "Disks": [{"SizeInGB": 250, "Count": 1, "Type": "ssd"}]},
            "NetworkInfo": {
                "NetworkPerformance": "Up to 10 Gigabit",
                "DefaultNetworkCardIndex": 0,
                "NetworkCards": [{"NetworkCardIndex": 0, "BaselineBandwidthInGbps": 2.5, "PeakBandwidthInGbps": 10.0}],
            },
            "EbsInfo": {"EbsOptimizedInfo": {"BaselineThroughputInMBps": 87.5, "BaselineIops": 3000}},
        }
    )
    assert g5 == G5
    # Without per-card figures: a fixed rate as given, an "up to" burst counted at a quarter.
    assert InstanceTypeIO.from_aws(
        {"InstanceType": "x.large", "NetworkInfo": {"NetworkPerformance": "25 Gigabit"}}
    ) == (InstanceTypeIO(instance_type="x.large", network_gbps=25, ebs_mbps=125 * 1.048576, ebs_iops=3000))
    burst = InstanceTypeIO.from_aws(
        {"InstanceType": "y.large", "NetworkInfo": {"NetworkPerformance": "Up to 10 Gigabit"}}
    )
    assert burst.network_gbps == 2.5 and burst.instance_store_gb == 0


def test_a_dataset_is_tagged_by_its_uri_or_by_its_digest_when_too_long() -> None:
    assert dataset_tag_value(URI) == URI
    long_uri = "s3://datasets/" + "a" * 300
    tagged = dataset_tag_value(long_uri)
    assert tagged.startswith("sha256:") and len(tagged) == 71 and tagged != dataset_tag_value(long_uri + "b")
    assert {"Name": f"tag:{t.DATASET}", "Values": [URI]} in dataset_filters(URI)
    assert {"Name": f"tag:{t.PREWARM}", "Values": [t.PREWARM_DONE]} in dataset_filters(URI)
