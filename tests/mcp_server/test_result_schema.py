"""The output schema both tools publish, read from a file at start: it must be the one the SDK would derive."""

from __future__ import annotations

import json
import os
from typing import Annotated

import pytest
from mcp import Client
from mcp.server.mcpserver.utilities.func_metadata import func_metadata
from mcp_types import CallToolResult, TextContent
from pydantic import ValidationError

from fusion_mcp.config import load_settings
from fusion_mcp.core.models import FusionResult
from fusion_mcp.mcp_server.log_levels import SessionLogLevels
from fusion_mcp.mcp_server.server import RESULT_SCHEMA, RESULT_TOOL_NAME, _tools, create_server
from tests.conftest import sim_env
from tests.fakes.provider_sim import ProviderSim
from tests.helpers import TOOL

pytestmark = pytest.mark.anyio
LONG = {"FUSION_DEADLINE_S": "30", "FUSION_RUN_DEADLINE_S": "600"}
REWRITE = "FUSION_TEST_WRITE_RESULT_SCHEMA"


def derived() -> object:
    """What the SDK publishes for a tool annotated ``-> Annotated[CallToolResult, FusionResult]``."""

    def tool() -> Annotated[CallToolResult, FusionResult]:
        raise AssertionError("never called")

    return func_metadata(tool).output_schema


def test_the_shipped_schema_is_the_sdks_own_derivation_of_the_result_model() -> None:
    schema = derived()
    if os.environ.get(REWRITE) == "1":
        RESULT_SCHEMA.write_text(json.dumps(schema, indent=1) + "\n")
    assert json.loads(RESULT_SCHEMA.read_text()) == schema, (
        f"{RESULT_SCHEMA.name} is stale: FusionResult (or pydantic's schema writer) changed; "
        f"rewrite it with {REWRITE}=1 python -m pytest {__file__}"
    )


async def test_both_tools_publish_it(sim: ProviderSim) -> None:
    async with Client(create_server(load_settings(environ=sim_env(sim, **LONG)))) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == {TOOL, RESULT_TOOL_NAME}
    assert tools[TOOL].output_schema == tools[RESULT_TOOL_NAME].output_schema == derived()


def test_structured_content_is_still_validated_against_the_result_model(sim: ProviderSim) -> None:
    settings = load_settings(environ=sim_env(sim, **LONG))
    for tool in _tools(settings, SessionLogLevels()):
        good = CallToolResult(content=[], structured_content=FusionResult(status="running", run_id="r").to_json())
        assert tool.fn_metadata.convert_result(good) is good
        bad = CallToolResult(content=[TextContent(type="text", text="x")], structured_content={"status": "lost?"})
        with pytest.raises(ValidationError, match="status"):
            tool.fn_metadata.convert_result(bad)
