"""kill -9 of a spot-watch pass in the middle of a volume move (same-az-then-move, no spot capacity in the volume's
AZ), after the snapshot and after the restore: the next pass continues the move it finds (one snapshot, one copy,
the original kept and renamed) to one running attempt. The walk is tests/flows/test_spot_watch_kills.py's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox import Sandbox
from tests.flows.test_spot_watch_kills import MOVE_KILL_POINTS, killed_then_continued, walked

pytestmark = pytest.mark.sandbox


@pytest.mark.parametrize("point", walked(MOVE_KILL_POINTS, {"move-snapshot"}))
def test_a_pass_killed_mid_move_is_continued_with_one_snapshot_one_copy_and_one_running_attempt(
    point: str, cloud: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    killed_then_continued(point, MOVE_KILL_POINTS[point], cloud, tmp_path, monkeypatch)
