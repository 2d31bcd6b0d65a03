"""A transfer flow run hands its progress to the caller's subscribers (as the CLI subscribes): the planned totals
first, then the phases, the bytes moved, and the end."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.progress import BytesMoved, Finished, ProgressEvent, subscribed
from core.transfer import TransferRequest
from flows.transfer import transfer
from sandbox import Sandbox

pytestmark = pytest.mark.sandbox


def test_a_transfer_flow_run_tells_the_callers_subscribers_where_it_stands(cloud: Sandbox, tmp_path: Path) -> None:
    cloud.client("s3").create_bucket(Bucket="progress")
    files = {f"d/f{i}.bin": bytes([i]) * (1000 + i) for i in range(5)}
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    total = sum(len(d) for d in files.values())
    events: list[ProgressEvent] = []
    with subscribed(events.append):
        report = transfer(TransferRequest(src=str(tmp_path), dst="s3://progress/p/"))
    keys = cloud.client("s3").list_objects_v2(Bucket="progress", Prefix="p/")["KeyCount"]
    assert (keys, report.files_copied) == (5, 5)
    moved = [e for e in events if isinstance(e, BytesMoved)]
    assert moved[0] == BytesMoved("copying", 0, 5, 0, total)
    assert [e.phase for e in moved][-1] == "verifying" and moved[-1].files_total == 5
    assert events[-1] == Finished(f"done: 5/5 files, {total / 1024:.1f} KiB/{total / 1024:.1f} KiB")
    # Outside the `subscribed` block, a run (as from the UI) has no subscriber but its own artifact.
    transfer(TransferRequest(src=str(tmp_path), dst="s3://progress/q/"))
    assert len([e for e in events if isinstance(e, Finished)]) == 1
