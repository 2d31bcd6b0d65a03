"""bench/cli.py's pure parts: the figures it prints from given run times (nothing is timed here)."""

from __future__ import annotations

import pytest

from bench import cli as bench

VOLUME, INSTANCE = "vol-0123456789abcdef0", "i-0123456789abcdef0"


def _timing(name: str, mode: str, walls: list[float], flow_runs: list[float] | None = None) -> bench.Timing:
    command = next(c for c in bench.commands(VOLUME, INSTANCE) if c.name == name)
    return bench.Timing(command, mode, walls, flow_runs or [])


def test_summary_is_the_median_with_min_and_max() -> None:
    assert bench.summarize([3.0, 1.0, 2.0, 10.0, 2.5]) == bench.Summary(2.5, 1.0, 10.0)
    assert bench.summarize([1.0, 2.0]).median == 1.5
    with pytest.raises(ValueError, match="no runs"):
        bench.summarize([])


def test_the_commands_are_the_issues_with_attach_before_detach_and_only_teardown_a_flow() -> None:
    cmds = bench.commands(VOLUME, INSTANCE)
    assert [c.name for c in cmds] == [
        "--help",
        "resources list",
        "ebs attach",
        "ebs detach",
        "train status",
        "teardown dry run",
    ]
    assert cmds[2].args == ("ebs", "attach", VOLUME, INSTANCE) and cmds[3].args == ("ebs", "detach", VOLUME)
    assert [c.name for c in cmds if c.flow] == ["teardown dry run"]
    assert "--yes" not in cmds[-1].args  # a dry run: teardown acts only with --yes


def test_no_flow_commands_are_held_to_one_and_a_half_seconds_by_their_median() -> None:
    assert bench.verdict(_timing("train status", "no server", [1.4, 1.5, 9.0])).startswith("ok")
    assert bench.verdict(_timing("train status", "server up", [1.6, 1.6, 0.2])).startswith("MISSED")


def test_a_flow_commands_overhead_is_wall_minus_the_flow_runs_own_time() -> None:
    up = _timing("teardown dry run", "server up", [5.0, 6.0, 9.0], [3.0, 3.5, 4.0])
    assert bench.overheads(up) == [2.0, 2.5, 5.0]
    assert bench.verdict(up) == "overhead 2.50 s: ok (target ≤ 3 s)"
    slow = _timing("teardown dry run", "server up", [8.0], [1.0])
    assert bench.verdict(slow) == "overhead 7.00 s: MISSED (target ≤ 3 s)"
    # Without a server there is no API to ask, and the target is the server-up one.
    assert bench.verdict(_timing("teardown dry run", "no server", [30.0])) == "(no target without a server)"


def test_the_flow_runs_own_time_comes_from_its_api_start_and_end() -> None:
    run = {"name": "teardown-job-x", "start_time": "2026-01-01T10:00:00.250000Z", "end_time": "2026-01-01T10:00:02Z"}
    assert bench.run_seconds(run) == 1.75
    with pytest.raises(ValueError, match="no start and end time"):
        bench.run_seconds({"name": "pending", "start_time": None, "end_time": None})
    body = bench.latest_flow_run_filter("safe-teardown")
    assert body == {"flows": {"name": {"any_": ["safe-teardown"]}}, "sort": "START_TIME_DESC", "limit": 1}


def test_the_report_has_one_row_per_command_and_mode_and_says_how_overhead_is_computed() -> None:
    timings = [
        _timing("--help", "no server", [0.4, 0.5, 0.6]),
        _timing("teardown dry run", "server up", [5.0, 6.0, 9.0], [3.0, 3.5, 4.0]),
    ]
    lines = bench.report_lines(timings, runs=3, flow_runs=3)
    rows = [line for line in lines if line.startswith(("--help", "teardown"))]
    assert len(rows) == 2
    assert "0.50 s (0.40–0.60)" in rows[0] and "ok (target ≤ 1.5 s)" in rows[0]
    assert "6.00 s (5.00–9.00)" in rows[1] and "3.50 s (3.00–4.00)" in rows[1] and "overhead 2.50 s" in rows[1]
    assert lines[-1].startswith("overhead = process wall time − the flow run's own time")
