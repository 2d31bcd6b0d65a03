"""EC2 state transitions and their delays, where moto answers every change at once.

Only when `sandbox.transition_delay > 0` (0 keeps moto's instant behaviour): instances pending → running,
stopping → stopped, shutting-down → terminated (the volume rules use the same timers for attachments and
snapshots). moto's models are mutated after moto answered, and a `threading.Timer` finishes each transition under
`sandbox.ec2_lock`, compare-and-set: a transition something else overtook meanwhile does nothing. A reset or stop
cancels every pending timer.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from moto.ec2.models.instances import Instance, InstanceState

from sandbox.ec2_common import backend
from sandbox.protocol import AwsRequest

if TYPE_CHECKING:
    from sandbox.server import Sandbox

STATE_CODES = {
    "pending": 0,
    "running": 16,
    "shutting-down": 32,
    "terminated": 48,
    "stopping": 64,
    "stopped": 80,
}


class Transitions:
    """The timers that finish transitions, and the instance states StartInstances / StopInstances pass through."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._timers: set[threading.Timer] = set()
        self._timers_lock = threading.Lock()
        self._generation = 0  # bumped on reset/stop so a timer that already fired does nothing

    @property
    def delay(self) -> float:
        return float(self.sandbox.transition_delay or 0.0)

    # -- timers ----------------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Cancel every pending transition (reset, stop)."""
        with self._timers_lock:
            self._generation += 1
            timers = list(self._timers)
            self._timers.clear()
        for timer in timers:
            timer.cancel()

    def schedule(self, delay: float, action: Callable[[], None], *, locked: bool = True) -> None:
        """Run `action` after `delay` seconds (under the EC2 lock when `locked`), unless reset first."""
        with self._timers_lock:
            generation = self._generation

        def fire() -> None:
            with self._timers_lock:
                self._timers.discard(timer)
                if generation != self._generation:
                    return
            try:
                if locked:
                    with self.sandbox.ec2_lock:
                        action()
                else:
                    action()
            except Exception as exc:  # a timer must never crash silently into the void: log it
                self.sandbox.log(f"ec2 transition failed: {exc!r}")

        timer = threading.Timer(max(delay, 0.0), fire)
        timer.daemon = True
        with self._timers_lock:
            self._timers.add(timer)
        timer.start()

    # -- instance states -------------------------------------------------------------------------------------
    @staticmethod
    def set_state(instance: Instance, name: str) -> None:
        instance._state = InstanceState(name, STATE_CODES[name])

    def advance(self, instance: Instance, expected: str, target: str) -> None:
        """Finish a transition unless something else changed the state meanwhile (compare-and-set)."""
        if instance.state == expected:
            self.set_state(instance, target)

    def begin(self, instance: Instance, passing: str, target: str) -> None:
        """Show the instance `passing` now and `target` after the delay."""
        self.set_state(instance, passing)
        self.schedule(self.delay, functools.partial(self.advance, instance, passing, target))

    def shut_down_later(self, instance: Instance) -> None:
        self.begin(instance, "shutting-down", "terminated")

    # -- hooks -----------------------------------------------------------------------------------------------
    def _start_after(self, req: AwsRequest, status: int, body: bytes) -> bytes | None:
        self._after_each(req, status, shown="running", passing="pending")
        return None

    def _stop_after(self, req: AwsRequest, status: int, body: bytes) -> bytes | None:
        self._after_each(req, status, shown="stopped", passing="stopping")
        return None

    def _after_each(self, req: AwsRequest, status: int, *, shown: str, passing: str) -> None:
        """moto moved the named instances to `shown` at once: show them `passing` until the delay is over."""
        if status != 200 or self.delay <= 0:
            return
        ec2 = backend(self.sandbox, req)
        for instance_id in req.param_list("InstanceId"):
            instance = ec2.get_instance_by_id(instance_id)
            if instance is not None and instance.state == shown:
                self.begin(instance, passing, shown)

    def register(self) -> None:
        self.sandbox.after("ec2", "StartInstances", self._start_after)
        self.sandbox.after("ec2", "StopInstances", self._stop_after)
