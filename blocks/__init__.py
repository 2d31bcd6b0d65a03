"""trainctl blocks: configuration and client factories. `prefect block register -m blocks` registers them all."""

from blocks.aws import AwsAccount, load_account
from blocks.policies import CostPolicy, SafetyPolicy

__all__ = ["AwsAccount", "CostPolicy", "SafetyPolicy", "load_account"]
