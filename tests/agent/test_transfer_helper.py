"""The transfer helper (agent/transfer_helper.py): its verbs run on a tmp folder as they run on an instance, and its
checksums equal S3's (published check values, hashlib, awscrt against the plain-Python fallback)."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from agent import transfer_helper as helper
from core.transfer import INSTANCE_HELPER, MIB, PARTIAL_PREFIX, Checksum, expectation


def write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def test_the_helper_shipped_is_this_module_and_shares_the_reserved_prefix() -> None:
    assert Path(helper.__file__).read_text(encoding="utf-8") == INSTANCE_HELPER
    assert helper.PARTIAL == PARTIAL_PREFIX


@pytest.mark.parametrize(
    ("algorithm", "check_value"),
    [("CRC32", 0xCBF43926), ("CRC32C", 0xE3069283), ("CRC64NVME", 0xAE8B14860A799888)],
)
def test_crcs_give_the_published_check_values_with_and_without_awscrt(algorithm: str, check_value: int) -> None:
    width = 8 if algorithm == "CRC64NVME" else 4
    assert helper.digest_blocks([b"1234", b"56789"], algorithm) == check_value.to_bytes(width, "big")
    if algorithm != "CRC32":  # zlib's in both cases
        data = random.Random(1).randbytes(10_000)
        fast, plain = helper.crc_function(algorithm), helper.crc_function(algorithm, plain=True)
        assert fast(data[5000:], fast(data[:5000], 0)) == plain(data[5000:], plain(data[:5000], 0))


def test_file_digests_etags_and_composites_follow_s3s_rules(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(2 * MIB + 7)
    (tmp_path / "f").write_bytes(data)
    part = MIB
    pieces = [data[i : i + part] for i in range(0, len(data), part)]
    assert helper.md5_file(tmp_path / "f") == md5(data)
    assert helper.checksum(tmp_path / "f", "SHA256") == base64.b64encode(hashlib.sha256(data).digest()).decode()
    digests = [hashlib.md5(p, usedforsecurity=False).digest() for p in pieces]
    etag = f"{md5(b''.join(digests))}-3"
    assert helper.multipart_etag(digests) == etag
    sha1s = b"".join(hashlib.sha1(p, usedforsecurity=False).digest() for p in pieces)
    assert (
        helper.composite(tmp_path / "f", "SHA1", part)
        == f"{base64.b64encode(hashlib.sha1(sha1s, usedforsecurity=False).digest()).decode()}-3"
    )
    size = len(data)
    assert helper.same(str(tmp_path / "f"), {"size": size, "etag": etag, "parts": [8 * MIB, part]})
    assert not helper.same(str(tmp_path / "f"), {"size": size, "etag": etag, "parts": [8 * MIB]})
    assert helper.same(str(tmp_path / "f"), expectation(size, md5=md5(data)))
    crc = Checksum("CRC32C", helper.checksum(tmp_path / "f", "CRC32C"))
    assert helper.same(str(tmp_path / "f"), expectation(size, checksum=crc))
    assert not helper.same(str(tmp_path / "f"), expectation(size + 1, checksum=crc))


def test_scan_lists_sizes_md5s_free_space_and_what_matches(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root, {"a.txt": b"alpha", "sub/b.bin": b"beta", f"{PARTIAL_PREFIX}x/half": b"h"})
    (root / "link").symlink_to(root / "a.txt")
    (tmp_path / "expect.json").write_text(
        json.dumps({"a.txt": expectation(5, md5=md5(b"alpha")), "sub/b.bin": expectation(4, md5=md5(b"other"))})
    )
    helper.scan(str(root), str(tmp_path / "scan.json"), "src", str(tmp_path / "expect.json"))
    scan = json.loads((tmp_path / "scan.json").read_text())
    assert scan["files"] == {"a.txt": [5, md5(b"alpha")], "sub/b.bin": [4, md5(b"beta")]}
    assert scan["match"] == ["a.txt"] and scan["exists"] and scan["is_dir"] and scan["free"] > 0
    helper.scan(str(tmp_path / "missing" / "deeper"), str(tmp_path / "none.json"), "dst")
    none = json.loads((tmp_path / "none.json").read_text())
    assert (none["exists"], none["files"], none["free"] > 0) == (False, {}, True)


def test_pack_then_unpack_moves_the_selected_files_and_refuses_escapes(tmp_path: Path) -> None:
    write(tmp_path / "src", {"a b/ü.txt": b"one", "two.bin": b"2" * 100, "left.out": b"no"})
    (tmp_path / "select.json").write_text(json.dumps(["a b/ü.txt", "two.bin"]))
    helper.pack(str(tmp_path / "src"), str(tmp_path / "select.json"), str(tmp_path / "b.tar"), "1")
    helper.unpack(str(tmp_path / "b.tar"), str(tmp_path / "dst"))
    dst = tmp_path / "dst"
    got = {p.relative_to(dst).as_posix(): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert got == {"a b/ü.txt": b"one", "two.bin": b"2" * 100}
    with tarfile.open(tmp_path / "evil.tar", "w") as tar:
        tar.add(tmp_path / "src" / "two.bin", arcname="../escape.bin")
    with pytest.raises(SystemExit, match="refused"):
        helper.unpack(str(tmp_path / "evil.tar"), str(tmp_path / "out"))
    assert not (tmp_path / "escape.bin").exists()


def test_cmds_writes_one_quoted_copy_per_file_and_refuses_a_bad_name(tmp_path: Path) -> None:
    (tmp_path / "select.json").write_text(json.dumps(["it's *.bin", "d/x"]))
    helper.cmds("s5cmd", "s3://b/p/", "/root", str(tmp_path / "select.json"), str(tmp_path / "run.txt"), "50")
    assert (tmp_path / "run.txt").read_text().splitlines() == [
        "cp --raw --part-size 50 's3://b/p/it'\"'\"'s *.bin' '/root/it'\"'\"'s *.bin'",
        "cp --raw --part-size 50 s3://b/p/d/x /root/d/x",
    ]
    helper.cmds("aws", "/root", "s3://b/p/", str(tmp_path / "select.json"), str(tmp_path / "run.sh"), "50")
    assert (tmp_path / "run.sh").read_text().startswith("aws s3 cp --only-show-errors --no-progress '/root/it")
    (tmp_path / "bad.json").write_text(json.dumps(["ok", "../up"]))
    with pytest.raises(SystemExit, match=r"'\.\.'"):
        helper.cmds("s5cmd", "s3://b/p/", "/root", str(tmp_path / "bad.json"), str(tmp_path / "no.txt"), "50")
    assert not (tmp_path / "no.txt").exists()


def test_apply_places_good_files_keeps_bad_ones_out_and_deletes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, partial = tmp_path / "root", tmp_path / "root" / f"{PARTIAL_PREFIX}t1"
    write(root, {"old.txt": b"old", "bad.txt": b"previous"})
    write(partial, {"new/a.txt": b"fresh", "bad.txt": b"corrupt"})
    manifest = {
        "files": {"new/a.txt": expectation(5, md5=md5(b"fresh")), "bad.txt": expectation(7, md5=md5(b"correct"))},
        "delete": ["old.txt", "never-there.txt"],
        "verify": True,
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    helper.apply(str(partial), str(root), str(tmp_path / "manifest.json"))
    assert json.loads(capsys.readouterr().out) == {"placed": 1, "mismatches": ["bad.txt"], "deleted": 1}
    assert {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()} == {
        "new/a.txt": b"fresh",
        "bad.txt": b"previous",
    }


def test_changed_narrows_a_receive_to_new_and_changed_files_and_remember_records_a_complete_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, listing = tmp_path / "root", tmp_path / "root" / ".trainctl" / "listing.json"
    write(root, {"same.txt": b"same", "etag.txt": b"abcd", "gone.txt": b"x", "lost.txt": b"lost", "short.txt": b"s"})
    held = {"size": 4, "etag": "e"}
    previous = {"same.txt": held, "etag.txt": held, "gone.txt": {"size": 1, "etag": "e"}, "lost.txt": held}
    previous["short.txt"] = {"size": 5, "etag": "e"}  # on disk with 1 byte: a receive that was cut short
    listing.parent.mkdir()
    listing.write_text(json.dumps(previous))
    (root / "lost.txt").unlink()  # listed, but not on disk any more
    files = {rel: {"size": 4, "etag": "e"} for rel in ("same.txt", "lost.txt", "new.txt")}
    files |= {"etag.txt": {"size": 4, "etag": "other"}, "short.txt": {"size": 5, "etag": "e"}}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"files": files, "delete": [], "verify": False}))

    helper.changed(str(manifest), str(root), str(listing))

    narrowed = json.loads(manifest.read_text())
    assert sorted(narrowed["files"]) == ["etag.txt", "lost.txt", "new.txt", "short.txt"]
    assert narrowed["delete"] == ["gone.txt"]
    assert not listing.exists()  # until this receive completes, the folder's content is not known
    assert json.loads((tmp_path / "manifest.json.full").read_text())["files"] == files

    applied = tmp_path / "applied.json"
    applied.write_text(json.dumps({"placed": 3, "mismatches": ["new.txt"], "deleted": 1}))
    helper.remember(str(tmp_path / "manifest.json.full"), str(applied), str(listing))
    assert json.loads(capsys.readouterr().out)["mismatches"] == ["new.txt"] and not listing.exists()
    applied.write_text(json.dumps({"placed": 4, "mismatches": [], "deleted": 1}))
    helper.remember(str(tmp_path / "manifest.json.full"), str(applied), str(listing))
    assert json.loads(capsys.readouterr().out)["placed"] == 4
    assert json.loads(listing.read_text()) == files
    # No listing (a volume filled before, or a receive that did not finish): every file is copied again.
    listing.unlink()
    manifest.write_text(json.dumps({"files": files, "delete": [], "verify": False}))
    helper.changed(str(manifest), str(root), str(listing))
    assert json.loads(manifest.read_text())["files"] == files


def test_sweep_removes_killed_receives_only_and_check_names_mismatches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    mine, dead, live = (root / f"{PARTIAL_PREFIX}{n}" for n in ("mine", "dead", "live"))
    for folder in (mine, dead, live):
        write(folder, {helper.LOCK: b""})
    fd = os.open(live / helper.LOCK, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a receive still running
    try:
        helper.sweep(str(root), str(mine))
    finally:
        os.close(fd)
    assert sorted(p.name for p in root.iterdir()) == sorted([mine.name, live.name])
    write(root, {"a": b"a", "b": b"b"})
    (tmp_path / "expect.json").write_text(
        json.dumps({"a": expectation(1, md5=md5(b"a")), "b": expectation(1, md5="0")})
    )
    helper.check(str(root), str(tmp_path / "expect.json"))
    assert json.loads(capsys.readouterr().out) == {"mismatches": ["b"]}


def test_the_shipped_text_runs_as_a_program_with_only_the_standard_library(tmp_path: Path) -> None:
    """As on an instance: `python3 - VERB ARGS` with the text on stdin, isolated from site-packages (-I -S)."""
    (tmp_path / "names.json").write_text(json.dumps(["ok/name", "../x"]))
    run = subprocess.run(
        [sys.executable, "-I", "-S", "-", "problems", str(tmp_path / "names.json")],
        input=INSTANCE_HELPER,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(run.stdout) == [["ok/name", None], ["../x", "has a '..', '.' or empty segment"]]
