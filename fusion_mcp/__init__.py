"""fusion-mcp: a panel of models and an analyst behind one MCP tool, ``openrouter_fusion``.

The package's public surface, ``__all__``, is what a library user needs to run a fusion from Python: the
contract (``FusionArgs``, ``FusionRequest``, ``FusionResult``, ``Analysis``, ``ProgressEvent``), the
settings, a provider client and :func:`run_fusion`::

    settings = load_settings()
    request = FusionRequest(prompt="...", analysis_models=("a/x", "b/y"), model="c/z",
                            max_tool_calls=4, max_completion_tokens=4096)
    async with new_http_client() as http:
        result = await run_fusion(request, Provider(http, settings))

Everything else is importable but not promised. The subpackages, each a layer that imports only the
layers below it: ``cli`` > ``http`` > ``mcp_server`` | ``openai_api`` > ``engine`` > ``providers`` |
``web`` | ``store`` > ``config`` > ``core`` (see each one's docstring, and ``docs/architecture.md``).
"""

from .config import ConfigError, Settings, load_settings
from .core.about import VERSION
from .core.models import Analysis, FusionArgs, FusionRequest, FusionResult
from .core.progress import ProgressEvent
from .engine.pipeline import run_fusion
from .providers.client import Provider, new_http_client

__version__ = VERSION

__all__ = [
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
