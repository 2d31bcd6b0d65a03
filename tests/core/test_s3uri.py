import pytest

from core.errors import InvalidInputError
from core.s3uri import S3Uri, parse_s3_uri


def test_parses_bucket_and_prefix() -> None:
    uri = parse_s3_uri("s3://my-data.bucket/datasets/imagenet")
    assert uri == S3Uri("my-data.bucket", "datasets/imagenet")
    assert uri.prefix == "datasets/imagenet/"
    assert str(uri.join("train", "x.bin")) == "s3://my-data.bucket/datasets/imagenet/train/x.bin"
    assert parse_s3_uri("s3://bucket").prefix == ""


@pytest.mark.parametrize(
    "value",
    [
        "bucket/key",
        "s3:/bucket",
        "s3://",
        "s3://UPPER/key",
        "s3://ab",
        "s3://-bucket/x",
        "s3://1.2.3.4/x",
        "s3://b..c/x",
        "s3://bucket/../etc",
        "https://bucket.s3.amazonaws.com/x",
    ],
)
def test_malformed_uris_are_refused(value: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        parse_s3_uri(value, field="source")
    assert err.value.field == "source"
