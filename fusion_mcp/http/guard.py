"""The HTTP guard: every request to the server passes these checks before the application sees it.

A connection the connection table admitted on probation (beyond ``FUSION_MAX_CONNECTIONS``, every slot
being served) gets ``/healthz`` and nothing else: any other request is a 503 naming the limit, and either
way the connection closes after its response.

In order, for every path but ``/healthz`` (open; it says only liveness and version):

1. ``Host`` and ``Origin`` against the allow-lists, compared exactly (host and port; ``:*`` means any
   numeric port): 421 / 403. A web page using DNS rebinding cannot reach the server.
2. The declared body size: 413 before anything is read; on the chat routes, a POST's ``Content-Type``
   must be JSON: 400 (the SDK checks ``/mcp`` alike).
3. The bearer token, which names the caller's principal (:data:`callers.PRINCIPAL_KEY` in the scope): 401.
4. A POST's body, read whole within ``body_s`` (408) and the size cap (413), then parsed once: JSON nested
   too deep for the parser is a 400, not a crash in the application.
5. MCP sessions (stateful mode): a session belongs to the principal that opened it (another gets 404, as
   for an unknown session); a new one may first end the principal's, or everyone's, idlest (:mod:`sessions`).

With several processes behind one address (``--workers``, replicas), session ids carry where their session
lives (:mod:`~fusion_mcp.http.session_routes`): the guard adds this process's tags to the ids the client sees,
removes them from the ids it sends, and relays a request for a sibling worker's session to that worker.

It also tells :class:`~fusion_mcp.http.connections.Connections` when a request's headers and body are in, and
when its response is done, and cancels a ``tools/call`` whose client dropped the response stream.

On the OpenAI-compatible paths (``openai_paths``: the routes, and any other path under ``/v1``) every refusal
has OpenAI's error shape, and with ``FUSION_PASS_THROUGH_KEY`` a bearer that is no server token but a provider
key (``sk-or-...`` on OpenRouter) is accepted there: the request runs on that key, under a principal named after
its fingerprint (:mod:`~fusion_mcp.core.callers`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import Settings
from ..core import strict_json
from ..core.callers import (
    BODY_KEY,
    LOCAL_PRINCIPAL,
    PRINCIPAL_KEY,
    UPSTREAM_KEY,
    bearer,
    key_principal,
    lent_key,
    token_principal,
)
from ..core.errors import live_secret
from ..core.strict_json import JSONValueError
from ..openai_api.routes import error_body
from .connections import Connections, Phase
from .session_routes import SessionRoutes
from .sessions import SessionTable

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 1024 * 1024
OPEN_PATHS = frozenset({"/healthz"})
SESSION = b"mcp-session-id"
SETTLE_S = 2.0
"""How long a session's end waits for its requests already handed on to be answered."""
AT_LIMIT = (
    "the server is at its connection limit (FUSION_MAX_CONNECTIONS); only /healthz is served on this connection: "
    "try again shortly"
)


def split_host(value: str, *, pattern: bool = False) -> tuple[str, str | None] | None:
    """``host[:port]`` (IPv6 in brackets) as (lower-case host, port or None); None if malformed.

    ``pattern`` allows ``*`` as the port (an allow-list entry).
    """
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[: end + 1], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:] if rest else None
    else:
        host, colon, port_text = value.partition(":")
        port = port_text if colon else None
    if not host or (port is not None and not (port.isdigit() and len(port) <= 5) and not (pattern and port == "*")):
        return None
    return host.lower(), port


def host_allowed(value: str, allowed: tuple[str, ...]) -> bool:
    given = split_host(value)
    if given is None:
        return False
    for entry in allowed:
        wanted = split_host(entry, pattern=True)
        if wanted is not None and wanted[0] == given[0]:
            if wanted[1] == given[1] or (wanted[1] == "*" and given[1] is not None):
                return True
    return False


def origin_allowed(value: str, allowed: tuple[str, ...]) -> bool:
    given = urlsplit(value)
    if not given.scheme or not given.netloc or given.path or given.query or given.fragment:
        return False
    for entry in allowed:
        wanted = urlsplit(entry)
        if wanted.scheme == given.scheme and host_allowed(given.netloc, (wanted.netloc,)):
            return True
    return False


async def refuse(
    send: Send,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    openai: str | None = None,
    param: str | None = None,
) -> None:
    """Refuse a request; ``openai`` (an error code) gives the body OpenAI's error shape (with ``param``, the
    field at fault), for the chat routes."""
    if openai:
        body = error_body(status, message, code=openai, param=param)
    else:
        body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _not_json(headers: dict[bytes, bytes]) -> tuple[int, str, str] | None:
    """A POST to the chat routes must say it is JSON (the SDK checks ``/mcp`` alike), so a web page's plain
    form, which a browser sends cross-origin without asking, cannot post there."""
    kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    return (
        None if kind == b"application/json" else (400, "Content-Type must be application/json", "invalid_content_type")
    )


class Guard:
    """ASGI middleware in front of the application; see the module's docstring for what it checks."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        *,
        connections: Connections | None = None,
        sessions: SessionTable | None = None,
        body_s: float = 30.0,
        max_body: int = MAX_BODY_BYTES,
        openai_paths: Callable[[str], bool] = lambda path: False,
        routes: SessionRoutes | None = None,
        lab_paths: Callable[[str], bool] = lambda path: False,
    ) -> None:
        """Paths for which ``openai_paths`` is true get refusals in OpenAI's error shape. ``routes`` tag session ids
        with where they live and relay a sibling worker's sessions to it. Paths for which ``lab_paths`` is true
        are the web lab's: Host, Origin and body checks as everywhere, no bearer (a browser signs in there and
        carries a session cookie, which the lab checks itself)."""
        self.app = app
        self.lab_paths = lab_paths
        self.routes = routes if routes is not None and routes.active else None
        self.openai_paths = openai_paths
        self.lent_prefix = settings.lent_key_prefix
        self.principals = [(token.encode(), name) for token, name in settings.principals.items()]
        self.allowed_hosts = settings.allowed_hosts
        self.allowed_origins = settings.allowed_origins
        self.connections = connections
        self.sessions = sessions
        self.body_s = body_s
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        probation = self.connections is not None and self.connections.on_probation(scope.get("client"))
        if probation and scope["type"] == "http":
            await self._on_probation(scope, receive, send)
            return
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, self._watched(scope, send))
            return
        send = self._watched(scope, send)
        headers = dict(scope["headers"])
        shaped = self.openai_paths(scope["path"])
        refusal = self._refusal(headers)
        if refusal is None and shaped and scope["method"] == "POST":
            refusal = _not_json(headers)
        if refusal is not None:
            await refuse(send, *refusal[:2], openai=refusal[2] if shaped else None)
            return
        if self.lab_paths(scope["path"]):
            await self._lab(scope, receive, send)
            return
        caller = self._caller(headers.get(b"authorization", b""))
        if isinstance(caller, str):
            challenge = {"WWW-Authenticate": 'Bearer realm="fusion-mcp"'}
            code = "invalid_api_key" if shaped else None
            await refuse(send, 401, caller, challenge, openai=code)
            return
        scope = dict(scope, **caller)
        key = caller.get(UPSTREAM_KEY)
        # The lent key is a secret of the whole process while its request is served: every log line redacts it.
        with live_secret(key.get_secret_value() if isinstance(key, SecretStr) else None):
            await self._serve(scope, receive, send, headers)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]) -> None:
        """A request whose headers passed: sessions (routed, owned, ended), then the body for a POST."""
        shaped = self.openai_paths(scope["path"])
        principal = str(scope[PRINCIPAL_KEY])
        # MCP sessions are /mcp's: a chat request carrying the header is not routed or refused by it.
        session = "" if shaped else headers.get(SESSION, b"").decode("latin-1")
        if session and self.routes is not None:
            route = self.routes.inward(session)
            if route.sibling is not None:
                await self._relay(scope, receive, send, route.sibling)
                return
            if route.local is None:
                await refuse(send, 404, "session not found")
                return
            session = route.local
            scope["headers"] = [(k, session.encode() if k == SESSION else v) for k, v in scope["headers"]]
        if session and self.sessions is not None:
            if self.sessions.owner(session) != principal:  # unknown, ended, or another principal's
                await refuse(send, 404, "session not found")
                return
            if scope["method"] == "DELETE":
                self._phase(scope, "serving")  # its headers are in: the header deadline must not cut the wait
                await self.sessions.settle(session, SETTLE_S)
                self.sessions.closed(session)  # now: a request racing the DELETE must not reach a closing session
        if scope["method"] != "POST":
            self._phase(scope, "serving")
            await self._forward(scope, receive, send, session)
            return
        await self._post(scope, receive, send, principal, session)

    async def _lab(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A request to the web lab: a POST's body is read whole within ``body_s`` and the size cap, as on every
        path; who the browser is, the lab's session cookie says (and its CSRF token, for a POST)."""
        if scope["method"] == "POST":
            body = await self._body(scope, receive, send)
            if body is None:
                return
            receive = _replay(body, receive)
        else:
            self._phase(scope, "serving")
        await self.app(scope, receive, send)

    async def _on_probation(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A connection admitted beyond the cap: ``/healthz``, so a health check answers whatever floods the
        cap; anything else is refused before any work, so a flood cannot grow past the cap through these
        slots. Either way the connection closes after its response, giving its slot back."""
        send = self._watched(scope, _closing(send))
        if scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        code = "connection_limit" if self.openai_paths(scope["path"]) else None
        await refuse(send, 503, AT_LIMIT, {"Retry-After": "1"}, openai=code)

    async def _post(self, scope: Scope, receive: Receive, send: Send, principal: str, session: str) -> None:
        body = await self._body(scope, receive, send)
        if body is None:
            return
        shaped = self.openai_paths(scope["path"])
        try:
            message = strict_json.loads(body) if body else None
        except RecursionError:
            log.warning("request from %s refused: its JSON nests too deep to parse", _who(scope))
            code = "invalid_json" if shaped else None
            await refuse(send, 400, "the request body's JSON nests too deep", openai=code)
            return
        except JSONValueError as exc:
            # NaN, Infinity, 1e400 or a lone surrogate: valid JSON that no request can carry on.
            await refuse(send, 400, str(exc), openai="invalid_value" if shaped else None, param=exc.field)
            return
        except ValueError:
            message = None  # not JSON: the application says so in its own words
        if shaped and message is not None:
            scope[BODY_KEY] = message  # parsed once: the chat routes read it from here
        method = message.get("method") if isinstance(message, dict) else None
        if method == "initialize" and not session and not await self._make_room(scope, principal):
            await refuse(send, 503, "too many open sessions, all of them busy; try again shortly")
            return
        call_id = message.get("id") if method == "tools/call" and isinstance(message, dict) else None
        await self._forward(scope, _replay(body, receive), send, session, call_id, principal)

    async def _body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """A POST's whole body, read within ``body_s`` and the size cap; None once refused (408, 413)."""
        self._phase(scope, "body")
        body: bytes | None = b""
        with anyio.move_on_after(self.body_s) as waited:
            body = await self._read_body(receive)
        shaped = self.openai_paths(scope["path"])
        if waited.cancelled_caught:
            log.info("request body from %s not received within %g s", _who(scope), self.body_s)
            code = "timeout" if shaped else None
            await refuse(send, 408, f"request body not received within {self.body_s:g} s", openai=code)
            return None
        if body is None:
            await refuse(
                send, 413, f"request body over {self.max_body} bytes", openai="body_too_large" if shaped else None
            )
            return None
        self._phase(scope, "serving")
        return body

    async def _relay(self, scope: Scope, receive: Receive, send: Send, sibling: Path) -> None:
        """A request for a session a sibling worker holds: read it here, under this worker's limits, and
        let the sibling answer it (:meth:`SessionRoutes.relay`)."""
        assert self.routes is not None
        body = await self._body(scope, receive, send) if scope["method"] == "POST" else b""
        if body is None:
            return
        if scope["method"] != "POST":
            self._phase(scope, "serving")
        if not await self.routes.relay(sibling, scope, body, receive, send):
            await refuse(send, 404, "session not found")

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        session: str,
        call_id: Any = None,
        principal: str = LOCAL_PRINCIPAL,
    ) -> None:
        """Hand the request on; keep the session table in step; cancel a call whose client went away."""
        complete = False
        table = self.sessions if scope["method"] == "POST" and session else None
        if table is not None:
            if table.owner(session) is None:  # ended while this request's body was being read
                await refuse(send, 404, "session not found")
                return
            table.started(session)

        async def after_body() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not complete and call_id is not None and session:
                await self._cancel_for_client(scope, call_id)
            return message

        async def watch(message: Message) -> None:
            nonlocal complete
            if message["type"] == "http.response.start":
                if self.sessions is not None:
                    self._note_session(scope, message, session, principal)
                if self.routes is not None:
                    message = self._tagged(message)

            if message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        try:
            await self.app(scope, after_body, watch)
        finally:
            if table is not None:
                table.finished(session)

    def _refusal(self, headers: dict[bytes, bytes]) -> tuple[int, str, str] | None:
        """Why the request's headers alone refuse it (status, message, OpenAI error code): a foreign Host or
        Origin, a body declared too large."""
        host = headers.get(b"host", b"").decode("latin-1")
        if not host_allowed(host, self.allowed_hosts):
            return 421, "this server does not answer for that Host (see FUSION_ALLOWED_HOSTS)", "host_not_allowed"
        origin = headers.get(b"origin")
        if origin is not None and not origin_allowed(origin.decode("latin-1"), self.allowed_origins):
            return 403, "requests from that Origin are refused (see FUSION_ALLOWED_ORIGINS)", "origin_not_allowed"
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return 413, f"request body over {self.max_body} bytes", "body_too_large"
        return None

    def _caller(self, authorization: bytes) -> dict[str, object] | str:
        """What the guard tells the handlers about the caller (its principal, maybe its key), or why it is
        refused (401). The same on every path: ``/mcp`` admits exactly the callers the chat routes admit.

        With pass-through on, a bearer that starts with the lent-key prefix is a provider key, its holder the
        ``key:`` principal of its fingerprint; any other bearer must be a server token, so one that fails the
        token check (a mistyped token, a random string) is refused, never sent to the provider as a key.
        """
        try:
            key = lent_key(bearer(authorization), self.lent_prefix)
        except ValueError as exc:
            return f"the provider key in the Authorization header is malformed: it must be {exc}"
        if key is not None:
            return {PRINCIPAL_KEY: key_principal(key), UPSTREAM_KEY: SecretStr(key)}
        principal = self._principal(authorization)
        return "missing or wrong bearer token" if principal is None else {PRINCIPAL_KEY: principal}

    def _principal(self, authorization: bytes) -> str | None:
        """The principal whose token ``authorization`` carries; ``local`` when no token is configured."""
        if not self.principals:
            return LOCAL_PRINCIPAL
        scheme, _, credential = authorization.partition(b" ")
        found = token_principal(credential, self.principals)
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

    async def _make_room(self, scope: Scope, principal: str) -> bool:
        """Before a new session: end the principal's (or everyone's) idlest session if the table is full."""
        if self.sessions is None:
            return True
        victim, room = self.sessions.to_end(principal)
        if victim is not None:
            log.info(
                "ending idle session of %s to make room for a new one of %s", self.sessions.owner(victim), principal
            )
            self.sessions.closed(victim)
            await self._internal(scope, "DELETE", victim, b"")
        return room

    def _tagged(self, start: Message) -> Message:
        """The response's session id as the client must see it: with this process's route tags."""
        assert self.routes is not None
        headers = [
            (k, self.routes.outward(v.decode("latin-1")).encode() if k == SESSION else v)
            for k, v in start.get("headers", [])
        ]
        return dict(start, headers=headers)

    def _note_session(self, scope: Scope, start: Message, session: str, principal: str) -> None:
        table = self.sessions
        if table is None:
            return
        new = dict(start.get("headers", [])).get(SESSION)
        if new is not None and not session and start.get("status") == 200:
            table.opened(new.decode("latin-1"), principal)
        elif session and start.get("status") == 404:
            table.closed(session)  # the SDK ended it (idle timeout): forget it too

    def _watched(self, scope: Scope, send: Send) -> Send:
        """``send``, telling the connection table when the response is complete (the connection is idle)."""
        if self.connections is None:
            return send
        connections = self.connections

        async def watched(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                connections.moved(scope.get("client"), "idle")

        return watched

    def _phase(self, scope: Scope, phase: Phase) -> None:
        if self.connections is not None:
            self.connections.moved(scope.get("client"), phase)

    async def _cancel_for_client(self, scope: Scope, call_id: Any) -> None:
        session = dict(scope["headers"]).get(SESSION, b"").decode("latin-1")
        if self.sessions is not None and self.sessions.owner(session) is None:
            return  # the session has ended, and its calls with it
        log.info("client dropped the stream of tools/call %r: cancelling it", call_id)
        note = {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": call_id, "reason": "the client closed the response stream"},
        }
        await self._internal(scope, "POST", session, json.dumps(note).encode())

    async def _internal(self, scope: Scope, method: str, session: str, body: bytes) -> None:
        """A request of our own to the application for a session (a cancellation, the end of a session)."""
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-length", SESSION)]
        headers += [(b"content-length", str(len(body)).encode()), (SESSION, session.encode())]
        inner = dict(scope, method=method, headers=headers)

        async def gone() -> Message:
            return {"type": "http.disconnect"}

        async def discard(_: Message) -> None:
            pass

        try:
            await self.app(inner, _replay(body, gone), discard)
        except Exception as exc:  # the session may already be gone: nothing left to do
            log.debug("internal %s for a session failed: %r", method, exc)


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


def _closing(send: Send) -> Send:
    """``send``, with ``Connection: close`` on the response: uvicorn then closes the connection after it."""

    async def closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = dict(message, headers=[*headers, (b"connection", b"close")])
        await send(message)

    return closing


def _who(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "a client"
