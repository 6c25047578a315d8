"""fusion-mcp: a panel of models and an analyst behind one MCP tool, ``openrouter_fusion``.

The package's public surface is the contract (``FusionArgs``, ``FusionRequest``, ``FusionResult``), the
settings, and :func:`run_fusion` for running one without MCP.
"""

from .about import VERSION
from .config import ConfigError, Settings, load_settings
from .models import Analysis, FusionArgs, FusionRequest, FusionResult
from .pipeline import run_fusion
from .progress import ProgressEvent
from .provider import Provider, new_http_client

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
