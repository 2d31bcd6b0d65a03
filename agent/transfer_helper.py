"""trainctl transfer helper: what the transfer flow runs ON an instance (Python standard library only, python3 >= 3.9).

The controller sends this file's text inline with each SSM command (`h VERB ARGS...` runs `python3 - VERB ARGS...`
with it on stdin; core/transfer.py builds the shell glue), so it needs nothing installed. It is also the one home of
the checksum arithmetic in S3's form (MD5 and multipart ETags, CRC64NVME/CRC32C/CRC32/SHA, COMPOSITE checksums):
tasks/local_files.py imports it, so the controller and the instance compute every checksum the same way.

Verbs (paths are the instance's; JSON in and out):
    scan ROOT OUT MODE [EXPECT]      list ROOT (size; MD5 too when MODE is src), match EXPECT, free space → OUT
    pack ROOT SELECT ARCHIVE GZ      tar the selected files (gz when GZ is 1)
    unpack ARCHIVE DEST              extract, refusing escaping names, links and devices
    cmds TOOL SRC DST SELECT OUT MIB one copy command per selected file (s5cmd run file, or aws CLI lines)
    apply PARTIAL ROOT MANIFEST      check each fetched file, move it under its final name, delete, print result
    changed MANIFEST ROOT LISTING    narrow MANIFEST to what differs from the LISTING ROOT holds (incremental sync)
    remember FULL APPLIED LISTING    after a receive without mismatch, LISTING := FULL; print APPLIED
    check ROOT EXPECT                print the files that do not match EXPECT
    sweep ROOT MINE                  remove partial folders of killed receives
    problems NAMES                   print core/paths.py's verdict on each name
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import sys
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

PARTIAL = ".trainctl-partial-"  # core.transfer.PARTIAL_PREFIX (tests/agent/test_transfer_helper.py compares)
LOCK = PARTIAL + "lock"
BLOCK = 4 * 1024 * 1024

# -- checksums in S3's form ---------------------------------------------------------------------------------------


def _crc_table(poly: int) -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


def _plain_crc(table: list[int], mask: int) -> Callable[[bytes, int], int]:
    # Reflected table CRC in plain Python (~5 MB/s): only where awscrt (C, GB/s) is not installed.
    def update(data: bytes, crc: int = 0) -> int:
        crc ^= mask
        for byte in data:
            crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
        return crc ^ mask

    return update


def fast_crc() -> bool:
    """Whether CRC64NVME/CRC32C run at C speed here (awscrt importable)."""
    try:
        import awscrt.checksums  # noqa: F401
    except ImportError:
        return False
    return True


def crc_function(algorithm: str, *, plain: bool = False) -> Callable[[bytes, int], int]:
    """`update(data, crc) -> crc` for CRC64NVME or CRC32C: awscrt's, else (or with `plain`) one in plain Python."""
    if not plain:
        try:
            from awscrt import checksums

            return checksums.crc64nvme if algorithm == "CRC64NVME" else checksums.crc32c
        except ImportError:
            pass
    if algorithm == "CRC64NVME":
        return _plain_crc(_crc_table(0x9A6C9329AC4BC9B5), (1 << 64) - 1)
    return _plain_crc(_crc_table(0x82F63B78), (1 << 32) - 1)


def digest_blocks(blocks: Iterable[bytes], algorithm: str) -> bytes:
    """The digest of the concatenated blocks; CRCs as S3 encodes them (big-endian bytes)."""
    if algorithm in ("MD5", "SHA256", "SHA1"):
        h = hashlib.new(algorithm.lower(), usedforsecurity=False)
        for block in blocks:
            h.update(block)
        return h.digest()
    if algorithm == "CRC32":
        update: Callable[[bytes, int], int] = zlib.crc32
        width = 4
    else:
        update, width = crc_function(algorithm), 8 if algorithm == "CRC64NVME" else 4
    crc = 0
    for block in blocks:
        crc = update(block, crc)
    return crc.to_bytes(width, "big")


def read_range(path: str | os.PathLike[str], offset: int, length: int) -> Iterator[bytes]:
    """The file's bytes from `offset`, at most `length` of them, in blocks of 4 MiB."""
    with open(path, "rb") as f:
        f.seek(offset)
        while length > 0:
            block = f.read(min(BLOCK, length))
            if not block:
                return
            length -= len(block)
            yield block


def digest_range(path: str | os.PathLike[str], offset: int, length: int, algorithm: str) -> bytes:
    return digest_blocks(read_range(path, offset, length), algorithm)


def md5_file(path: str | os.PathLike[str]) -> str:
    return digest_range(path, 0, os.path.getsize(path), "MD5").hex()


def multipart_etag(part_md5s: Sequence[bytes]) -> str:
    """The ETag S3 gives a multipart upload: md5 of the concatenated binary part MD5s, then `-<parts>`."""
    return f"{digest_blocks([b''.join(part_md5s)], 'MD5').hex()}-{len(part_md5s)}"


def composite_of(part_digests: Sequence[bytes], algorithm: str) -> str:
    """The COMPOSITE checksum of a multipart upload: the checksum of its parts' binary checksums, then `-<parts>`."""
    whole = digest_blocks([b"".join(part_digests)], algorithm)
    return f"{base64.b64encode(whole).decode()}-{len(part_digests)}"


def checksum(path: str | os.PathLike[str], algorithm: str) -> str:
    """The file's checksum in S3's form (base64 of the big-endian digest)."""
    return base64.b64encode(digest_range(path, 0, os.path.getsize(path), algorithm)).decode()


def composite(path: str | os.PathLike[str], algorithm: str, part: int) -> str:
    parts = [digest_range(path, offset, part, algorithm) for offset in range(0, os.path.getsize(path), part)]
    return composite_of(parts, algorithm)


def etag_ok(path: str, want: dict[str, Any]) -> bool:
    etag = want["etag"]
    if "-" not in etag:
        return md5_file(path) == etag
    size = os.path.getsize(path)
    for part in want.get("parts", []):
        digests = [digest_range(path, offset, part, "MD5") for offset in range(0, size, part)]
        if multipart_etag(digests) == etag:
            return True
    return False


def same(path: str, want: dict[str, Any]) -> bool:
    """Does the file match an expectation (core.transfer.expectation: size and MD5, checksum or ETag)?"""
    if os.path.getsize(path) != want["size"]:
        return False
    if "checksum" in want:
        algorithm, value = want["checksum"]
        if "-" in value:
            return any(composite(path, algorithm, part) == value for part in want.get("parts", []))
        return checksum(path, algorithm) == value
    return md5_file(path) == want["md5"] if "md5" in want else etag_ok(path, want)


# -- names --------------------------------------------------------------------------------------------------------


def path_problem(rel: str) -> str | None:
    """Why a name from S3 cannot become a path under a folder, or None: core/paths.py's rule, copied (core is not
    on the instance; tests/core/test_paths.py compares the two). The agent's one copy: agent/paths.py imports it."""
    if not rel:
        return "is empty"
    if rel.startswith("/"):
        return "is absolute"
    if "\\" in rel:
        return "contains a backslash"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in rel):
        return "contains a control character"
    try:
        size = len(rel.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "has a '..', '.' or empty segment"
    if any(len(p.encode("utf-8")) > 255 for p in parts):
        return "has a segment over 255 bytes"
    if size > 4096:
        return "is over 4096 bytes"
    return None


def problem(rel: str) -> str | None:
    """`path_problem`, and a transfer's own partial folders are not names it copies."""
    why = path_problem(rel)
    if why is None and rel.startswith(PARTIAL):
        return "starts with trainctl's reserved prefix"
    return why


def inside(root: str, rel: str) -> str:
    why = problem(rel)
    if why:
        raise SystemExit(f"refused: {rel!r} {why} (under {root}); nothing was copied")
    return os.path.join(root, *rel.split("/"))


def check_tree(rels: Iterable[str]) -> None:
    names = set(rels)
    for rel in sorted(names):
        inside("", rel)
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in names:
                raise SystemExit(f"refused: {'/'.join(parts[:depth])!r} is a file and also a folder of {rel!r}")


def walk(root: str) -> Iterator[tuple[str, str]]:
    """(relative name, path) of every regular file under `root`; symlinks and our partial folders are skipped."""
    for folder, dirs, files in os.walk(root):
        if folder == root:
            dirs[:] = [d for d in dirs if not d.startswith(PARTIAL)]
        for name in files:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                yield os.path.relpath(path, root).replace(os.sep, "/"), path


def load(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


# -- verbs --------------------------------------------------------------------------------------------------------


def problems(names_path: str) -> None:
    print(json.dumps([[rel, problem(rel)] for rel in load(names_path)]))


def scan(root: str, out: str, mode: str, expect_path: str | None = None) -> None:
    files: dict[str, list[Any]] = {}
    match: list[str] = []
    result: dict[str, Any] = {"exists": os.path.exists(root), "is_dir": os.path.isdir(root), "files": files}
    result["match"] = match
    probe = root
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    result["free"] = shutil.disk_usage(probe).free
    result["fast_crc"] = fast_crc()
    expect = load(expect_path) if expect_path else {}
    if result["is_dir"]:
        for rel, path in walk(root):
            size = os.path.getsize(path)
            files[rel] = [size, md5_file(path) if mode == "src" else None]
            if rel in expect and expect[rel]["size"] == size and same(path, expect[rel]):
                match.append(rel)
    with open(out, "w") as f:
        json.dump(result, f)


def pack(root: str, select: str, archive: str, gz: str) -> None:
    # compresslevel 1: many small files gain from one stream far more than from a denser gzip.
    options: dict[str, Any] = {"mode": "w:gz", "compresslevel": 1} if gz == "1" else {"mode": "w"}
    with tarfile.open(archive, **options) as tar:
        for rel in load(select):
            tar.add(inside(root, rel), arcname=rel, recursive=False)


def unpack(archive: str, dest: str) -> None:
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            inside(dest, m.name)
            if not (m.isfile() or m.isdir()):
                raise SystemExit(f"refused: archive member {m.name!r} is not a plain file")
        check_tree([m.name for m in tar.getmembers() if m.isfile()])
        # Every member was checked above; the data filter (where this Python has it) checks again.
        options: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, **options)  # noqa: S202


def cmds(tool: str, src_base: str, dst_base: str, select: str, out: str, part_mib: str) -> None:
    check_tree(load(select))  # every name, before the first copy starts
    with open(out, "w") as f:
        for rel in load(select):
            s = src_base + rel if src_base.startswith("s3://") else inside(src_base, rel)
            d = dst_base + rel if dst_base.startswith("s3://") else inside(dst_base, rel)
            if tool == "s5cmd":
                f.write(f"cp --raw --part-size {part_mib} {shlex.quote(s)} {shlex.quote(d)}\n")
            else:
                f.write(f"aws s3 cp --only-show-errors --no-progress {shlex.quote(s)} {shlex.quote(d)}\n")


def apply(partial: str, root: str, manifest_path: str) -> None:
    manifest = load(manifest_path)
    placed, bad, deleted = 0, [], 0
    for rel, want in sorted(manifest["files"].items()):
        got = inside(partial, rel)
        ok = os.path.isfile(got) and os.path.getsize(got) == want["size"]
        if not ok or (manifest["verify"] and not same(got, want)):
            bad.append(rel)
            continue
        final = inside(root, rel)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.replace(got, final)
        placed += 1
    for rel in manifest["delete"]:
        path = inside(root, rel)
        if os.path.isfile(path):
            os.remove(path)
            deleted += 1
    shutil.rmtree(partial, ignore_errors=True)
    print(json.dumps({"placed": placed, "mismatches": bad, "deleted": deleted}))


def _listed(entry: Any) -> tuple[int, str]:
    return int(entry.get("size", -1)), str(entry.get("etag", ""))


def changed(manifest_path: str, root: str, listing_path: str) -> None:
    """Narrow a receive's manifest to what ROOT does not hold yet, by the listing its last complete receive left
    (`remember`; key → size and ETag): new keys, keys whose size or ETag changed, files missing or of another size
    on disk; the listing's keys no longer in the manifest are deleted. The full manifest is kept as
    `<manifest>.full`. The listing is removed now: a receive that does not finish leaves none, and the next one
    compares nothing and copies everything again."""
    manifest = load(manifest_path)
    try:
        previous = load(listing_path)
    except (OSError, ValueError):
        previous = {}
    with open(manifest_path + ".full", "w") as f:
        json.dump(manifest, f)
    files = manifest["files"]

    def held(rel: str) -> bool:
        path = inside(root, rel)
        same_entry = rel in previous and _listed(previous[rel]) == _listed(files[rel])
        return same_entry and os.path.isfile(path) and os.path.getsize(path) == files[rel]["size"]

    manifest["files"] = {rel: want for rel, want in files.items() if not held(rel)}
    manifest["delete"] = sorted({*manifest.get("delete", []), *(rel for rel in previous if rel not in files)})
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    if os.path.exists(listing_path):
        os.remove(listing_path)


def remember(full_path: str, applied_path: str, listing_path: str) -> None:
    """After `apply`: when nothing mismatched, record what the folder now holds (the full manifest's keys, sizes,
    ETags) for the next `changed`; print apply's result either way (the last line the controller reads)."""
    applied = load(applied_path)
    if not applied["mismatches"]:
        listing = {
            rel: {"size": want["size"], "etag": want.get("etag", "")} for rel, want in load(full_path)["files"].items()
        }
        os.makedirs(os.path.dirname(listing_path), exist_ok=True)
        with open(listing_path + ".tmp", "w") as f:
            json.dump(listing, f)
        os.replace(listing_path + ".tmp", listing_path)
    print(json.dumps(applied))


def sweep(root: str, mine: str) -> None:
    """Remove the partial folders killed receives left under `root`: their lock is free (a live receive holds its
    own, flock, for as long as its script runs), or they have no lock and are a minute old. Not `mine`."""
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if not name.startswith(PARTIAL) or path == mine or not os.path.isdir(path) or os.path.islink(path):
            continue
        try:
            fd = os.open(os.path.join(path, LOCK), os.O_RDWR)
        except FileNotFoundError:
            if time.time() - os.stat(path).st_mtime > 60:
                shutil.rmtree(path, ignore_errors=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live receive's
            os.close(fd)
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


def check(root: str, expect_path: str) -> None:
    bad = [rel for rel, want in sorted(load(expect_path).items()) if not same(inside(root, rel), want)]
    print(json.dumps({"mismatches": bad}))


VERBS: dict[str, Callable[..., None]] = {
    "scan": scan,
    "pack": pack,
    "unpack": unpack,
    "cmds": cmds,
    "apply": apply,
    "changed": changed,
    "remember": remember,
    "check": check,
    "sweep": sweep,
    "problems": problems,
}


def main(argv: list[str]) -> None:
    VERBS[argv[0]](*argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
