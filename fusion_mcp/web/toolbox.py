"""Our web tools opened for a process, loading them only when ``FUSION_WEB_TOOLS`` resolves to ``local``.

The fetcher (httpcore2's connection machinery, h11), the extractor (lxml, trafilatura) and the search
backends are imported here, on first use, not when a server starts with web tools off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from ..config import Settings
from .network import SYSTEM_NETWORK, Network

if TYPE_CHECKING:
    from .tools import WebTools


@asynccontextmanager
async def open_web_tools(settings: Settings, network: Network = SYSTEM_NETWORK) -> AsyncIterator[WebTools | None]:
    """:func:`fusion_mcp.web.tools.open_web_tools`, imported only when the web tools are ours (else None)."""
    if settings.web_mode != "local":
        yield None
        return
    from .tools import open_web_tools as open_local

    async with open_local(settings, network) as web:
        yield web
