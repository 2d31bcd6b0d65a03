"""The `AwsAccount` Prefect block: a saved AwsConfig (blocks/aws.py), for `--account NAME` and deployments.

Its own module so that reading the AWS environment imports no Prefect: only a named block needs the Block class.
"""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block

from blocks.aws import AwsConfig


class AwsAccount(AwsConfig, Block):
    """Where and as whom trainctl calls AWS: region, profile or keys, optional role and endpoint (sandbox)."""

    _block_type_name: ClassVar[str | None] = "Trainctl AWS Account"
    _description: ClassVar[str | None] = (
        "Region, credentials and endpoint trainctl uses to call AWS. Unset fields fall back to the standard "
        "AWS environment (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL, ~/.aws)."
    )
