"""Whether a spot instance is being interrupted or was interrupted, from what the EC2 API shows of it.

Two signals, both read by `tasks.ec2_instances.observe_training_instances`: the instance's StateReason
(`Server.SpotInstanceTermination`, or `Server.SpotInstanceShutdown` for the stop behaviour) and its spot request's
status code. AWS's request codes (EC2 User Guide, "Spot request status"): `marked-for-termination` /
`marked-for-stop` while the notice runs; `instance-terminated-by-price`, `instance-terminated-no-capacity`, … once
EC2 takes the capacity back. For a capacity interruption AWS sets `instance-terminated-no-capacity` at the notice
already, while the instance stays `running` for its two minutes: so the instance's own state, not the code, says
whether the interruption is still under way. `instance-terminated-by-user` (an API terminate, or a shutdown from
inside such as the agent's at the end of a job) is no interruption.
"""

from __future__ import annotations

from enum import StrEnum

from core.models import Instance

SPOT_TERMINATION_REASONS = frozenset({"Server.SpotInstanceTermination", "Server.SpotInstanceShutdown"})
NOTICE_CODES = frozenset({"marked-for-termination", "marked-for-stop"})
INTERRUPTED_CODES = frozenset(
    {
        "instance-terminated-by-price",
        "instance-terminated-no-capacity",
        "instance-terminated-capacity-oversubscribed",
        "instance-terminated-launch-group-constraint",
        "instance-stopped-by-price",
        "instance-stopped-no-capacity",
        "instance-stopped-capacity-oversubscribed",
    }
)
# The states in which the trainer may still run (and save its checkpoint during the notice).
_UP = frozenset({"pending", "running"})


class SpotInterruption(StrEnum):
    NONE = "none"
    # Being interrupted: EC2 gave the notice, the instance is still up (the agent checkpoints now).
    BEING_INTERRUPTED = "being-interrupted"
    # Was interrupted: EC2 stopped or terminated (or is terminating) the instance to take its capacity back.
    INTERRUPTED = "interrupted"


def spot_interruption(instance: Instance) -> SpotInterruption:
    """What EC2 says of this instance's spot capacity. An on-demand instance, or a spot one ended by its user
    (or by itself), is NONE. Decides from the instance as observed; it never infers an interruption from a
    missing answer (the caller must not pass an instance it could not look at)."""
    by_spot = (
        instance.state_reason_code in SPOT_TERMINATION_REASONS
        or instance.spot_request_status in NOTICE_CODES
        or instance.spot_request_status in INTERRUPTED_CODES
    )
    if not by_spot:
        return SpotInterruption.NONE
    return SpotInterruption.BEING_INTERRUPTED if instance.state in _UP else SpotInterruption.INTERRUPTED
