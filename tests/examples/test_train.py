"""examples/train.py, run as the agent runs it (a process with the contract's environment)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TRAINER = Path(__file__).resolve().parents[2] / "examples" / "train.py"


def _train(folder: Path, resume_from: str, *args: str) -> dict[str, object]:
    env = {**os.environ, "TRAINCTL_CHECKPOINT_DIR": str(folder), "TRAINCTL_RESUME_FROM": resume_from}
    done = subprocess.run(
        [sys.executable, str(TRAINER), "--step-seconds", "0", *args], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    state: dict[str, object] = json.loads((folder / "state.json").read_text())
    return state


def test_blob_is_written_once_and_kept_on_resume_and_state_says_when_the_first_step_ended(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    first = _train(folder, "", "--steps", "3", "--blob-mb", "2")
    blob = folder / "blob.bin"
    assert blob.stat().st_size == 2 * 1024 * 1024
    written = blob.read_bytes()
    assert first["step"] == 3 and first["resumed_from_step"] is None
    assert isinstance(first["first_step_at"], float) and first["first_step_at"] <= first["saved_at"]  # type: ignore[operator]

    resumed = _train(folder, str(folder), "--steps", "5", "--blob-mb", "2")
    assert blob.read_bytes() == written  # restored with the checkpoint: not written again
    assert (resumed["step"], resumed["resumed_from_step"]) == (5, 3)
    assert resumed["first_step_at"] > first["first_step_at"]  # type: ignore[operator]


def test_without_blob_mb_no_blob_is_written(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    state = _train(folder, "", "--steps", "2")
    assert sorted(p.name for p in folder.iterdir()) == ["state.json", "weights.bin"]
    assert state["step"] == 2 and state["first_step_at"] is not None
