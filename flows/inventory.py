"""What trainctl owns in a region, for the CLI's listings (`resources list|show`, `ebs list`).

The plain function behind the `inventory` task: calling the task outside a flow would start Prefect's API (an
ephemeral server: 8–19 s here, DESIGN.md section 7) just to record a run of a read-only listing; the CLI wants an
answer in about a second.
"""

from __future__ import annotations

from blocks.aws import AwsConfig
from core.models import Inventory
from tasks import inventory as inventory_tasks


def take_inventory(aws: AwsConfig, *, include_terminated: bool = False) -> Inventory:
    """Every managed instance, volume and snapshot of `aws`'s region, linked (one query per page and filter set)."""
    return inventory_tasks.collect_inventory(aws, include_terminated=include_terminated)
