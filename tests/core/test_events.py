"""core/events.py: the job as the resource, what it holds as related resources."""

from __future__ import annotations

from core import events as ev


def test_related_names_each_ec2_id_by_its_kind_once_and_the_bucket() -> None:
    got = ev.related(["i-0abc", None, "vol-1", "i-0abc", "snap-2", "ami-3", ""], bucket="data")
    assert got == [
        {"prefect.resource.id": "aws.ec2.instance.i-0abc", "prefect.resource.role": "instance"},
        {"prefect.resource.id": "aws.ec2.volume.vol-1", "prefect.resource.role": "volume"},
        {"prefect.resource.id": "aws.ec2.snapshot.snap-2", "prefect.resource.role": "snapshot"},
        {"prefect.resource.id": "aws.s3.bucket.data", "prefect.resource.role": "bucket"},
    ]


def test_related_names_at_most_max_related_resources() -> None:
    many = [f"vol-{n}" for n in range(ev.MAX_RELATED + 5)]
    assert [r["prefect.resource.id"] for r in ev.related(many)] == [
        f"aws.ec2.volume.{v}" for v in many[: ev.MAX_RELATED]
    ]


def test_job_resource_and_event_names() -> None:
    assert ev.job_resource("bert") == {"prefect.resource.id": "trainctl.job.bert", "prefect.resource.name": "bert"}
    # The two names automations match: never renamed.
    assert (ev.COST_THRESHOLD, ev.JOB_GAVE_UP) == ("trainctl.cost.threshold", "trainctl.job.gave-up")
    assert all(name.startswith("trainctl.job.") for name in ev.JOB_EVENTS) and len(set(ev.ALL_EVENTS)) == 10
