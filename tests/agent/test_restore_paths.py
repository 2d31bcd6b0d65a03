"""Checkpoint restore turns manifest entries (keys under the checkpoint prefix) into paths: a checkpoint with a
name that fails core/paths.py's rule is refused whole, before its first file is written, and restore falls back
to the previous one. An in-memory S3 stands in for the bucket (the agent's S3 client is tested elsewhere)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from agent.checkpoints import Checkpoints
from agent.layout import LATEST_NAME, MANIFEST_NAME, checkpoint_folder
from agent.spec import AgentSpec


class MemoryS3:
    """The three calls restore makes, over a dict of key → bytes (JSON documents stored as bytes too)."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.downloaded: list[str] = []

    def put_checkpoint(self, seq: int, files: dict[str, bytes]) -> None:
        folder = f"ck/{checkpoint_folder(seq)}"
        entries = []
        for rel, data in files.items():
            self.objects[folder + rel] = data
            entries.append({"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        self.objects[folder + MANIFEST_NAME] = json.dumps({"seq": seq, "files": entries}).encode()
        self.objects["ck/" + LATEST_NAME] = json.dumps({"seq": seq}).encode()

    def get_json(self, bucket: str, key: str) -> Any | None:
        return json.loads(self.objects[key]) if key in self.objects else None

    def list_prefixes(self, bucket: str, prefix: str = "", delimiter: str = "/") -> list[str]:
        rest = {k[len(prefix) :].split(delimiter, 1)[0] for k in self.objects if k.startswith(prefix)}
        return sorted(prefix + r + delimiter for r in rest)

    def download_file(self, bucket: str, key: str, target: Path) -> tuple[int, str]:
        self.downloaded.append(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.objects[key])
        return len(self.objects[key]), hashlib.sha256(self.objects[key]).hexdigest()


@pytest.mark.parametrize(
    "bad",
    [
        {"model.pt": b"new", "../../escape.pt": b"x"},
        {"model.pt": b"new", "/abs.pt": b"x"},
        {"model.pt": b"new", "opt/\x1b[2J.pt": b"x"},
        {"model.pt": b"new", "win\\dows.pt": b"x"},
        {"model.pt": b"new", "model.pt/inner": b"x"},  # a file and a folder
    ],
)
def test_a_checkpoint_with_an_unsafe_name_is_refused_whole_and_restore_falls_back(
    tmp_path: Path, bad: dict[str, bytes]
) -> None:
    s3 = MemoryS3()
    s3.put_checkpoint(1, {"model.pt": b"good", "opt/state.pt": b"opt"})
    s3.put_checkpoint(2, bad)
    spec = AgentSpec.from_dict(
        {"job": "j", "attempt": 2, "bucket": "b", "command": ["x"], "checkpoint_uri": "s3://b/ck/"}
    )
    folder = tmp_path / "job" / "checkpoints"
    checkpoints = Checkpoints(s3, spec, folder, "i-0123456789abcdef0")  # type: ignore[arg-type]

    assert checkpoints.restore() == str(folder)

    assert checkpoints.last_seq == 1 and checkpoints.next_seq == 3
    assert not any(key.startswith("ck/ckpt-000002/") for key in s3.downloaded)  # not even its safe file
    files = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert files == {"job/checkpoints/model.pt": b"good", "job/checkpoints/opt/state.pt": b"opt"}
