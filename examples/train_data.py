#!/usr/bin/env python3
"""A trainer that reads its dataset the way trainctl delivers it (plain Python, standard library; boto3 only when
it reads S3 itself). Copy the loader as a template.

    python3 train_data.py [--epochs 1] [--batch 8] [--workers N]

Where the data is (DESIGN.md section 5, the trainer's contract):
- `TRAINCTL_DATA_DIR`: a folder holding the dataset (a prewarmed or existing EBS volume, or the instance store
  the agent copied it onto). Files are read from there; trainctl's own folders (`.trainctl`, `lost+found`) are not
  data.
- `TRAINCTL_DATA_URI`: `s3://bucket/prefix/` the trainer reads itself (direct-s3), with
  `TRAINCTL_DATA_PARALLELISM` concurrent requests (the advice's figure: S3 serves each connection at ~85 MB/s, so
  a loader needs many in flight).

The loader: a list of items (files or keys), read by `--workers` threads with a bounded read-ahead, handed out in
order in batches — the pattern of a framework's multi-worker data loader, without the framework. Each epoch
checksums what it read; the last line of the output is `data {...}` (JSON: files, bytes, sha256 per file, time
to the first batch from the trainer's start and as a wall-clock time), so a run can be compared with the source
(and bench/data.py measures a launch's time to the first batch).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

NOT_DATA = {".trainctl", "lost+found"}


def local_items(root: Path) -> tuple[list[str], Callable[[str], bytes]]:
    """Every data file under `root` (relative paths, sorted) and a reader for one."""
    items = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] not in NOT_DATA
    )
    return items, lambda rel: (root / rel).read_bytes()


def s3_items(uri: str) -> tuple[list[str], Callable[[str], bytes]]:
    """Every object under `uri` (keys relative to the prefix) and a reader for one (boto3: the trainer's own S3
    client; the instance's role gives it credentials)."""
    import boto3  # only for direct-s3: a trainer reading a folder needs no AWS library

    bucket, _, prefix = uri[len("s3://") :].partition("/")
    client = boto3.client("s3")
    keys = [
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
        if not obj["Key"].endswith("/")
    ]
    items = sorted(key[len(prefix) :].lstrip("/") for key in keys)
    base = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    return items, lambda rel: client.get_object(Bucket=bucket, Key=base + rel)["Body"].read()


def batches(
    items: list[str], read: Callable[[str], bytes], *, workers: int, batch: int
) -> Iterator[list[tuple[str, bytes]]]:
    """Batches of (item, bytes) in order, read by `workers` threads at most `2 * workers` items ahead."""
    ahead = 2 * workers
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="loader") as pool:
        pending: deque[tuple[str, Future[bytes]]] = deque()
        queue = iter(items)
        current: list[tuple[str, bytes]] = []
        while True:
            while len(pending) < ahead:
                item = next(queue, None)
                if item is None:
                    break
                pending.append((item, pool.submit(read, item)))
            if not pending:
                break
            item, future = pending.popleft()
            current.append((item, future.result()))
            if len(current) == batch:
                yield current
                current = []
        if current:
            yield current


def source() -> tuple[str, list[str], Callable[[str], bytes]]:
    folder = os.environ.get("TRAINCTL_DATA_DIR")
    if folder:
        return folder, *local_items(Path(folder))
    uri = os.environ.get("TRAINCTL_DATA_URI")
    if uri:
        return uri, *s3_items(uri)
    raise SystemExit("no dataset: neither TRAINCTL_DATA_DIR nor TRAINCTL_DATA_URI is set")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="trainctl example trainer that reads a dataset")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("TRAINCTL_DATA_PARALLELISM") or 8))
    args = parser.parse_args(argv)
    started = time.monotonic()
    where, items, read = source()
    print(f"dataset {where}: {len(items)} files, {args.workers} workers", flush=True)
    first_batch_s: float | None = None
    first_batch_at: float | None = None  # epoch seconds: comparable with the launch request's time
    sums: dict[str, str] = {}
    size = 0
    for epoch in range(1, args.epochs + 1):
        for chunk in batches(items, read, workers=args.workers, batch=args.batch):
            if first_batch_s is None:
                first_batch_s, first_batch_at = time.monotonic() - started, time.time()
            for item, data in chunk:
                sums[item] = hashlib.sha256(data).hexdigest()
                size += len(data) if epoch == 1 else 0
        print(f"epoch {epoch}/{args.epochs}: {len(sums)} files", flush=True)
    summary = {
        "source": where,
        "files": len(sums),
        "bytes": size,
        "first_batch_s": first_batch_s,
        "first_batch_at": first_batch_at,
        "sha256": sums,
    }
    print("data " + json.dumps(summary, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
