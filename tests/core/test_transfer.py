"""The pure part of transfers: locations, filters, the resume decision, path escapes, ETag arithmetic."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.transfer_helper import multipart_etag
from core.errors import InvalidInputError
from core.transfer import (
    MIB,
    Filters,
    Kind,
    PathEscapeError,
    TransferError,
    TransferRequest,
    check_free_space,
    equal_size,
    etag_part_sizes,
    etag_parts,
    expectation,
    parse_location,
    plan_sync,
    safe_relative,
)

# -- locations


def test_locations_of_every_kind() -> None:
    s3 = parse_location("s3://my-bucket/data/set/")
    assert s3.kind is Kind.S3 and s3.s3 is not None and s3.s3.prefix == "data/set/"
    inst = parse_location("i-0123456789abcdef0:/mnt/data/")
    assert (inst.kind, inst.instance_id, inst.path) == (Kind.INSTANCE, "i-0123456789abcdef0", "/mnt/data")
    short = parse_location("i-01234567:/x")
    assert short.instance_id == "i-01234567"
    job = parse_location("job:resnet-1:/ckpt//a/./b")
    assert (job.kind, job.job, job.path, job.instance_id) == (Kind.INSTANCE, "resnet-1", "/ckpt/a/b", None)
    for local in ("./data", "/abs/path", "relative", "weird:name", "C"):
        assert parse_location(local).kind is Kind.LOCAL


@pytest.mark.parametrize(
    "bad",
    ["", "s3://UPPER/x", "s3://b/../x", "i-0123456789abcdef0:relative", "job:Bad_Name:/x", "job:x:/a/../b", "i-xyz:/a"],
)
def test_bad_locations_are_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(InvalidInputError, match="location"):
        parse_location(bad)


def test_request_refuses_same_kind_and_needs_staging_for_local_instance_legs() -> None:
    with pytest.raises(TransferError, match="both are s3"):
        TransferRequest(src="s3://aaa/x", dst="s3://bbb/y")
    with pytest.raises(TransferError, match="both are local"):
        TransferRequest(src="/a", dst="/b")
    req = TransferRequest(src="/a", dst="i-0123456789abcdef0:/data", transfer_id="t1")
    with pytest.raises(TransferError, match="--staging"):
        req.staging_prefix(None, None)
    assert str(req.staging_prefix(None, "side")) == "s3://side/trainctl/staging/transfer-t1"
    job = TransferRequest(src="/a", dst="job:demo:/data", staging="s3://bkt", transfer_id="t1")
    assert str(job.staging_prefix("demo", None)) == "s3://bkt/trainctl/jobs/demo/staging/transfer-t1"
    given_prefix = TransferRequest(src="/a", dst="job:demo:/d", staging="s3://bkt/tmp/", transfer_id="t1")
    assert str(given_prefix.staging_prefix("demo", None)) == "s3://bkt/tmp/transfer-t1"
    assert req.direction == "local->instance"


# -- filters


def test_filters_include_then_exclude_on_paths_and_base_names() -> None:
    files = {"train/a.jpg": 1, "train/b.tmp": 1, "val/c.jpg": 1, "README": 1}
    assert Filters(include=("train/*",)).apply(files) == {"train/a.jpg": 1, "train/b.tmp": 1}
    assert Filters(exclude=("*.tmp",)).apply(files).keys() == {"train/a.jpg", "val/c.jpg", "README"}
    assert Filters(include=("*.jpg",), exclude=("val/*",)).apply(files) == {"train/a.jpg": 1}
    assert Filters().apply(files) == files


# -- the resume decision

sizes = st.dictionaries(st.text("abc/", min_size=1, max_size=4), st.integers(0, 3), max_size=12)


@given(src=sizes, dst=sizes, same_fraction=st.floats(0, 1), delete=st.booleans())
def test_plan_partitions_the_source_and_deletes_only_when_asked(
    src: dict[str, int], dst: dict[str, int], same_fraction: float, delete: bool
) -> None:
    candidates = equal_size(src, dst)
    same = candidates[: int(len(candidates) * same_fraction)]
    plan = plan_sync(src, dst, same, delete=delete)
    assert sorted(plan.copy + plan.skip) == sorted(src)
    assert set(plan.skip) == set(same)
    assert plan.copy_bytes == sum(src[r] for r in plan.copy)
    # Missing or differently sized files are always copied; a "same" claim never skips a different size.
    assert all(r in plan.copy for r in src if r not in dst or dst[r] != src[r])
    assert plan.delete == (sorted(set(dst) - set(src)) if delete else [])


def test_resume_moves_only_what_is_missing_or_changed() -> None:
    src = {"a": 10, "b": 20, "c": 30, "d": 40}
    dst = {"a": 10, "b": 20, "c": 31, "old": 5}  # d missing, c resized, b same size but other bytes
    plan = plan_sync(src, dst, same=["a"], delete=False)
    assert (plan.copy, plan.skip, plan.delete) == (["b", "c", "d"], ["a"], [])
    assert plan_sync(src, dst, same=["a"], delete=True).delete == ["old"]


# -- path escapes


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a/.", "", "x\x00y"])
def test_escaping_names_are_refused(rel: str) -> None:
    with pytest.raises(PathEscapeError):
        safe_relative(rel)


# Any printable name without separators (control characters and backslashes: tests/core/test_paths.py).
_NAME = st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/\\")


@given(st.lists(st.text(_NAME, min_size=1, max_size=5), min_size=1, max_size=4))
def test_safe_names_stay_inside(parts: list[str]) -> None:
    rel = "/".join(parts)
    import posixpath

    if any(p in {".", ".."} for p in parts) or parts[0].startswith(".trainctl-partial-"):
        with pytest.raises(PathEscapeError):
            safe_relative(rel)
    else:
        assert posixpath.normpath(posixpath.join("/dest", safe_relative(rel))).startswith("/dest/")


def test_free_space_is_checked_before_starting() -> None:
    check_free_space(100 * MIB, 200 * MIB, "/data")
    check_free_space(0, 0, "/data")
    with pytest.raises(TransferError, match="not enough space at /data"):
        check_free_space(100 * MIB, 101 * MIB, "/data")


# -- ETags


def test_multipart_etag_matches_s3s_rule_and_part_sizes_are_inferred() -> None:
    data = b"x" * (20 * MIB + 3)
    part = 8 * MIB
    digests = [hashlib.md5(data[i : i + part], usedforsecurity=False).digest() for i in range(0, len(data), part)]
    etag = multipart_etag(digests)
    assert etag.endswith("-3") and etag_parts(etag) == 3 and etag_parts('"' + etag + '"') == 3
    assert etag_part_sizes(len(data), etag)[0] == 8 * MIB
    assert 50 * MIB in etag_part_sizes(1024 * MIB, "0" * 32 + "-21")
    assert etag_part_sizes(10, "0" * 32) == []
    assert expectation(5, md5="abc") == {"size": 5, "md5": "abc"}
    parts = expectation(len(data), etag=f'"{etag}"')["parts"]
    assert isinstance(parts, list) and parts[0] == 8 * MIB
