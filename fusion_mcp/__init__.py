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

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .core.about import VERSION

if TYPE_CHECKING:
    from .config import ConfigError, Settings, load_settings
    from .core.models import Analysis, FusionArgs, FusionRequest, FusionResult
    from .core.progress import ProgressEvent
    from .engine.pipeline import run_fusion
    from .providers.client import Provider, new_http_client

__version__ = VERSION

_PUBLIC = {
    "Analysis": ".core.models",
    "ConfigError": ".config",
    "FusionArgs": ".core.models",
    "FusionRequest": ".core.models",
    "FusionResult": ".core.models",
    "ProgressEvent": ".core.progress",
    "Provider": ".providers.client",
    "Settings": ".config",
    "load_settings": ".config",
    "new_http_client": ".providers.client",
    "run_fusion": ".engine.pipeline",
}
"""Where each public name lives. They are loaded on first use: a process that imports one subpackage (the
stdio server imports ``cli``) does not pay for the others (the run machinery is loaded by the first call)."""

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


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'fusion_mcp' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
