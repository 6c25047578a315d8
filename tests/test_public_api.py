"""The public API (``fusion_mcp.__all__``): a fusion run from Python with the promised names alone."""

from __future__ import annotations

import pytest

import fusion_mcp
from tests.conftest import ANALYST, PANEL, run_python, sim_env
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


def test_each_promised_name_loads_on_first_use() -> None:
    """``import fusion_mcp`` loads no subpackage's modules (a process using one does not pay for the others);
    each promised name is there when asked for, and an unknown one is an AttributeError."""
    code = (
        "import sys, fusion_mcp\n"
        "print(sorted(m for m in sys.modules if m.startswith('fusion_mcp.') and not m.startswith('fusion_mcp.core')))\n"
        "print(all(getattr(fusion_mcp, name) is not None for name in fusion_mcp.__all__))\n"
        "print('fusion_mcp.engine.pipeline' in sys.modules)\n"
    )
    out = run_python(code)
    assert out.stdout.split("\n")[:3] == ["[]", "True", "True"], out.stderr
    with pytest.raises(AttributeError, match="module 'fusion_mcp' has no attribute 'Panel'"):
        _ = fusion_mcp.Panel  # type: ignore[attr-defined]


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
