import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core import tags as t
from core.ebs import VolumeSpec
from core.errors import InvalidInputError, UsageError
from core.models import Volume, VolumeAttachment
from core.paths import PathEscapeError
from core.prewarm import (
    PrewarmSpec,
    ReuseChoice,
    VerifyResult,
    check_fits,
    check_keys,
    choose_reuse,
    compare,
    dataset_digest,
    listing_digest,
    reusable,
    verify_script,
)
from core.transfer import PARTIAL_PREFIX


def _tree(root: Path) -> dict[str, int]:
    files = {"a.txt": b"hello", "nested/deep/b.bin": b"\x00" * 1000, "nested/ünï cøde.txt": b"x", "empty": b""}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return {rel: len(data) for rel, data in files.items()}


def _run_verify(root: Path, target_dir: str) -> VerifyResult:
    script = "\n".join(verify_script("vol-0123456789abcdef0", target_dir))
    out = subprocess.run(
        ["bash", "-c", script],
        env={"TRAINCTL_ROOT": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return VerifyResult.model_validate_json(out.stdout.strip())


def test_instance_verification_agrees_with_the_s3_listing(tmp_path: Path) -> None:
    volume_root = tmp_path / "mnt/trainctl/vol-0123456789abcdef0"
    expected = _tree(volume_root)
    (volume_root / ".trainctl").mkdir()
    (volume_root / ".trainctl/prewarm-manifest.json").write_text("{}")  # not data: excluded at the root
    found = _run_verify(tmp_path, "")
    assert found.digest == listing_digest(expected)
    assert compare(expected, found) == []


def test_a_missing_or_changed_file_is_reported(tmp_path: Path) -> None:
    volume_root = tmp_path / "mnt/trainctl/vol-0123456789abcdef0/data"
    expected = _tree(volume_root)
    (volume_root / "a.txt").write_bytes(b"hellO")  # same size, other content: sizes cannot tell
    (volume_root / "empty").unlink()
    problems = compare(expected, _run_verify(tmp_path, "data"))
    assert problems == ["3 files on the volume, 4 in S3"]
    renamed = dict(expected)
    renamed["A.txt"] = renamed.pop("a.txt")
    (volume_root / "empty").write_bytes(b"")
    assert compare(renamed, _run_verify(tmp_path, "data")) == ["file names or sizes differ between the volume and S3"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"source": "bucket/data", "volume_id": "vol-0123456789abcdef0"}, "source"),
        ({"source": "s3://bucket/data"}, "volume"),
        ({"source": "s3://bucket/data", "volume_id": "vol-1"}, "volume_id"),
        ({"source": "s3://bucket/data", "volume_id": "vol-0123456789abcdef0", "target_dir": "../etc"}, "target_dir"),
        ({"source": "s3://bucket/data", "volume_id": "vol-0123456789abcdef0", "target_dir": ".trainctl"}, "target_dir"),
        (
            {"source": "s3://bucket/data", "volume_id": "vol-0123456789abcdef0", "availability_zone": "mars"},
            "availability_zone",
        ),
    ],
)
def test_bad_specs_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises((InvalidInputError, ValueError)) as err:
        PrewarmSpec(**kwargs)
    assert field in str(err.value)


def test_new_volume_spec_is_accepted() -> None:
    spec = PrewarmSpec(source="s3://bucket/data/", volume=VolumeSpec(name="imagenet", size_gib=100))
    assert spec.volume is not None and spec.volume.persistent


def test_keys_that_cannot_be_paths_on_the_volume_are_refused_naming_the_key() -> None:
    good = {"a.txt": 1, "train/x y*.jpg": 2, "-rf": 3}
    check_keys("s3://bucket/data/", good, "")
    bad = [
        ("../../../../../tmp/x/ESCAPED.txt", ""),
        ("a\\b", "sub"),
        ("ok/\x1b[2J", "sub"),
        ("a.txt/inner", ""),  # a.txt is a file too
        (f"{PARTIAL_PREFIX}x/y", "sub"),  # the copy's own partial folder
        (".trainctl/prewarm-manifest.json", ""),  # would overwrite the manifest at the volume root
        ("lost+found/x", ""),
    ]
    for key, target_dir in bad:
        with pytest.raises(PathEscapeError) as err:
            check_keys("s3://bucket/data", {**good, key: 1}, target_dir)
        assert repr("s3://bucket/data/" + key) in str(err.value)
    check_keys("s3://bucket/data", {**good, ".trainctl/x": 1}, "sub")  # inside a folder of the volume: data


def _volume(volume_id: str, zone: str, digest: str, attached_to: str | None = None) -> Volume:
    attachments = (
        [VolumeAttachment(instance_id=attached_to, device="/dev/sdf", state="attached")] if attached_to else []
    )
    return Volume(
        id=volume_id,
        tags={t.MANAGED: "true", t.DATASET: "s3://b/d/", t.DATASET_DIGEST: digest, t.PREWARM: t.PREWARM_DONE},
        state="in-use" if attached_to else "available",
        availability_zone=zone,
        size_gib=10,
        volume_type="gp3",
        attachments=attachments,
        created_at=datetime(2025, 1, 1, tzinfo=UTC),
    )


def test_reuse_prefers_a_free_volume_in_the_zone_then_one_elsewhere_never_an_attached_one() -> None:
    here_old, here_new = _volume("vol-1", "us-east-1a", "old"), _volume("vol-2", "us-east-1a", "now")
    away, busy = _volume("vol-3", "us-east-1b", "now"), _volume("vol-4", "us-east-1a", "now", attached_to="i-9")
    choice = choose_reuse([here_old, busy, away, here_new], "us-east-1a", "now")
    assert (choice.path, choice.volume) == ("reuse", here_new) and "unchanged" in choice.why
    choice = choose_reuse([here_old, busy, away], "us-east-1a", "now")
    assert (choice.path, choice.volume) == ("reuse", here_old) and "re-synced" in choice.why
    choice = choose_reuse([busy, away], "us-east-1a", "now")
    assert (choice.path, choice.volume, choice.zone) == ("restore", away, "us-east-1a")
    choice = choose_reuse([busy], "us-east-1a", "now")
    assert (choice.path, choice.volume) == ("new", None) and "vol-4 (attached to i-9)" in choice.why
    assert choose_reuse([], "us-east-1a", "now").path == "new"
    assert choose_reuse([away], None, "now").path == "reuse"  # no AZ asked for: any free volume serves


def test_a_dataset_that_no_longer_fits_its_volume_is_refused_naming_the_numbers() -> None:
    # 10 GB + 15% = 11.5e9 bytes = 10.7 GiB: 11 GiB needed; the volumes below hold 10 GiB.
    spec = PrewarmSpec(source="s3://bucket/d/", volume=VolumeSpec(name="v", size_gib=11))
    grown, volume = 10 * 10**9, _volume("vol-1", "us-east-1a", "old")
    with pytest.raises(UsageError) as refused:  # a re-sync of a dataset that grew past its volume
        check_fits(spec, grown, None, ReuseChoice("reuse", "changed", volume))
    message = str(refused.value)
    held = "vol-1 (10 GiB, us-east-1a) holds an older version of s3://bucket/d/"
    assert f"{held} (10.0 GB; with 15% headroom 11 GiB)" in message
    assert "--no-reuse --size 11" in message and "modify-volume" in message
    check_fits(spec, int(10 * 2**30 / 1.15), None, ReuseChoice("reuse", "changed", volume))  # fits just
    with pytest.raises(InvalidInputError) as refused:  # the volume asked for
        check_fits(
            spec.model_copy(update={"volume": VolumeSpec(name="v", size_gib=10)}), grown, None, ReuseChoice("new", "")
        )
    assert refused.value.field == "volume.size_gib" and "--size 11" in str(refused.value)
    check_fits(spec, grown, None, ReuseChoice("new", ""))
    # A restored copy is at least its snapshot's size: the source volume's 10 GiB do not save a 5 GiB ask.
    small = spec.model_copy(update={"volume": VolumeSpec(name="v", size_gib=5)})
    with pytest.raises(InvalidInputError, match=r"volume\.size_gib"):
        check_fits(small, grown, None, ReuseChoice("restore", "", volume, "us-east-1b"))
    big_source = volume.model_copy(update={"size_gib": 20})
    check_fits(small, grown, None, ReuseChoice("restore", "", big_source, "us-east-1b"))
    with pytest.raises(InvalidInputError) as refused:  # the volume given
        given = PrewarmSpec(source="s3://bucket/d/", volume_id="vol-0123456789abcdef0")
        check_fits(given, grown, volume, ReuseChoice("new", ""))
    assert refused.value.field == "volume_id" and "vol-1 has 10 GiB" in str(refused.value)


def test_reuse_is_looked_for_only_for_a_new_volume_filled_at_its_root() -> None:
    new = PrewarmSpec(source="s3://bucket/data/", volume=VolumeSpec(name="v", size_gib=10))
    assert reusable(new) is None
    assert "reuse=False" in (reusable(new.model_copy(update={"reuse": False})) or "")
    assert "target_dir" in (reusable(new.model_copy(update={"target_dir": "x"})) or "")
    given = PrewarmSpec(source="s3://bucket/data/", volume_id="vol-0123456789abcdef0")
    assert "vol-0123456789abcdef0" in (reusable(given) or "")


def test_dataset_digest_covers_keys_sizes_and_etags_and_long_uris_become_digests() -> None:
    base = dataset_digest({"a": 1, "b": 2}, {"a": "e1", "b": "e2"})
    assert base == dataset_digest({"b": 2, "a": 1}, {"b": "e2", "a": "e1"})  # order does not matter
    assert base != dataset_digest({"a": 1, "b": 2}, {"a": "e1", "b": "changed"})
    assert base != dataset_digest({"a": 1, "b": 3}, {"a": "e1", "b": "e2"})
    assert base != dataset_digest({"a": 1}, {"a": "e1"})
    uri = "s3://bucket/" + "p/" * 200
    assert t.dataset_tag_value("s3://bucket/d/") == "s3://bucket/d/"
    value = t.dataset_tag_value(uri)
    assert value.startswith("sha256:") and len(value) <= t.TAG_VALUE_MAX and value == t.dataset_tag_value(uri)
