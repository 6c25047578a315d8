"""The MCP server's hold on the process's :class:`FusionService`: opened when first needed, not at start.

A host spawns the stdio server and lists its tools before anything else; that needs the tool's schemas, not
the run machinery. So the server's lifespan yields a :class:`ServiceHandle` at once, and the service (the
engine's modules, the store, the connection pools) opens on the first request that needs it, or
:data:`OPEN_AFTER_S` after start when no request has asked by then (so a server nobody calls still checks
its configured models, and the first call usually finds the service open). A service lent by the HTTP
app (already open) is taken at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

import anyio

from ..core.models import FusionResult

if TYPE_CHECKING:
    from ..engine.service import FusionService

log = logging.getLogger("fusion_mcp")

OPEN_AFTER_S = 1.0
"""Seconds after start a server that no request has asked anything of opens its service anyway."""

ServiceSource = Callable[[], AbstractAsyncContextManager["FusionService"]]
"""Where the server's lifespan gets the process's :class:`FusionService` from."""


class ServiceUnavailable(Exception):
    """The service could not be opened: every request that needs it gets this, naming the cause."""

    def result(self, run_id: str) -> FusionResult:
        return FusionResult.failure(run_id, "unexpected_error", str(self))


class ServiceHandle:
    """The server's lifespan context: :meth:`get` is the open service, once it is."""

    def __init__(self) -> None:
        self.service: FusionService | None = None
        """The open service, or None: not yet open, failed to open, or closed."""
        self._wanted = anyio.Event()
        self._settled = anyio.Event()
        self._failure: ServiceUnavailable | None = None

    async def get(self) -> FusionService:
        """The open service, opening it now if nothing has yet; :class:`ServiceUnavailable` if it cannot be."""
        service = self.service
        if service is not None:  # the common case answers without a turn of the event loop
            return service
        self._wanted.set()
        await self._settled.wait()
        if self.service is None:
            raise self._failure or ServiceUnavailable("the server is stopping: no new runs")
        return self.service

    @asynccontextmanager
    async def kept(self, source: ServiceSource, *, open_after_s: float) -> AsyncIterator[ServiceHandle]:
        """Hold the service for the lifespan: opened by its own task when wanted (or after ``open_after_s``),
        closed when the lifespan ends. Opening and closing happen in that one task, as the service's task
        group requires."""
        stopping = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._keep, source, open_after_s, stopping, name="fusion service")
            try:
                yield self
            finally:
                stopping.set()
                self._wanted.set()

    async def _keep(self, source: ServiceSource, open_after_s: float, stopping: anyio.Event) -> None:
        with anyio.move_on_after(open_after_s):
            await self._wanted.wait()
        opened = False
        try:
            if stopping.is_set():
                return
            async with source() as service:
                opened = True
                self.service = service
                self._settled.set()
                await stopping.wait()
        except Exception as exc:
            if opened:
                raise  # failing to close is the lifespan's error, as it was before the service was lazy
            log.error("the run service could not be opened: %s", exc, exc_info=True)
            # The caller gets the kind of failure; its text (which may quote a setting) goes to the log only.
            self._failure = ServiceUnavailable(
                f"the server could not open its run service ({type(exc).__name__}); its log says why"
            )
        finally:
            self.service = None
            self._settled.set()
