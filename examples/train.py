#!/usr/bin/env python3
"""A minimal trainer that follows trainctl's contract (plain Python, standard library; copy it as a template).

    python3 train.py --steps 100 --step-seconds 1 [--fail-with 3 --fail-at 5] [--blob-mb 1024]

The contract (DESIGN.md section 5):
- `TRAINCTL_CHECKPOINT_DIR`: write checkpoints there. Write each file atomically (a temp file in the same
  folder, then rename) so the agent's snapshot never sees half a file; names ending in `.tmp` are not uploaded.
- `TRAINCTL_RESUME_FROM`: the restored checkpoint folder, or "" on a fresh start. We continue at step + 1.
- `TRAINCTL_PROGRESS_FILE` (optional): write the step there as an integer after each step, atomically (temp file,
  then rename). The agent's status shows it as `step`, and cost-watch's idle-GPU stop counts the job as training
  while it moves; a trainer that does not write it counts as training while its log grows.
- SIGTERM means "save now and exit" (a spot notice or `trainctl train stop`). We exit 0 only when every step is
  done, else 143 (128 + SIGTERM) so an interrupted run is never mistaken for a finished one.

Checkpoint: `weights.bin` (stand-in for model weights) and `state.json` (step, loss, times), state written last.
`--blob-mb N` adds `blob.bin`, N MB written once after the first step (kept as restored on a resume): a checkpoint
of a real model's size for bench/recovery.py. `state.json` says when this run's first step ended (`first_step_at`)
and the step it resumed from (`resumed_from_step`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

STATE = "state.json"
WEIGHTS = "weights.bin"
BLOB = "blob.bin"
INTERRUPTED_EXIT = 143  # 128 + SIGTERM, what a shell reports for a process killed by SIGTERM

_sigterm_at: list[float] = []  # set by the handler; the loop checks it between (short) sleeps


def _on_sigterm(signum: int, frame: Any) -> None:
    if not _sigterm_at:
        _sigterm_at.append(time.time())


def _write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as out:
        out.write(data)
        out.flush()
        if durable:  # the rename must not publish a file whose bytes are still in the page cache
            os.fsync(out.fileno())
    os.replace(tmp, path)


def report_step(step: int) -> None:
    """The step for the agent and cost-watch (TRAINCTL_PROGRESS_FILE); readers need the rename, not an fsync."""
    progress = os.environ.get("TRAINCTL_PROGRESS_FILE")
    if progress:
        _write_atomic(Path(progress), f"{step}\n".encode(), durable=False)


def save(folder: Path, state: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # "Weights" that depend on the step, 64 KiB, so a restore can be checked byte for byte.
    seed = hashlib.sha256(f"weights-{state['step']}".encode()).digest()
    _write_atomic(folder / WEIGHTS, seed * 2048)
    state = {**state, "weights_sha256": hashlib.sha256(seed * 2048).hexdigest(), "saved_at": time.time()}
    _write_atomic(folder / STATE, json.dumps(state, indent=2).encode())


def write_blob(folder: Path, megabytes: int) -> None:
    """`megabytes` MB of incompressible bytes in `folder`/blob.bin, once: a restored one is kept as it is."""
    if megabytes <= 0 or (folder / BLOB).exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (BLOB + ".tmp")
    with tmp.open("wb") as out:
        for _ in range(megabytes):
            out.write(os.urandom(1024 * 1024))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, folder / BLOB)


def load(folder: str) -> dict[str, Any] | None:
    if not folder:
        return None
    path = Path(folder) / STATE
    if not path.exists():
        return None
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="trainctl example trainer")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--step-seconds", type=float, default=0.5)
    parser.add_argument("--fail-with", type=int, default=None, help="exit with this code at --fail-at")
    parser.add_argument("--fail-at", type=int, default=None, help="step at which --fail-with exits (default: first)")
    parser.add_argument("--blob-mb", type=int, default=0, help="write a blob of this many MB into the checkpoint once")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)

    folder = Path(os.environ.get("TRAINCTL_CHECKPOINT_DIR") or "checkpoints")
    resumed = load(os.environ.get("TRAINCTL_RESUME_FROM", ""))
    start = int(resumed["step"]) + 1 if resumed else 1
    loss = float(resumed["loss"]) if resumed else 1.0
    state: dict[str, Any] = {
        "job": os.environ.get("TRAINCTL_JOB", ""),
        "attempt": os.environ.get("TRAINCTL_ATTEMPT", ""),
        "step": start - 1,
        "loss": loss,
        "resumed_from_step": int(resumed["step"]) if resumed else None,
        "first_step_at": None,  # when this run's first step ended (epoch seconds)
        "sigterm_received_at": None,
    }
    if resumed:
        print(f"resuming from step {resumed['step']} (loss {loss:.4f})", flush=True)
    else:
        print("starting from scratch", flush=True)

    for step in range(start, args.steps + 1):
        if args.fail_with is not None and step == (args.fail_at or start):
            print(f"step {step}: failing with exit code {args.fail_with} as asked", flush=True)
            return args.fail_with
        # "Train" for a step, waking often so SIGTERM is answered within ~50 ms.
        deadline = time.monotonic() + args.step_seconds
        while time.monotonic() < deadline and not _sigterm_at:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        if _sigterm_at:
            break  # the step in progress is lost; the last completed one is saved below
        loss *= 0.97
        state.update(step=step, loss=loss)
        state["first_step_at"] = state["first_step_at"] or time.time()
        save(folder, state)
        report_step(step)
        print(f"step {step}/{args.steps} loss {loss:.4f}", flush=True)
        if step == start:
            write_blob(folder, args.blob_mb)

    if _sigterm_at:
        state["sigterm_received_at"] = _sigterm_at[0]
        save(folder, state)
        print(f"SIGTERM at {_sigterm_at[0]:.3f}: saved step {state['step']}, exiting", flush=True)
        return 0 if state["step"] >= args.steps else INTERRUPTED_EXIT
    if state["step"] < start:  # nothing left to do (resumed from a finished run): keep the checkpoint as is
        print(f"already done: step {state['step']} of {args.steps}", flush=True)
        return 0
    print(f"done: {args.steps} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
