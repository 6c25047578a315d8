"""fusion-mcp: a panel of models and an analyst behind one MCP tool, ``openrouter_fusion``."""

from .config import ConfigError, Settings, load_settings
from .models import Analysis, FusionRequest, FusionResult
from .pipeline import ProgressEvent, run_fusion
from .provider import Provider, new_http_client

__all__ = [
    "Analysis",
    "ConfigError",
    "FusionRequest",
    "FusionResult",
    "ProgressEvent",
    "Provider",
    "Settings",
    "load_settings",
    "new_http_client",
    "run_fusion",
]
