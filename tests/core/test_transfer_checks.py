"""Which check a big download runs in flight (core/transfer_checks.py), and how the report names the checks."""

from __future__ import annotations

from core.transfer import MIB, Checksum
from core.transfer_checks import BLOCK, inflight_check, range_size_for, split, summary

MD5 = "0123456789abcdef0123456789abcdef"


def test_a_combinable_crc_comes_first_then_the_md5_etag_else_nothing() -> None:
    size = 11 * MIB + 7
    full = inflight_check(size, MD5, Checksum("CRC64NVME", "AAAAAAAAAAA="), 5 * MIB)
    assert full is not None and (full.kind, full.name) == ("crc", "crc64nvme-in-flight")
    composite = inflight_check(size, f"{MD5}-3", Checksum("CRC32", "AAAAAA==-3"), 5 * MIB)
    assert composite is not None and (composite.name, composite.parts[0]) == ("composite-crc32-in-flight", 5 * MIB)
    assert all(p % BLOCK == 0 and -(-size // p) == 3 for p in composite.parts)
    # A SHA checksum does not combine from ranges: the MD5 ETag serves; a multipart one per part of 5 MiB, each
    # range a whole number of parts (three in 16 MiB; one when the ranges are smaller than a part).
    sha = inflight_check(size, f"{MD5}-3", Checksum("SHA256", "x"), 5 * MIB)
    assert sha is not None and (sha.name, sha.parts, sha.range_size(16 * MIB), sha.range_size(BLOCK)) == (
        "multipart-etag-in-flight",
        (5 * MIB,),
        15 * MIB,
        5 * MIB,
    )
    single = inflight_check(size, MD5, None, 5 * MIB)
    assert single is not None and (single.name, single.range_size(16 * MIB)) == ("md5-etag-in-flight", 16 * MIB)
    assert inflight_check(size, "kms-etag-not-an-md5", None, 5 * MIB) is None  # checked after landing


def test_ranges_cover_the_object_in_whole_mib_and_the_summary_lists_most_used_first() -> None:
    assert split(10 * MIB + 3, 4 * MIB) == [(0, 4 * MIB), (4 * MIB, 4 * MIB), (8 * MIB, 2 * MIB + 3)]
    assert split(0, MIB) == [(0, 0)]
    assert range_size_for(1024 * MIB, 8, 50 * MIB) == 32 * MIB
    assert range_size_for(3 * MIB, 8, 50 * MIB) == BLOCK
    assert summary({"md5-etag-after": 9999, "crc64nvme-in-flight": 1}) == "md5-etag-after 9999, crc64nvme-in-flight 1"
