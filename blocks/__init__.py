"""trainctl blocks: configuration and client factories. `prefect block register -m blocks` registers them all."""

from blocks.aws import AwsAccount, load_account
from blocks.policies import CostPolicy, SafetyPolicy
from blocks.templates import InstanceTemplate

__all__ = ["AwsAccount", "CostPolicy", "InstanceTemplate", "SafetyPolicy", "load_account"]
