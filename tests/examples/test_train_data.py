"""examples/train_data.py, run as the agent runs it: it reads every file of TRAINCTL_DATA_DIR (trainctl's own
folders excepted) through its multi-worker loader and says what it read."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TRAINER = Path(__file__).resolve().parents[2] / "examples" / "train_data.py"


def _read(env: dict[str, str], *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(TRAINER), *args], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    summary: dict[str, object] = json.loads(done.stdout.splitlines()[-1].removeprefix("data "))
    return summary


def test_every_data_file_is_read_once_per_epoch_in_batches_by_several_workers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = {f"part-{i:03d}.bin": os.urandom(1000 + i) for i in range(23)} | {"sub/labels.csv": b"a,1\nb,2\n"}
    for rel, body in files.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(body)
    (data / ".trainctl").mkdir()
    (data / ".trainctl" / "prewarm-listing.json").write_text("{}")  # trainctl's, not data

    before = time.time()
    summary = _read({"TRAINCTL_DATA_DIR": str(data)}, "--epochs", "2", "--batch", "5", "--workers", "4")
    assert summary["sha256"] == {rel: hashlib.sha256(body).hexdigest() for rel, body in files.items()}
    assert summary["files"] == 24 and summary["bytes"] == sum(len(b) for b in files.values())
    assert isinstance(summary["first_batch_s"], float)
    first_batch_at = summary["first_batch_at"]  # wall clock: a launch's time to the first batch (bench/data.py)
    assert isinstance(first_batch_at, float) and before < first_batch_at < time.time()


def test_without_data_it_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINCTL_DATA")}
    done = subprocess.run([sys.executable, str(TRAINER)], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "neither TRAINCTL_DATA_DIR nor TRAINCTL_DATA_URI" in done.stderr
