"""The HTTP server: the SDK's MCP app and the OpenAI-compatible routes behind our guard, served by uvicorn
with our limits.

:mod:`http_guard` checks each request to either front end (``/mcp``, and ``/v1/chat/completions``,
``/v1/responses``, ``/v1/models``, every other path under ``/v1`` and their ``/api/v1`` twins);
:mod:`connections` bounds how long a client may take to send one and how many connections may be open;
:mod:`sessions` bounds the MCP sessions. The SDK's own Host/Origin check stays on too for ``/mcp`` (whatever the
bind address; the SDK would leave it off on 0.0.0.0). Both front ends share the process's one
:class:`FusionService`: the app's lifespan opens it and lends it to the MCP server and to the chat routes
(:class:`FrontEnds`).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from starlette.routing import Router
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import Settings
from ..core.limits import MAX_PANEL
from ..engine.service import FusionService
from ..lab import LabApp, SignIns, lab_path
from ..mcp_server.server import create_server
from ..openai_api.routes import ChatApp, is_api_path
from ..web.network import SYSTEM_NETWORK, Network
from .connections import Connections, descriptor_budget, guarded_protocol
from .guard import MAX_BODY_BYTES, Guard
from .session_routes import SessionRoutes
from .sessions import SessionTable
from .workers import WorkerPlace, claim_port, port_sockets, relay_socket

log = logging.getLogger(__name__)
IDLE_S = 5.0
"""Seconds a kept-alive connection may idle between requests (uvicorn's default)."""
SESSION_SLACK = 16
"""The SDK's own session cap sits this far above ours, so ours (which ends idle sessions) acts first."""


def transport_security(settings: Settings) -> TransportSecuritySettings:
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=list(settings.allowed_hosts),
        allowed_origins=list(settings.allowed_origins),
    )


class FrontEnds:
    """The whole HTTP app: every path under ``/v1`` and ``/api/v1`` to :class:`ChatApp` (chat completions, responses,
    models, and an OpenAI-shaped 404 for the rest), ``/lab`` and below to the web lab, every other path to the
    SDK's app as it is.

    Its lifespan opens the process's one :class:`FusionService` and lends it to all three: to the chat routes and
    the lab directly, and to the MCP server through the SDK's own lifespan (its session manager's), entered inside.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        stateless: bool = False,
        health: Mapping[str, object] | None = None,
        routes: SessionRoutes | None = None,
        network: Network = SYSTEM_NETWORK,
        sign_ins: SignIns | None = None,
        lab: bool = True,
    ) -> None:
        self.settings = settings
        self.network = network
        self.chat = ChatApp(settings)
        self.lab = LabApp(settings, sign_ins, enabled=lab)
        self.routes = routes
        self.mcp_app = create_server(settings, service=self._lend, health=health).streamable_http_app(
            streamable_http_path="/mcp",
            stateless_http=stateless,
            max_request_body_size=MAX_BODY_BYTES,
            session_idle_timeout=settings.session_idle_s,
            max_sessions=settings.max_sessions + SESSION_SLACK,
            transport_security=transport_security(settings),
        )
        self._lifespan = Router(lifespan=self._open)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan.lifespan(scope, receive, send)
        elif scope["type"] == "http" and is_api_path(scope["path"]):
            await self.chat(scope, receive, send)
        elif scope["type"] == "http" and lab_path(scope["path"]):
            await self.lab(scope, receive, send)
        else:
            await self.mcp_app(scope, receive, send)

    @asynccontextmanager
    async def _open(self, _: object) -> AsyncIterator[None]:
        async with FusionService.open(self.settings, self.network, check_models=True) as service:
            self.chat.service = self.lab.service = service
            try:
                async with self.mcp_app.router.lifespan_context(self.mcp_app):
                    yield
            finally:
                self.chat.service = self.lab.service = None
                if self.routes is not None:
                    await self.routes.aclose()

    @asynccontextmanager
    async def _lend(self) -> AsyncIterator[FusionService]:
        if self.chat.service is None:
            raise RuntimeError("the fusion service is not open: the HTTP app's lifespan opens it first")
        yield self.chat.service


def build_app(
    settings: Settings,
    *,
    stateless: bool = False,
    connections: Connections | None = None,
    place: WorkerPlace | None = None,
    network: Network = SYSTEM_NETWORK,
    sign_ins: SignIns | None = None,
) -> ASGIApp:
    """The whole HTTP application behind its guard: ``/mcp`` (stateful SSE unless ``stateless``), the
    OpenAI-compatible routes, the web lab (``/lab``) and ``/healthz``, sharing one :class:`FusionService`.

    ``place`` says which worker of a ``--workers`` server this process is: its sessions' ids then name it,
    and requests for a sibling's sessions are relayed there (as for ``FUSION_REPLICA`` behind a proxy). The lab
    keeps its sign-ins in one process, so a server of several workers, or a replica (``FUSION_REPLICA``), answers
    ``/lab`` with a 503 saying so.
    ``network`` is how the panel's web fetches resolve and connect; ``sign_ins`` hold the lab's sessions and
    one-time tokens (a new table by default).
    """
    sessions = routes = None
    if not stateless:
        share = settings.sessions_per_principal
        sessions = SessionTable(limit=settings.max_sessions, per_principal=share, idle_s=settings.session_idle_s)
        if settings.replica is not None or place is not None:
            routes = SessionRoutes(
                replica=settings.replica,
                worker=None if place is None else place.index,
                workers=1 if place is None else place.count,
                directory=None if place is None else place.directory,
            )
    health = {"replica": settings.replica, "worker": None if place is None else place.index}
    return Guard(
        FrontEnds(
            settings,
            stateless=stateless,
            health={k: v for k, v in health.items() if v is not None},
            routes=routes,
            network=network,
            sign_ins=sign_ins,
            lab=(place is None or place.count == 1) and settings.replica is None,
        ),
        settings,
        connections=connections,
        sessions=sessions,
        body_s=settings.body_timeout_s,
        openai_paths=is_api_path,
        routes=routes,
        lab_paths=lab_path,
    )


def base_url(host: str, port: int) -> str:
    """``http://host:port`` for a bind address (an IPv6 one in brackets)."""
    bare = host.strip("[]")
    return f"http://{f'[{bare}]' if ':' in bare else bare}:{port}"


def served_urls(host: str, port: int, workers: int = 1, *, lab: bool = True) -> str:
    """What ``serve --transport http`` says on stderr once it serves: where each endpoint is (the lab's only when
    ``lab``: a single process serves it)."""
    bare = host.strip("[]")
    base = base_url(host, port)
    where = " (every interface of this machine)" if bare in ("0.0.0.0", "::") else ""
    processes = f" with {workers} workers" if workers > 1 else ""
    return (
        f"fusion-mcp: serving {base}{where}{processes}; Ctrl-C stops\n"
        f"  MCP (Streamable HTTP):   {base}/mcp\n"
        f"  OpenAI-compatible chat:  {base}/v1/chat/completions\n"
        f"  OpenAI Responses API:    {base}/v1/responses\n"
        + (f"  web lab:                 {base}/lab\n" if lab else "")
        + f"  health:                  {base}/healthz"
    )


async def serve_http(
    settings: Settings,
    host: str,
    port: int,
    *,
    stateless: bool = False,
    place: WorkerPlace | None = None,
    on_started: Callable[[], None] | None = None,
    sign_ins: SignIns | None = None,
) -> None:
    """Serve until cancelled or signalled; call :func:`~fusion_mcp.config.settings.check_bind` first.

    :class:`~fusion_mcp.http.workers.PortUnavailable` at once, before anything starts, if the port cannot be
    had; ``on_started`` is called once the server accepts connections.

    As a worker of a ``--workers`` server (``place``) it listens on the shared port beside its siblings and
    on a loopback port of its own for requests they relay.
    """
    sockets = claim_port(host, port) if place is None else [*port_sockets(host, port), relay_socket(place)]

    # Every run may hold a connection to the provider per member and the analyst.
    limit, backlog = descriptor_budget(settings.max_connections, settings.max_concurrent * (MAX_PANEL + 1))
    # The guard answers a slow body with 408 itself; the connection table closes it a moment later if need be.
    connections = Connections(
        limit=limit,
        header_s=settings.header_timeout_s,
        body_s=settings.body_timeout_s + 5,
        idle_s=IDLE_S,
        send_s=settings.send_timeout_s,
    )
    config = uvicorn.Config(
        build_app(settings, stateless=stateless, connections=connections, place=place, sign_ins=sign_ins),
        host=host,
        port=port,
        http=guarded_protocol(connections),
        backlog=backlog,
        timeout_keep_alive=int(IDLE_S),
        # The connection table knows a request by its TCP peer; behind a proxy, uvicorn would put the
        # X-Forwarded-For address there instead, and a long call would be cut at the header deadline.
        proxy_headers=False,
        log_level="warning",
        # uvicorn's own logging config would give its loggers a handler of their own, past the redacting
        # filter on ours: an exception it logs (with a traceback quoting a header) must be redacted too.
        log_config=None,
        lifespan="on",
        # A stopped server must not wait forever for a fusion still streaming to a client.
        timeout_graceful_shutdown=5,
    )
    await _Server(config, on_started).serve(sockets=sockets)


class _Server(uvicorn.Server):
    """uvicorn's server, saying when it has started."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started()
