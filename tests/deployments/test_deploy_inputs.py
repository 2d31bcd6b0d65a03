"""`trainctl deploy`'s refusals before it talks to any server: no Prefect API named, a malformed --notify."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import app
from core.errors import InvalidInputError
from deployments.definitions import DEFINITIONS, ROOT
from deployments.setup import parse_block


def test_deploy_without_a_prefect_api_refuses_saying_what_to_set() -> None:
    # No Prefect API (deploying to Prefect's temporary server would be lost at exit), even when this worker's earlier
    # tests set the shared test server's URL: else the deploy would land there, under another test's feet.
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = CliRunner().invoke(app, ["deploy"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: no Prefect server to deploy to: PREFECT_API_URL is not set.")
    assert "trainctl server up" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("value", ["slack-webhook", "/oncall", "slack-webhook/", "a/b/c"])
def test_notify_must_name_a_block_type_and_name(value: str) -> None:
    with pytest.raises(InvalidInputError, match="--notify"):
        parse_block(value)
    assert parse_block("slack-webhook/oncall") == ("slack-webhook", "oncall")


def test_every_definition_has_a_unique_name_an_entrypoint_in_the_repository_and_a_description() -> None:
    assert len({d.full_name for d in DEFINITIONS}) == len(DEFINITIONS)
    for definition in DEFINITIONS:
        module, _, function = definition.entrypoint.partition(":")
        assert f"def {function}(" in (ROOT / module).read_text()
        assert definition.description and "None" not in definition.description
