"""Streamable HTTP for shared use: the SDK's app and the OpenAI-compatible routes behind our guards.

Order of checks for a request to ``/mcp``: body size (413, before anything is parsed), bearer token
(401), then the SDK's Host (421) and Origin (403) allow-lists, which we switch on whatever the bind
address (the SDK leaves them off on 0.0.0.0). The chat routes (``/v1/chat/completions``, ``/v1/models``
and their ``/api/v1`` twins) get the same checks in the same order — the SDK's run only inside its
transport, so :class:`HostCheck` applies them there too — and every refusal in OpenAI's error shape.
``/healthz`` is open and says only liveness and version.

The token a request presents names its principal (``FUSION_HTTP_TOKENS``; ``default`` for
``FUSION_HTTP_TOKEN``; ``local`` when the server takes no token). The guard puts the name in the ASGI
scope under :data:`PRINCIPAL_KEY`, where the handlers read it (:func:`principal_of`); a client cannot set it.
With ``FUSION_PASS_THROUGH_KEY``, a chat request whose bearer is no server token but a provider key
(``sk-or-...`` on OpenRouter) is served on that key, under a principal named after its fingerprint.

Both front ends share the process's one :class:`FusionService`: the app's lifespan opens it and lends it
to the MCP server and to the chat routes (:class:`FrontEnds`).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from pydantic import SecretStr
from starlette.requests import Request
from starlette.routing import Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .callers import PRINCIPAL_KEY, UPSTREAM_KEY, forwardable_key, key_principal
from .chat_http import API_PATHS, ChatApp, error_body
from .config import LOCAL_PRINCIPAL, ConfigError, Settings
from .server import create_server
from .service import FusionService

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 1024 * 1024
OPEN_PATHS = frozenset({"/healthz"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings, host: str) -> None:
    """Refuse to listen beyond this machine without a token: anyone reaching the port could spend the key."""
    if not is_loopback(host) and not settings.principals:
        raise ConfigError(
            f"refusing to listen on {host} without FUSION_HTTP_TOKEN: anyone who can reach this port could run "
            "fusions on your API key. Set FUSION_HTTP_TOKEN or FUSION_HTTP_TOKENS (clients send "
            "'Authorization: Bearer <token>') or bind 127.0.0.1"
        )


def transport_security(settings: Settings) -> TransportSecuritySettings:
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=list(settings.allowed_hosts),
        allowed_origins=list(settings.allowed_origins),
    )


async def _refuse(
    send: Send, status: int, message: str, headers: dict[str, str] | None = None, *, openai: str | None = None
) -> None:
    """Refuse a request; ``openai`` (an error code) gives the body OpenAI's error shape, for the chat routes."""
    body = error_body(status, message, code=openai) if openai else json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware in front of the SDK's app: body cap, bearer token, and cancel-on-disconnect.

    Clients of the 2025-11-25 protocol era cancel a call by sending ``notifications/cancelled``; one that
    simply drops the SSE response (a killed agent, a proxy timeout) would leave its run going until the
    deadline. When the stream of a ``tools/call`` closes before its response is complete, the guard
    sends that notification to the session on the client's behalf, so the run and its upstream requests
    stop at once.
    """

    def __init__(
        self,
        app: ASGIApp,
        principals: dict[str, str],
        max_body: int = MAX_BODY_BYTES,
        *,
        openai_paths: frozenset[str] = frozenset(),
        pass_through: frozenset[str] = frozenset(),
        openrouter: bool = False,
    ) -> None:
        """``openai_paths`` get refusals in OpenAI's error shape; on ``pass_through`` paths a caller's own
        provider key is accepted (``openrouter``: only an ``sk-or-`` key)."""
        self.app = app
        self.principals = [(token.encode(), name) for token, name in principals.items()]
        self.max_body = max_body
        self.openai_paths = openai_paths
        self.pass_through = pass_through
        self.openrouter = openrouter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        shaped = scope["path"] in self.openai_paths

        def code(name: str) -> str | None:
            return name if shaped else None

        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _refuse(send, 413, f"request body over {self.max_body} bytes", openai=code("body_too_large"))
            return
        caller = self._caller(scope["path"], headers.get(b"authorization", b""))
        if caller is None:
            challenge = {"WWW-Authenticate": 'Bearer realm="fusion-mcp"'}
            await _refuse(send, 401, "missing or wrong bearer token", challenge, openai=code("invalid_api_key"))
            return
        scope = dict(scope, **caller)
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await self._read_body(receive)
        if body is None:
            await _refuse(send, 413, f"request body over {self.max_body} bytes", openai=code("body_too_large"))
            return
        call_id = _tool_call_id(body)
        session = headers.get(b"mcp-session-id")
        complete = False

        async def after_body() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not complete and call_id is not None and session:
                await self._cancel_for_client(scope, call_id)
            return message

        async def watch(message: Message) -> None:
            nonlocal complete
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        await self.app(scope, _replay(body, after_body), watch)

    def _caller(self, path: str, authorization: bytes) -> dict[str, object] | None:
        """What the guard tells the handlers about the caller (its principal, maybe its key); None: refused.

        A server token always wins; a provider key is taken only where pass-through is on and only when the
        bearer is no server token.
        """
        principal = self._principal(authorization)
        if path in self.pass_through and (principal is None or not self.principals):
            key = forwardable_key(authorization, openrouter=self.openrouter)
            if key is not None:
                return {PRINCIPAL_KEY: key_principal(key), UPSTREAM_KEY: SecretStr(key)}
        return None if principal is None else {PRINCIPAL_KEY: principal}

    def _principal(self, authorization: bytes) -> str | None:
        """The principal whose token ``authorization`` carries; ``local`` when no token is configured."""
        if not self.principals:
            return LOCAL_PRINCIPAL
        scheme, _, credential = authorization.partition(b" ")
        found = None
        # Every token is compared, in constant time, so the timing says nothing about which one nearly matched.
        for token, name in self.principals:
            if hmac.compare_digest(credential.strip(), token):
                found = name
        return found if scheme.lower() == b"bearer" else None

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body (chunked or not), or None past the cap: it is never handed on in part."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _cancel_for_client(self, scope: Scope, call_id: Any) -> None:
        log.info("client dropped the stream of tools/call %r: cancelling it", call_id)
        note = json.dumps(
            {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": call_id, "reason": "the client closed the response stream"},
            }
        ).encode()
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        inner = dict(scope, headers=[*headers, (b"content-length", str(len(note)).encode())])

        async def gone() -> Message:
            return {"type": "http.disconnect"}

        async def discard(_: Message) -> None:
            pass

        try:
            await self.app(inner, _replay(note, gone), discard)
        except Exception as exc:  # the session may already be gone: nothing left to cancel
            log.debug("cancel on disconnect failed: %r", exc)


def _replay(body: bytes, then: Receive) -> Receive:
    """An ASGI receive that hands over ``body`` whole, once, and then defers to ``then``."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await then()

    return receive


def _tool_call_id(body: bytes) -> Any:
    try:
        message = json.loads(body)
    except ValueError:
        return None
    if isinstance(message, dict) and message.get("method") == "tools/call":
        return message.get("id")
    return None


class HostCheck:
    """The SDK's Host (421), Origin (403) and JSON content-type (400) checks, for routes outside its transport.

    A JSON content type on every POST also keeps a web page's plain form from posting here.
    """

    REFUSALS: ClassVar[dict[int, tuple[str, str]]] = {
        400: ("Content-Type must be application/json", "invalid_content_type"),
        421: ("this Host is not allowed (FUSION_ALLOWED_HOSTS)", "host_not_allowed"),
        403: ("this Origin is not allowed (FUSION_ALLOWED_ORIGINS)", "origin_not_allowed"),
    }

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.check = TransportSecurityMiddleware(transport_security(settings))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = await self.check.validate_request(Request(scope), is_post=scope["method"] == "POST")
        if refused is None:
            await self.app(scope, receive, send)
            return
        message, code = self.REFUSALS.get(refused.status_code, ("request refused", "refused"))
        await _refuse(send, refused.status_code, message, openai=code)


class FrontEnds:
    """The whole HTTP app: the chat routes to :class:`ChatApp`, every other path to the SDK's app as it is.

    Its lifespan opens the process's one :class:`FusionService` and lends it to both: to the chat routes
    directly, and to the MCP server through the SDK's own lifespan (its session manager's), entered inside.
    """

    def __init__(self, settings: Settings, *, stateless: bool = False) -> None:
        self.settings = settings
        self.chat = ChatApp(settings)
        self.checked = HostCheck(self.chat, settings)
        self.mcp_app = create_server(settings, service=self._lend).streamable_http_app(
            streamable_http_path="/mcp",
            stateless_http=stateless,
            max_request_body_size=MAX_BODY_BYTES,
            transport_security=transport_security(settings),
        )
        self._lifespan = Router(lifespan=self._open)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan.lifespan(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] in API_PATHS:
            await self.checked(scope, receive, send)
        else:
            await self.mcp_app(scope, receive, send)

    @asynccontextmanager
    async def _open(self, _: object) -> AsyncIterator[None]:
        async with FusionService.open(self.settings, check_models=True) as service:
            self.chat.service = service
            try:
                async with self.mcp_app.router.lifespan_context(self.mcp_app):
                    yield
            finally:
                self.chat.service = None

    @asynccontextmanager
    async def _lend(self) -> AsyncIterator[FusionService]:
        if self.chat.service is None:
            raise RuntimeError("the fusion service is not open: the HTTP app's lifespan opens it first")
        yield self.chat.service


def build_app(settings: Settings, *, stateless: bool = False) -> ASGIApp:
    """The whole HTTP application behind its guard: ``/mcp`` (stateful SSE unless ``stateless``), the
    OpenAI-compatible routes and ``/healthz``, sharing one :class:`FusionService`."""
    pass_through = API_PATHS if settings.pass_through_key else frozenset()
    return Guard(
        FrontEnds(settings, stateless=stateless),
        settings.principals,
        openai_paths=API_PATHS,
        pass_through=pass_through,
        openrouter=settings.is_openrouter,
    )


async def serve_http(settings: Settings, host: str, port: int, *, stateless: bool = False) -> None:
    """Serve until cancelled or signalled; call :func:`check_bind` first."""
    import uvicorn

    # A stopped server must not wait forever for a fusion still streaming to a client.
    config = uvicorn.Config(
        build_app(settings, stateless=stateless),
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    await uvicorn.Server(config).serve()
