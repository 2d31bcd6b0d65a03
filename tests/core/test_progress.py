"""Progress events reach every subscriber in order; a failing one stops neither the work nor the others."""

from __future__ import annotations

from core.progress import BytesMoved, Finished, ProgressEvent, Publisher, Steps, StepStarted, subscribed, subscribers


def test_subscribers_receive_the_steps_in_order_and_a_failing_one_is_reported_not_raised() -> None:
    seen: list[ProgressEvent] = []
    errors: list[str] = []

    def broken(event: ProgressEvent) -> None:
        raise RuntimeError("display gone")

    steps = Steps(["list", "copy", "verify"], Publisher([broken, seen.append], on_error=errors.append))
    steps.step("list")
    steps.step("verify")  # a step may be skipped: `done` counts the steps before it
    steps.step("cleanup")  # not in the runbook's list: keeps the count
    steps.finish("3 files")
    assert seen == [
        StepStarted("list", 0, 3),
        StepStarted("verify", 2, 3),
        StepStarted("cleanup", 2, 3),
        Finished("3 files"),
    ]
    assert steps.current == "cleanup" and len(errors) == 4 and "display gone" in errors[0]


def test_subscribed_hands_subscribers_to_work_started_inside_only() -> None:
    first: list[ProgressEvent] = []
    second: list[ProgressEvent] = []
    assert subscribers() == ()
    with subscribed(first.append):
        with subscribed(second.append):
            Publisher(subscribers()).publish(BytesMoved("copying", 1, 2, 10, 40))
        Publisher(subscribers()).publish(Finished("done"))
    assert subscribers() == ()
    assert first == [BytesMoved("copying", 1, 2, 10, 40), Finished("done")]
    assert second == [BytesMoved("copying", 1, 2, 10, 40)]
    assert BytesMoved("copying", 1, 2, 10, 40).fraction == 0.25 and BytesMoved("x", 0, 0, 0, 0).fraction == 0.0
