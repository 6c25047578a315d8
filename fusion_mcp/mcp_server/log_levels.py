"""Run events as MCP log messages, for clients of the 2025-11-25 protocol era that ask with ``logging/setLevel``.

The capability is deprecated as of 2026-07-28 (clients there opt in per request; progress notifications
carry the same text), so ``MCPServer`` has no public way to serve it. The SDK's documented way is the
low-level ``Server.add_request_handler``; reaching the low-level server from ``MCPServer`` is the one use of
a private attribute in this package, isolated in :func:`lowlevel_server`, which fails loudly at start (and
in the tests) if an SDK release moves it.
"""

from __future__ import annotations

import warnings
from typing import Any

from mcp.server.lowlevel.server import Server
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types import EmptyResult, LoggingLevel, SetLevelRequestParams

from .handle import ServiceHandle

LOG_LEVELS: tuple[LoggingLevel, ...] = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


def lowlevel_server(server: MCPServer[Any]) -> Server[Any]:
    """The low-level server behind ``server``; raises if this SDK keeps it elsewhere."""
    inner = getattr(server, "_lowlevel_server", None)
    if not isinstance(inner, Server):
        raise RuntimeError(
            "this mcp release keeps MCPServer's low-level server elsewhere: fusion-mcp cannot serve "
            "logging/setLevel (update fusion_mcp.mcp_server.log_levels for it)"
        )
    return inner


class SessionLogLevels:
    """Remembers ``logging/setLevel`` per connection; sends run events as log messages to those that asked.

    A connection is recognised by its ``initialize`` parameters object, the one thing the SDK exposes that
    lives exactly as long as the connection. Holding it keeps its ``id`` from being reused; the table is
    bounded so long-running HTTP servers do not accumulate closed connections.
    """

    MAX_CONNECTIONS = 1024

    def __init__(self) -> None:
        self._levels: dict[int, tuple[object, str]] = {}

    def install(self, server: MCPServer[Any]) -> None:
        """Serve ``logging/setLevel`` (and so advertise the ``logging`` capability) on ``server``."""
        lowlevel_server(server).add_request_handler("logging/setLevel", SetLevelRequestParams, self._set_level)

    async def _set_level(self, ctx: Any, params: SetLevelRequestParams) -> EmptyResult:
        key = ctx.session.client_params
        self._levels.pop(id(key), None)
        self._levels[id(key)] = (key, params.level)
        while len(self._levels) > self.MAX_CONNECTIONS:
            self._levels.pop(next(iter(self._levels)))
        return EmptyResult()

    def wants(self, ctx: Context[ServiceHandle, Any], level: LoggingLevel) -> bool:
        """Whether the caller's connection asked for messages of ``level`` (``logging/setLevel`` to it or lower)."""
        return self.connection_wants(ctx.request_context.session.client_params, level)

    def connection_wants(self, connection: object, level: LoggingLevel) -> bool:
        """:meth:`wants` for a connection already looked up (its ``client_params``): a run's events ask per event,
        and the context's lookup costs more than the answer."""
        entry = self._levels.get(id(connection))
        return entry is not None and LOG_LEVELS.index(level) >= LOG_LEVELS.index(entry[1])

    async def send(self, ctx: Context[ServiceHandle, Any], level: LoggingLevel, message: str) -> None:
        """Send ``message`` to the caller's connection if it asked for ``level`` or lower."""
        if not self.wants(ctx, level):
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)  # a deliberate use of the older protocol
            await ctx.request_context.session.send_log_message(
                level=level, data=message, logger="fusion", related_request_id=ctx.request_id
            )
