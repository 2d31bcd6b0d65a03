"""A job's checkpoints in S3: restore the latest complete one (falling back past a bad one), snapshot and upload
the checkpoint folder, verify an upload.

Format: `<checkpoint_uri>/ckpt-<seq:06d>/<relative path>` for each file, then `ckpt-<seq>/MANIFEST.json` =
{"seq", "job", "attempt", "instance_id", "created_at", "files": [{"path", "size", "sha256"}]}, then `LATEST.json` =
{"seq", "prefix"}. Files named `*.tmp` (a trainer's in-flight temporaries) are not part of a checkpoint. While
uploading, a hard-link snapshot of the folder sits next to it (`.<name>.trainctl-snapshot`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from .errors import IntegrityError, S3Error
from .host import log, now_iso, write_atomic
from .layout import LATEST_NAME, MANIFEST_NAME, checkpoint_folder, split_s3_uri
from .paths import check_paths
from .s3 import S3Client
from .spec import AgentSpec

Fingerprint = tuple[tuple[str, int, int, int], ...]


def is_temporary(name: str) -> bool:
    return name.endswith(".tmp")


def fingerprint(folder: Path) -> Fingerprint:
    """(relative path, size, mtime_ns, inode) of every file: a rename or rewrite changes it."""
    found: list[tuple[str, int, int, int]] = []
    if not folder.is_dir():
        return ()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in filenames:
            if is_temporary(name):
                continue
            full = Path(dirpath) / name
            try:
                st = full.stat()
            except FileNotFoundError:  # renamed away while we walked
                continue
            if not os.path.isfile(full):
                continue
            found.append((full.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(sorted(found))


class Checkpoints:
    """Restore, snapshot+upload and verify a job's checkpoints (layout in the module docstring)."""

    def __init__(self, s3: S3Client, spec: AgentSpec, folder: Path, instance_id: str) -> None:
        self.s3 = s3
        self.spec = spec
        self.folder = folder
        self.instance_id = instance_id
        self.bucket, key = split_s3_uri(spec.checkpoint_uri)
        self.prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        self.snapshot_dir = folder.parent / f".{folder.name}.trainctl-snapshot"
        # What a prefetch downloaded (seq, and each file's size, sha256, mtime_ns): the restore at the start then
        # downloads only what changed since (nothing, normally).
        self.prefetch_marker = folder.parent / f".{folder.name}.trainctl-prefetched.json"
        self.last_seq: int | None = None
        self.next_seq = 1
        self.last_fingerprint: Fingerprint = ()
        self.last_uploaded_at: str | None = None

    def seqs_in_s3(self) -> list[int]:
        seqs = []
        for sub in self.s3.list_prefixes(self.bucket, self.prefix + "ckpt-"):
            match = re.search(r"ckpt-(\d+)/$", sub)
            if match:
                seqs.append(int(match.group(1)))
        return seqs

    def restore(self, *, prefetch: bool = False) -> str:
        """Download the latest complete checkpoint into the folder; returns it ("" when there is none). With
        `prefetch` (before the trainer's start: the replacement of an interrupted attempt, while the old instance
        still serves its notice) what was downloaded is remembered, so the restore at the start skips it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        done = self._restore_latest(prefetch)
        if not prefetch:
            self.prefetch_marker.unlink(missing_ok=True)
        return done

    def _restore_latest(self, prefetch: bool) -> str:
        latest = self.s3.get_json(self.bucket, self.prefix + LATEST_NAME)
        existing = self.seqs_in_s3()
        candidates: list[int] = []
        if isinstance(latest, dict) and isinstance(latest.get("seq"), int):
            candidates.append(int(latest["seq"]))
        self.next_seq = max([0, *existing, *candidates]) + 1  # never reuse a folder, even an incomplete one
        if not candidates:
            log.info("restore: no checkpoint at %s", self.spec.checkpoint_uri)
            return ""
        # If the latest fails verification, fall back to earlier complete checkpoints.
        candidates += sorted((s for s in existing if s < candidates[0]), reverse=True)[:3]
        for seq in candidates:
            try:
                self._download(seq, remember=prefetch)
            except (S3Error, IntegrityError, OSError) as exc:
                log.warning("restore: checkpoint %d unusable: %s", seq, exc)
                continue
            self.last_seq = seq
            self.last_fingerprint = fingerprint(self.folder)  # do not upload what we just downloaded
            log.info("restore: checkpoint %d restored into %s", seq, self.folder)
            return str(self.folder)
        log.warning("restore: no usable checkpoint; starting from scratch")
        return ""

    def _prefetched(self, seq: int) -> dict[str, Any]:
        """{path: [size, sha256, mtime_ns]} of what a prefetch of checkpoint `seq` downloaded ({} for none)."""
        with contextlib.suppress(OSError, ValueError):
            marker = json.loads(self.prefetch_marker.read_text())
            if isinstance(marker, dict) and marker.get("seq") == seq and isinstance(marker.get("files"), dict):
                return dict(marker["files"])
        return {}

    def _unchanged(self, entry: dict[str, Any], known: Any) -> bool:
        """The prefetched file is still the one the manifest names, untouched since (size and mtime)."""
        try:
            st = (self.folder / str(entry["path"])).stat()
        except OSError:
            return False
        return (
            isinstance(known, list)
            and known == [int(entry["size"]), entry["sha256"], st.st_mtime_ns]
            and st.st_size == int(entry["size"])
        )

    def _download(self, seq: int, *, remember: bool = False) -> None:
        folder_key = self.prefix + checkpoint_folder(seq)
        manifest = self.s3.get_json(self.bucket, folder_key + MANIFEST_NAME)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
            raise IntegrityError(f"{folder_key}{MANIFEST_NAME} is missing or malformed")
        # Every name is checked before the first download: a refused checkpoint writes nothing.
        check_paths([str(entry["path"]) for entry in manifest["files"]])
        prefetched = self._prefetched(seq)
        kept: dict[str, list[Any]] = {}
        for entry in manifest["files"]:
            rel = str(entry["path"])
            if self._unchanged(entry, prefetched.get(rel)):
                kept[rel] = prefetched[rel]
                continue
            size, sha = self.s3.download_file(self.bucket, folder_key + rel, self.folder / rel)
            if size != int(entry["size"]) or sha != entry["sha256"]:
                raise IntegrityError(
                    f"{rel}: got {size} bytes sha256 {sha}, manifest says {entry['size']} {entry['sha256']}"
                )
            kept[rel] = [size, sha, (self.folder / rel).stat().st_mtime_ns]
        if remember:
            write_atomic(self.prefetch_marker, json.dumps({"seq": seq, "files": kept}).encode())

    def changed(self) -> bool:
        current = fingerprint(self.folder)
        return bool(current) and current != self.last_fingerprint

    def _snapshot(self) -> Fingerprint:
        """A consistent copy of the folder: hard links (the trainer renames new files in, so a linked inode never
        changes), a copy across filesystems; repeated until the folder did not change while we took it."""
        current: Fingerprint = ()
        for _ in range(5):
            before = fingerprint(self.folder)
            shutil.rmtree(self.snapshot_dir, ignore_errors=True)
            self.snapshot_dir.mkdir(parents=True)
            complete = True
            for rel, *_ in before:
                source, target = self.folder / rel, self.snapshot_dir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    try:
                        os.link(source, target)
                    except OSError:
                        shutil.copy2(source, target)
                except FileNotFoundError:
                    complete = False
                    break
            current = fingerprint(self.folder)
            if complete and current == before:
                return before
            time.sleep(0.1)
        log.warning("checkpoint: the folder kept changing while snapshotting; uploading the last snapshot")
        return current

    def upload(self, *, force: bool = False) -> int | None:
        """Upload the folder as a new checkpoint if it changed; returns its seq (None: nothing new)."""
        if not force and not self.changed():
            return None
        taken = self._snapshot()
        files = sorted(p.relative_to(self.snapshot_dir).as_posix() for p in self.snapshot_dir.rglob("*") if p.is_file())
        if not files:
            return None
        seq = self.next_seq
        self.next_seq += 1  # even if this upload fails half-way: a later one never mixes into its folder
        folder_key = self.prefix + checkpoint_folder(seq)
        entries: list[dict[str, Any]] = []
        try:
            for rel in files:
                if rel == MANIFEST_NAME:
                    log.warning("checkpoint: skipping the trainer's own %s (reserved name)", rel)
                    continue
                size, sha = self.s3.put_file(self.bucket, folder_key + rel, self.snapshot_dir / rel)
                entries.append({"path": rel, "size": size, "sha256": sha})
            manifest = {
                "seq": seq,
                "job": self.spec.job,
                "attempt": self.spec.attempt,
                "instance_id": self.instance_id,
                "created_at": now_iso(),
                "files": entries,
            }
            self.s3.put_json(self.bucket, folder_key + MANIFEST_NAME, manifest)  # after every file
            self.s3.put_json(self.bucket, self.prefix + LATEST_NAME, {"seq": seq, "prefix": checkpoint_folder(seq)})
        finally:
            shutil.rmtree(self.snapshot_dir, ignore_errors=True)
        self.last_seq = seq
        self.last_fingerprint = taken
        self.last_uploaded_at = now_iso()
        log.info("checkpoint %d uploaded (%d files, %d bytes)", seq, len(entries), sum(e["size"] for e in entries))
        return seq

    def verify(self, seq: int) -> tuple[bool, str]:
        """Re-read the manifest, list the folder, compare every size, and check LATEST points here."""
        folder_key = self.prefix + checkpoint_folder(seq)
        manifest = self.s3.get_json(self.bucket, folder_key + MANIFEST_NAME)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
            return False, "manifest missing"
        listed = {obj.key: obj.size for obj in self.s3.list_objects(self.bucket, folder_key)}
        for entry in manifest["files"]:
            key = folder_key + str(entry["path"])
            if listed.get(key) != int(entry["size"]):
                return False, f"{key}: size {listed.get(key)} in S3, {entry['size']} in the manifest"
        latest = self.s3.get_json(self.bucket, self.prefix + LATEST_NAME)
        if not isinstance(latest, dict) or latest.get("seq") != seq:
            return False, f"LATEST.json is {latest!r}, not seq {seq}"
        return True, f"{len(manifest['files'])} files verified"
