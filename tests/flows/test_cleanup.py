"""flows/cleanup.py: what a failure inside the block cleans, reports and raises (plain calls, no flow run).

The flows that use it are walked end to end (kills, signals, failures) in test_prewarm.py, test_launch_attempt.py
and test_launch_kills.py; this file pins the choices between them.
"""

from __future__ import annotations

import pytest
from prefect.exceptions import TerminationSignal

from core.errors import CapacityRefusedError, TerminatedError, TrainctlError
from flows.cleanup import Failure, cleanup_on_failure


class _Failed(TrainctlError):
    pass


class _Interrupted(TerminatedError):
    pass


class _Calls:
    """The cleanup and report the helper is given, recording what they were called with."""

    def __init__(self, cleaned: list[str]) -> None:
        self.cleaned = cleaned
        self.cleanups = 0
        self.reports: list[Failure] = []

    def cleanup(self) -> list[str]:
        self.cleanups += 1
        return list(self.cleaned)

    def report(self, failure: Failure) -> None:
        failure.cleaned.append("record updated")  # a report may add to what is said (launch-attempt does)
        self.reports.append(failure)


def test_an_error_is_cleaned_reported_and_raised_as_the_flows_failure() -> None:
    calls = _Calls(["instance i-1 terminated"])
    with (
        pytest.raises(_Failed) as raised,
        cleanup_on_failure("prewarm", lambda: "sync", calls.cleanup, calls.report, failed=_Failed),
    ):
        raise ValueError("disk full")
    assert calls.cleanups == 1
    [failure] = calls.reports
    assert (failure.step, str(failure.error), failure.stopped, failure.verb) == ("sync", "disk full", None, "failed")
    assert str(raised.value) == (
        "prewarm failed at step 'sync': disk full. Cleaned up: instance i-1 terminated; record updated."
    )
    assert isinstance(raised.value.__cause__, ValueError)


def test_a_signal_stays_the_signal_and_carries_what_was_cleaned() -> None:
    calls = _Calls([])
    signal_ = TerminationSignal(15)
    with (
        pytest.raises(TerminationSignal) as raised,
        cleanup_on_failure("prewarm", lambda: "attach", calls.cleanup, calls.report, failed=_Failed),
    ):
        raise signal_
    assert raised.value is signal_
    assert calls.reports[0].verb == "was interrupted by SIGTERM"
    assert raised.value.__notes__ == ["prewarm was interrupted by SIGTERM at step 'attach'. Cleaned up: record updated"]


def test_a_signal_replaced_by_an_error_is_the_interrupted_error_or_else_a_failure() -> None:
    def replaced() -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("Task run is not set") from None  # Prefect's replacement keeps the context

    for interrupted, expected in ((_Interrupted, _Interrupted), (None, _Failed)):
        calls = _Calls(["nothing launched"])
        with (
            pytest.raises(expected) as raised,
            cleanup_on_failure(
                "launch of j", lambda: "ship", calls.cleanup, calls.report, failed=_Failed, interrupted=interrupted
            ),
        ):
            replaced()
        assert calls.cleanups == 1
        assert isinstance(calls.reports[0].stopped, KeyboardInterrupt)
        assert "at step 'ship'" in str(raised.value)
        assert "Cleaned up: nothing launched; record updated" in str(raised.value)


def test_what_is_not_caught_or_passes_is_neither_cleaned_nor_reported() -> None:
    calls = _Calls(["x"])
    refused = CapacityRefusedError(
        "ec2:RunInstances", "InsufficientInstanceCapacity", "none", capacity="spot", availability_zone="us-east-1a"
    )
    for exc in (refused, TerminationSignal(15)):
        with (
            pytest.raises(type(exc)) as raised,
            cleanup_on_failure(
                "launch of j",
                lambda: "launch",
                calls.cleanup,
                calls.report,
                failed=_Failed,
                catch=(Exception, KeyboardInterrupt),
                passes=(CapacityRefusedError,),
            ),
        ):
            raise exc
        assert raised.value is exc
        assert not getattr(exc, "__notes__", None)
    assert (calls.cleanups, calls.reports) == (0, [])
