"""What the Prefect UI shows of each flow: its parameter form (every field described, no test hook), its artifact
keys (Prefect's key rule, the job's name in them) and its task-run names. Plain functions: no flow run."""

from __future__ import annotations

from typing import Any

import pytest
from prefect import Flow
from prefect.utilities.callables import parameter_schema

from flows.cost_watch import cost_watch
from flows.launch_attempt import launch_attempt
from flows.prewarm import prewarm
from flows.reporting import artifact_key
from flows.spot_watch import spot_watch
from flows.teardown import TeardownApproval, TeardownRequest, safe_teardown
from flows.train_launch import train_launch
from flows.transfer import transfer

FLOWS: list[Flow[Any, Any]] = [prewarm, train_launch, launch_attempt, transfer, safe_teardown, spot_watch, cost_watch]
# Fields that once existed only for tests; tests now reach time and kill points through the flows' own seams.
TEST_HOOKS = {"now", "stop_after_step", "clock", "fault", "kill_after"}


def _schema(flow: Flow[Any, Any]) -> dict[str, Any]:
    return parameter_schema(flow.fn).model_dump_for_openapi()


def _undescribed(schema: dict[str, Any]) -> list[str]:
    """Every property, of the flow's parameters and of every model they reference (definitions), without a
    description; nested objects inline in a property are walked too."""
    missing: list[str] = []

    def walk(where: str, node: dict[str, Any]) -> None:
        for name, prop in node.get("properties", {}).items():
            if not str(prop.get("description") or "").strip():
                missing.append(f"{where}.{name}")
            walk(f"{where}.{name}", prop)

    walk("parameters", schema)
    for name, definition in schema.get("definitions", {}).items():
        walk(name, definition)
    return missing


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_every_parameter_and_nested_field_has_a_description_and_no_test_hook(flow: Flow[Any, Any]) -> None:
    schema = _schema(flow)
    assert schema["properties"], "the flow takes no parameters?"
    assert _undescribed(schema) == []
    fields = {name for d in [schema, *schema.get("definitions", {}).values()] for name in d.get("properties", {})}
    assert not fields & TEST_HOOKS


def test_the_walk_finds_an_undescribed_nested_field() -> None:
    # The check itself: a definition's property without a description is reported by its model and name.
    schema = {
        "properties": {"request": {"description": "x", "allOf": [{"$ref": "#/definitions/R"}]}},
        "definitions": {"R": {"properties": {"a": {"description": "a"}, "b": {"title": "B"}}}},
    }
    assert _undescribed(schema) == ["R.b"]


def test_the_rehearsal_time_is_for_dry_runs_only() -> None:
    from datetime import UTC, datetime

    from core.errors import InvalidInputError

    assert TeardownRequest(job="llm", as_of=datetime.now(UTC)).dry_run  # a rehearsal: plans, acts on nothing
    with pytest.raises(InvalidInputError, match="as_of"):
        TeardownRequest(job="llm", as_of=datetime.now(UTC), dry_run=False)


def test_the_approval_form_describes_its_fields() -> None:
    form = TeardownApproval.with_initial_data(description="the plan")
    props = form.model_json_schema()["properties"]
    assert set(props) == {"approve", "note"}
    assert all(p.get("description") for p in props.values())
    assert props["approve"]["default"] is False


def test_artifact_keys_name_the_scope_and_follow_prefects_rule() -> None:
    assert artifact_key("teardown-plan", "LLM_run.7") == "teardown-plan-llm-run-7"
    assert artifact_key("teardown-plan", "café--x--") == "teardown-plan-caf-x"
    assert artifact_key("teardown", TeardownRequest(ids=["i-0abc", "vol-0def"]).scope_key) == "teardown-i-0abc-vol-0def"
    assert artifact_key("x", "y" * 200) == "x-" + "y" * 98
    assert TeardownRequest(sweep=True).scope_key == "sweep"


def _aws_tasks() -> list[Any]:
    import importlib
    import pkgutil

    import tasks
    from tasks.aws import AwsTask

    found = []
    for info in pkgutil.iter_modules(tasks.__path__):
        module = importlib.import_module(f"tasks.{info.name}")
        made_here = [v for v in vars(module).values() if isinstance(v, AwsTask) and v.fn.__module__ == module.__name__]
        found += [v.task for v in made_here]  # the prefect.Task each builds on first use, as a flow run sees it
    return found


def test_task_run_names_name_what_they_touch_from_the_tasks_own_parameters() -> None:
    import inspect
    from string import Formatter

    named = {t.name: t for t in _aws_tasks() if isinstance(t.task_run_name, str)}
    assert {"attach-volume", "terminate-instance", "put-json", "run-command", "delete-volume"} <= set(named)
    for name, task in named.items():
        fields = {f.split(".")[0] for _, f, _, _ in Formatter().parse(task.task_run_name) if f}
        assert fields and fields <= set(inspect.signature(task.fn).parameters), name
    # What Prefect does with them (prefect._internal.engine.resolve_custom_task_run_name): str.format(**params).
    assert named["attach-volume"].task_run_name.format(volume_id="vol-1", instance_id="i-2") == "attach vol-1 → i-2"
    assert named["run-command"].task_run_name.format(what="script", instance_id="i-2") == "run-script i-2"


def test_ec2_and_ssm_tasks_carry_their_concurrency_tags() -> None:
    ssm = {"run-command", "wait-ssm-online", "detect-training", "stop-instance-jobs", "poll-agent", "sample-gpus"}
    ec2 = {"attach-volume", "detach-volume", "terminate-instance", "launch-instance", "create-volume", "inventory"}
    tags = {t.name: set(t.tags) for t in _aws_tasks()}
    assert all("aws-ssm" in tags[n] for n in ssm), {n: tags[n] for n in ssm}
    assert all("aws-ec2" in tags[n] for n in ec2), {n: tags[n] for n in ec2}
