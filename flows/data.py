"""Data strategies for the CLI (and scripts): the advice for one dataset, instance type and plan.

`advise_data` is an operation, not a flow: it reads AWS (one S3 listing, one DescribeInstanceTypes, the volumes
tagged with the dataset, the user's volume) with the plain functions behind the tasks, and hands the numbers to
core/data.py. Nothing is changed in AWS, and no Prefect API is started for it.
"""

from __future__ import annotations

from blocks.aws import load_account
from core.cost import fallback_book
from core.data import Advice, AdviceRequest, DataInputs, advise
from core.prewarm import PrewarmSpec
from tasks import ebs, ec2_instances, s3

__all__ = ["Advice", "AdviceRequest", "advise_data"]

# The temporary instance a new prewarm would launch (the prewarm's own default).
PREWARM_INSTANCE_TYPE: str = PrewarmSpec.model_fields["instance_type"].default


def advise_data(request: AdviceRequest) -> Advice:
    """Each strategy's time to first batch, epoch time and cost for this dataset, and the one to use.

    Prices are the dated fallback book's (the report says so): the advice compares strategies, and the Pricing API
    would cost a call per price for differences it would not change."""
    listing = s3.list_prefix.fn(request.dataset_uri, require_objects=False, account=request.account)
    types = ec2_instances.instance_type_io.fn([request.instance_type, PREWARM_INSTANCE_TYPE], account=request.account)
    account = load_account(request.account)
    ec2 = account.client("ec2")
    existing = ebs.get_volume(ec2, request.volume_id) if request.volume_id else None
    inputs = DataInputs(
        dataset_uri=request.dataset_uri,
        dataset_bytes=listing.total_bytes,
        file_count=listing.count,
        runs=request.runs,
        epochs=request.epochs,
        hours_per_run=request.hours_per_run,
        instance=types[request.instance_type],
        prewarm_instance=types[PREWARM_INSTANCE_TYPE],
        availability_zone=request.availability_zone,
        prewarmed=ebs.dataset_volumes(ec2, request.dataset_uri),
        existing_volume=existing,
        requested=request.strategy,
    )
    return advise(inputs, fallback_book(account.resolved_region()))
