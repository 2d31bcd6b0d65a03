"""The tag schema: how trainctl marks what it owns, why it exists, and what must survive (DESIGN.md section 2).

Tags are written at creation (TagSpecifications), never by a later CreateTags, so a resource is never seen
half-owned. Protection keys of both the trainctl and the legacy runctl prefix are honoured everywhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

PREFIX = "trainctl:"
LEGACY_PREFIX = "runctl:"

MANAGED = "trainctl:managed"
JOB = "trainctl:job"
ROLE = "trainctl:role"
ATTEMPT = "trainctl:attempt"
# The bucket holding the job's record: spot-watch finds the record of any training instance from its tags.
BUCKET = "trainctl:bucket"
PERSISTENT = "trainctl:persistent"
PROTECTED = "trainctl:protected"
IMPORTANT = "trainctl:important"
NAME = "Name"
# The idempotency token of the create call that made the resource: a retried create recognises its own work.
CLIENT_TOKEN = "trainctl:client-token"  # noqa: S105 (a tag key, not a secret)

# A volume a prewarm creates carries PREWARM=pending from creation; the prewarm sets it to done when the data is
# verified and the volume detached. A volume still pending after the prewarm's time is left by an unfinished one.
PREWARM = "trainctl:prewarm"
PREWARM_PENDING = "pending"
PREWARM_DONE = "done"
# A prewarmed volume's dataset (set at creation when it is filled at its root): the source's S3 URI, and the digest
# of the listing it holds (keys, sizes, ETags; core.prewarm.dataset_digest). A later prewarm of that URI finds and
# reuses the volume instead of copying again. Tag values hold at most 256 characters: a longer URI is stored as
# "sha256:<hex of the URI>" (dataset_tag_value).
DATASET = "trainctl:dataset"
DATASET_DIGEST = "trainctl:dataset-digest"
TAG_VALUE_MAX = 256

# runctl (the Rust predecessor, once itself called trainctl) marked ownership with CreatedBy.
LEGACY_CREATED_BY = "CreatedBy"
LEGACY_CREATORS = frozenset({"runctl", "trainctl"})

_TRUE_VALUES = frozenset({"true", "yes", "1"})
MANAGED_VALUES = ("true", "True", "TRUE")


class Role(StrEnum):
    """Why a managed resource exists (`trainctl:role`)."""

    TRAIN = "train"
    PREWARM = "prewarm"
    DATA = "data"
    CHECKPOINT = "checkpoint"
    STAGING = "staging"


def _flag(tags: Mapping[str, str], *keys: str) -> bool:
    return any(tags.get(key, "").strip().lower() in _TRUE_VALUES for key in keys)


def _both_prefixes(suffix: str) -> tuple[str, str]:
    return (PREFIX + suffix, LEGACY_PREFIX + suffix)


def is_managed(tags: Mapping[str, str]) -> bool:
    """Created by trainctl (or by runctl before it). Nothing else is ever modified.

    Only the values the server-side filter matches count, so the inventory and this check never disagree; an
    explicit `trainctl:managed=false` wins over the legacy CreatedBy marker.
    """
    if MANAGED in tags:
        return tags[MANAGED] in MANAGED_VALUES
    return tags.get(LEGACY_CREATED_BY, "").strip().lower() in LEGACY_CREATORS


def is_persistent(tags: Mapping[str, str]) -> bool:
    """A data volume that outlives its instance: detached, never deleted, when the instance goes."""
    return _flag(tags, *_both_prefixes("persistent"))


def is_protected(tags: Mapping[str, str]) -> bool:
    """Never deleted by cleanup; an explicit delete needs force. `important` is the older spelling."""
    return _flag(tags, *_both_prefixes("protected"), *_both_prefixes("important"))


def dataset_tag_value(uri: str) -> str:
    """The `trainctl:dataset` value of a dataset URI: the URI itself, or its sha256 when too long for a tag."""
    if len(uri) <= TAG_VALUE_MAX:
        return uri
    return "sha256:" + hashlib.sha256(uri.encode()).hexdigest()


def managed_tags(
    *,
    job: str | None = None,
    role: Role | None = None,
    attempt: int | None = None,
    bucket: str | None = None,
    name: str | None = None,
    persistent: bool = False,
    protected: bool = False,
    client_token: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The tags every resource trainctl creates carries. `extra` cannot override the schema's own keys."""
    tags: dict[str, str] = dict(extra or {})
    tags[MANAGED] = "true"
    if job is not None:
        tags[JOB] = job
    if role is not None:
        tags[ROLE] = role.value
    if attempt is not None:
        tags[ATTEMPT] = str(attempt)
    if bucket is not None:
        tags[BUCKET] = bucket
    if name is not None:
        tags[NAME] = name
    if persistent:
        tags[PERSISTENT] = "true"
    if protected:
        tags[PROTECTED] = "true"
    if client_token is not None:
        tags[CLIENT_TOKEN] = client_token
    return tags


def from_aws(tag_list: Iterable[Mapping[str, Any]] | None) -> dict[str, str]:
    """AWS `[{"Key": k, "Value": v}]` to a plain dict."""
    return {str(t["Key"]): str(t.get("Value", "")) for t in (tag_list or [])}


def to_aws(tags: Mapping[str, str]) -> list[dict[str, str]]:
    """A plain dict to the AWS `[{"Key": k, "Value": v}]` shape."""
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def tag_specifications(resource_type: str, tags: Mapping[str, str]) -> list[dict[str, Any]]:
    """TagSpecifications for a create call, so the resource is tagged from its first moment."""
    return [{"ResourceType": resource_type, "Tags": to_aws(tags)}]


def managed_filter_sets() -> list[list[dict[str, Any]]]:
    """Server-side EC2 filters that together select every managed resource.

    EC2 ANDs separate filters, so "managed OR legacy" needs one query per set; each query is paginated, so the
    number of calls depends on the pages, never on the number of resources.
    """
    return [
        [{"Name": f"tag:{MANAGED}", "Values": list(MANAGED_VALUES)}],
        [{"Name": f"tag:{LEGACY_CREATED_BY}", "Values": sorted(LEGACY_CREATORS)}],
    ]
