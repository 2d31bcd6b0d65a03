import subprocess
from pathlib import Path

import pytest

from core.ebs import VolumeSpec
from core.errors import InvalidInputError
from core.paths import PathEscapeError
from core.prewarm import PrewarmSpec, VerifyResult, check_keys, compare, listing_digest, verify_script
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
