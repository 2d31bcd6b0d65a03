"""The dependency set is the one DESIGN.md section 8 measured: current s3fs (not 0.4.2), Prefect 3."""

from __future__ import annotations

from importlib.metadata import version

import prefect
import s3fs


def _major_minor(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def test_s3fs_is_current() -> None:
    # Unpinned boto3 makes pip fall back to s3fs 0.4.2 (2020), which lacks the async filesystem we rely on.
    assert _major_minor(s3fs.__version__) >= (2024, 1), s3fs.__version__
    assert version("s3fs") == s3fs.__version__


def test_prefect_3() -> None:
    assert _major_minor(prefect.__version__)[0] == 3, prefect.__version__


def test_boto3_compatible_with_aiobotocore() -> None:
    # aiobotocore pins botocore to a range; the installed botocore must be inside it (pip would have told).
    assert version("boto3").split(".")[:2] == version("botocore").split(".")[:2]
