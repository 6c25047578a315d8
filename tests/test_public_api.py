"""The public API (``fusion_mcp.__all__``): a fusion run from Python with the promised names alone."""

from __future__ import annotations

import pytest

import fusion_mcp
from tests.conftest import ANALYST, PANEL, sim_env
from tests.fakes.provider_sim import ProviderSim

pytestmark = pytest.mark.anyio


def test_every_promised_name_is_there() -> None:
    assert sorted(fusion_mcp.__all__) == sorted(
        [
            "Analysis",
            "ConfigError",
            "FusionArgs",
            "FusionRequest",
            "FusionResult",
            "ProgressEvent",
            "Provider",
            "Settings",
            "__version__",
            "load_settings",
            "new_http_client",
            "run_fusion",
        ]
    )
    assert all(hasattr(fusion_mcp, name) for name in fusion_mcp.__all__)


async def test_a_fusion_runs_with_the_public_names_alone(sim: ProviderSim) -> None:
    settings = fusion_mcp.load_settings(environ=sim_env(sim))
    request = fusion_mcp.FusionRequest(
        prompt="Which cache fits?",
        analysis_models=PANEL,
        model=ANALYST,
        max_tool_calls=1,
        max_completion_tokens=1000,
    )
    events: list[fusion_mcp.ProgressEvent] = []

    async def on_event(event: fusion_mcp.ProgressEvent) -> None:
        events.append(event)

    async with fusion_mcp.new_http_client() as http:
        result = await fusion_mcp.run_fusion(request, fusion_mcp.Provider(http, settings), on_event=on_event)
    assert isinstance(result, fusion_mcp.FusionResult)
    assert result.status == "ok", result.error
    assert [r.model for r in result.responses] == list(PANEL)
    assert isinstance(result.analysis, fusion_mcp.Analysis) and result.analysis.consensus
    assert events and events[-1].progress == events[-1].total
