"""S3 URIs, parsed and checked before any call."""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import InvalidInputError

# Bucket naming rules (general purpose buckets): 3–63 characters, lowercase letters, digits, dots, hyphens;
# begins and ends with a letter or digit; not shaped like an IP address.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str = ""

    @property
    def prefix(self) -> str:
        """The key as a folder prefix: empty, or ending with one slash."""
        return self.key if not self.key or self.key.endswith("/") else self.key + "/"

    def join(self, *parts: str) -> S3Uri:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Uri(self.bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_uri(value: str, *, field: str = "s3_uri") -> S3Uri:
    """`s3://bucket/some/prefix` → S3Uri; anything else raises naming the field and the expected form."""
    if not isinstance(value, str) or not value.startswith("s3://"):
        raise InvalidInputError(field, value, "an S3 URI such as s3://my-bucket/datasets/imagenet/")
    bucket, _, key = value[len("s3://") :].partition("/")
    if not _BUCKET.fullmatch(bucket) or _IP.fullmatch(bucket) or ".." in bucket:
        raise InvalidInputError(
            field, value, "a valid bucket name (3–63 lowercase letters, digits, dots or hyphens) after s3://"
        )
    if any(part in {".", ".."} for part in key.split("/")):
        raise InvalidInputError(field, value, "a key without '.' or '..' path segments")
    return S3Uri(bucket, key)


def validate_bucket(value: str, *, field: str = "bucket") -> str:
    """A bucket name; `s3://name` (and `s3://name/`) is accepted as `name`. A refusal shows the value as given."""
    if not isinstance(value, str):
        raise InvalidInputError(field, value, "a bucket name such as my-bucket")
    name = value.removeprefix("s3://").removesuffix("/") if value.startswith("s3://") else value
    if "/" in name:
        raise InvalidInputError(field, value, "a bucket name (such as my-bucket), without a key or prefix")
    if not _BUCKET.fullmatch(name) or _IP.fullmatch(name) or ".." in name:
        raise InvalidInputError(field, value, "a bucket name: 3–63 lowercase letters, digits, dots or hyphens")
    return name


def validate_buckets(values: list[str]) -> list[str]:
    """Bucket names (a request's `buckets`): each as validate_bucket takes it, sorted, once each."""
    return sorted({validate_bucket(b, field="buckets") for b in values})
