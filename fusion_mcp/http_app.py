"""Streamable HTTP for shared use: the SDK's app behind our guards.

Order of checks for a request to ``/mcp``: body size (413, before anything is parsed), bearer token
(401), then the SDK's Host (421) and Origin (403) allow-lists, which we switch on whatever the bind
address (the SDK leaves them off on 0.0.0.0). ``/healthz`` is open and says only liveness and version.

The token a request presents names its principal (``FUSION_HTTP_TOKENS``; ``default`` for
``FUSION_HTTP_TOKEN``; ``local`` when the server takes no token). The guard puts the name in the ASGI
scope under :data:`PRINCIPAL_KEY`, where the handlers read it (:func:`principal_of`); a client cannot set it.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from typing import Any

from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .config import LOCAL_PRINCIPAL, ConfigError, Settings
from .server import PRINCIPAL_KEY, create_server

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


async def _refuse(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
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

    def __init__(self, app: ASGIApp, principals: dict[str, str], max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.principals = [(token.encode(), name) for token, name in principals.items()]
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _refuse(send, 413, f"request body over {self.max_body} bytes")
            return
        principal = self._principal(headers.get(b"authorization", b""))
        if principal is None:
            await _refuse(send, 401, "missing or wrong bearer token", {"WWW-Authenticate": 'Bearer realm="fusion-mcp"'})
            return
        scope = dict(scope, **{PRINCIPAL_KEY: principal})
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await self._read_body(receive)
        if body is None:
            await _refuse(send, 413, f"request body over {self.max_body} bytes")
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


def build_app(settings: Settings, *, stateless: bool = False) -> ASGIApp:
    """The whole HTTP application: ``/mcp`` (stateful SSE unless ``stateless``) and ``/healthz``."""
    app = create_server(settings).streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=stateless,
        max_request_body_size=MAX_BODY_BYTES,
        transport_security=transport_security(settings),
    )
    return Guard(app, settings.principals)


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
