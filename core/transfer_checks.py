"""Which check a transferred file gets, the pure part: the names the transfer report counts, and for a download of
a big file (a part or more), what to compute while its bytes arrive so that no second read is needed.

A download of a big object is split into ranges. Its check is chosen from what S3 keeps (best first):

- a full-object CRC64NVME / CRC32 / CRC32C: the CRC of each MiB block as it arrives, combined at the end (CRCs
  combine from parts: awscrt's combine_crc*); the ranges can be any multiple of a MiB;
- a COMPOSITE CRC (`value-N`, boto3's and aws-cli's multipart uploads): the same block CRCs, combined per part for
  every part size that gives N parts (`part_sizes`: every size uploaders use is a whole number of MiB);
- an MD5 ETag of one part: MD5 over the ranges in order (MD5 is sequential: ranges that arrive early wait in a
  small reorder buffer);
- a multipart MD5 ETag (`md5(concat(part md5s))-N`): one MD5 per part of the likeliest part size, each range a
  whole number of those parts; if that size was not the uploader's, the file is checked after it lands with every
  candidate.

Anything else (SHA checksums, a KMS ETag without checksum) is checked after the file lands, as small files are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.transfer import MIB, Checksum, etag_part_sizes, is_md5_etag, normalize_etag, part_sizes

BLOCK = MIB  # CRCs are taken per block of this size; every range and candidate part size is a multiple of it
COMBINABLE = ("CRC64NVME", "CRC32", "CRC32C")  # CRCs awscrt computes and combines at GB/s

# Names of the checks in TransferReport.checks. A download's check runs as the bytes arrive ("-in-flight") or on
# the landed file ("-after", a second read); an upload's by S3 itself ("-by-s3": it refuses bytes that do not
# match the checksum we computed while reading them) or by the ETag computed while uploading, compared with the
# listing ("md5-etag").
IN_FLIGHT = "-in-flight"
AFTER = "-after"
BY_S3 = "crc64nvme-by-s3"
UPLOAD_ETAG = "md5-etag"

Kind = Literal["crc", "composite", "md5", "multipart-md5"]


def summary(checks: dict[str, int]) -> str:
    """`crc64nvme-in-flight 1, md5-etag-after 9999`: a report's checks, most used first."""
    return ", ".join(f"{name} {n}" for name, n in sorted(checks.items(), key=lambda item: (-item[1], item[0])))


def checksum_name(checksum: Checksum) -> str:
    """`crc64nvme`, `composite-crc32`, ...: what a check by this S3 checksum is called in the report."""
    base = checksum.algorithm.lower()
    return f"composite-{base}" if checksum.parts else base


def etag_name(etag: str) -> str:
    return "multipart-etag" if "-" in normalize_etag(etag) else "md5-etag"


@dataclass(frozen=True)
class InflightCheck:
    """What a download computes as a big object's bytes arrive, and what it must equal."""

    kind: Kind
    algorithm: str  # CRC64NVME, CRC32, CRC32C, or MD5
    expected: str  # as S3 gives it: base64 CRC (`-N` when composite), or the ETag's hex
    parts: tuple[int, ...] = ()  # composite: every candidate part size; multipart-md5: the one tried

    @property
    def name(self) -> str:
        if self.kind in ("crc", "composite"):
            return checksum_name(Checksum(self.algorithm, self.expected)) + IN_FLIGHT
        return etag_name(self.expected) + IN_FLIGHT

    def range_size(self, default: int) -> int:
        """The size of each ranged GET: `default`, or for a multipart MD5 ETag a whole number of parts near it (one
        MD5 per part)."""
        if self.kind != "multipart-md5":
            return default
        return self.parts[0] * max(1, default // self.parts[0])


def inflight_check(size: int, etag: str, checksum: Checksum | None, part_size: int) -> InflightCheck | None:
    """The check a big object's download runs in flight: by its combinable CRC (full-object or COMPOSITE) if it has
    one, else by its MD5 ETag; None when neither can be checked in flight (then the landed file is checked)."""
    if checksum is not None and checksum.algorithm in COMBINABLE:
        if not checksum.parts:
            return InflightCheck("crc", checksum.algorithm, checksum.value)
        candidates = tuple(p for p in part_sizes(size, checksum.parts, part_size) if p % BLOCK == 0)
        if candidates:
            return InflightCheck("composite", checksum.algorithm, checksum.value, candidates)
    etag = normalize_etag(etag)
    if not is_md5_etag(etag):
        return None
    if "-" not in etag:
        return InflightCheck("md5", "MD5", etag)
    candidates = tuple(p for p in etag_part_sizes(size, etag, part_size) if p % BLOCK == 0)
    return InflightCheck("multipart-md5", "MD5", etag, candidates[:1]) if candidates else None


def split(size: int, step: int) -> list[tuple[int, int]]:
    """(offset, length) of each slice of `step` bytes; an empty object is one empty slice."""
    return [(offset, min(step, size - offset)) for offset in range(0, size, step)] or [(0, 0)]


def range_size_for(size: int, workers: int, largest: int) -> int:
    """Ranges of a whole number of MiB, at most `largest`, small enough that every worker gets about four of a
    file (so one slow range does not leave the others idle at the end)."""
    share = size // max(1, workers * 4)
    return max(BLOCK, min(largest, share - share % BLOCK))
