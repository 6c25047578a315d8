"""fusion-mcp: a panel of models and an analyst behind one MCP tool, ``openrouter_fusion``.

The package's public surface is the contract (``FusionArgs``, ``FusionRequest``, ``FusionResult``), the
settings, and :func:`run_fusion` for running one without MCP.
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
