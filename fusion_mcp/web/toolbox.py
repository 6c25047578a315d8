"""Our web tools for a process, made when a run first asks for them (``FUSION_WEB_TOOLS`` resolving to ``local``).

The fetcher (httpcore2's connection machinery, h11), the extractor (lxml, trafilatura), the search backends
and the TLS context they share are loaded then, not when the server starts: a host waits for its start, and
most runs of a server whose web tools are on may never search.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Protocol

from ..config import Settings
from .network import SYSTEM_NETWORK, Network

if TYPE_CHECKING:
    from .fence import Fence
    from .tools import RunWeb, WebTools


class WebBox(Protocol):
    """What a run needs of the process's web tools: its own part of them (a :class:`~.tools.WebTools`, or
    :class:`FirstUseWebTools` standing for one)."""

    def run(self, fence: Fence | None = None) -> RunWeb: ...


class FirstUseWebTools:
    """Stands for the process's :class:`~.tools.WebTools` until a run first needs them, then makes them (once)."""

    def __init__(self, settings: Settings, network: Network) -> None:
        self._settings = settings
        self._network = network
        self.made: WebTools | None = None

    def run(self, fence: Fence | None = None) -> RunWeb:
        if self.made is None:
            from .tools import make_web_tools

            self.made = make_web_tools(self._settings, self._network)
        return self.made.run(fence)

    async def aclose(self) -> None:
        if self.made is not None:
            await self.made.aclose()


@asynccontextmanager
async def open_web_tools(
    settings: Settings, network: Network = SYSTEM_NETWORK
) -> AsyncIterator[FirstUseWebTools | None]:
    """Our web tools, made on first use, when ``FUSION_WEB_TOOLS`` resolves to ``local`` (else None); closed on
    exit if they were made."""
    if settings.web_mode != "local":
        yield None
        return
    box = FirstUseWebTools(settings, network)
    try:
        yield box
    finally:
        await box.aclose()
