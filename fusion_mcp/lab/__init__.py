"""The web lab at ``/lab``: ask a panel, watch every member answer live, read the analysis beside the answers,
browse and compare the history, see the spend. A front end on the HTTP server beside the OpenAI-compatible
routes, going through the one request path (:class:`~fusion_mcp.engine.service.FusionService`); it imports no
MCP module. See ``docs/lab.md``."""

from .app import LabApp, lab_path
from .auth import SignIns

__all__ = ["LabApp", "SignIns", "lab_path"]
