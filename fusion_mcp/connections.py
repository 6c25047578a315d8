"""The HTTP server's connections: read deadlines, and a cap that a flood of slow clients cannot exhaust.

uvicorn bounds a connection's idle time between requests, but not how long it may take to send a request's
headers: a thousand half-open connections (headers never finished) would hold a thousand file descriptors
until the process could accept nothing, not even ``/healthz``. So every connection is wrapped by
:func:`guarded_protocol` and tracked here with its phase:

- ``headers`` from the first byte of a request until its headers are complete (deadline ``header_s``);
- ``body`` until the body is read (the HTTP guard reads it under ``body_s`` and answers 408 past it);
- ``serving`` while the application answers (a fusion run, an SSE stream): no deadline here;
- ``idle`` between requests of a kept-alive connection (deadline ``idle_s``).

The guard (``http_guard.Guard``) reports the phase changes it sees, keyed by the client's address. At the
cap, the connection that has waited longest without finishing a request (or idled longest) is closed to make
room, as nginx reuses its slots; only when every connection is being served is the newcomer turned away.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from uvicorn.protocols.http.auto import AutoHTTPProtocol

log = logging.getLogger(__name__)
Phase = Literal["headers", "body", "serving", "idle"]
Peer = tuple[str, int]
SWEEP_S = 0.5
"""How often deadlines are checked: a connection outlives its deadline by at most this."""
RESERVED_FDS = 64
"""Descriptors kept for everything but client connections (the database, logs, the event loop, DNS)."""


@dataclass(eq=False)
class Connection:
    key: int
    transport: asyncio.Transport
    peer: Peer | None
    phase: Phase = "headers"
    since: float = field(default_factory=time.monotonic)


class Connections:
    """Every open client connection, with its phase; enforces the deadlines and the cap."""

    def __init__(self, *, limit: int, header_s: float, body_s: float, idle_s: float) -> None:
        self.limit = limit
        self.deadlines: dict[Phase, float] = {"headers": header_s, "body": body_s, "idle": idle_s}
        self._open: dict[int, Connection] = {}
        self._by_peer: dict[Peer, Connection] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed_since_log = 0
        self._last_log = 0.0

    def __len__(self) -> int:
        return len(self._open)

    # -- what the protocol wrapper reports ---------------------------------------------------------------

    def opened(self, key: int, transport: asyncio.Transport) -> bool:
        """Register a new connection; False if it must be turned away (every slot is serving a request)."""
        if len(self._open) >= self.limit and not self._evict_one():
            self._note_closed("turned away a new connection: every connection is serving a request")
            return False
        peer = transport.get_extra_info("peername")
        conn = Connection(key, transport, tuple(peer[:2]) if isinstance(peer, tuple) else None)
        self._open[key] = conn
        if conn.peer is not None:
            self._by_peer[conn.peer] = conn
        self._schedule_sweep()
        return True

    def closed(self, key: int) -> None:
        conn = self._open.pop(key, None)
        if conn is not None and conn.peer is not None and self._by_peer.get(conn.peer) is conn:
            del self._by_peer[conn.peer]

    def received(self, key: int) -> None:
        """Bytes arrived: an idle connection starts a new request (its headers' deadline starts now)."""
        conn = self._open.get(key)
        if conn is not None and conn.phase == "idle":
            conn.phase, conn.since = "headers", time.monotonic()

    # -- what the HTTP guard reports -------------------------------------------------------------------

    def moved(self, peer: Any, phase: Phase) -> None:
        """The request from ``peer`` (an ASGI scope's ``client``) reached ``phase``."""
        conn = self._by_peer.get(tuple(peer)) if isinstance(peer, list | tuple) else None
        if conn is not None:
            conn.phase, conn.since = phase, time.monotonic()

    # -- enforcement ---------------------------------------------------------------------------------------

    def _evict_one(self) -> bool:
        """Close the connection that has waited longest without finishing a request, or idled longest."""
        waiting = [c for c in self._open.values() if c.phase != "serving"]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c.since)
        self._close(oldest, "the connection limit was reached")
        return True

    def _close(self, conn: Connection, why: str) -> None:
        conn.transport.abort()  # frees the descriptor now; no goodbye owed to a client that sent nothing
        self.closed(conn.key)
        self._note_closed(f"closed connections: {why}")

    def _schedule_sweep(self) -> None:
        if self._sweeper is None and self._open:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        for conn in list(self._open.values()):
            deadline = self.deadlines.get(conn.phase)
            if deadline is not None and now - conn.since > deadline:
                self._close(conn, f"no complete request within the {conn.phase} deadline")
        self._schedule_sweep()

    def _note_closed(self, what: str) -> None:
        # A flood closes thousands of connections: one log line every ten seconds says enough.
        self._closed_since_log += 1
        now = time.monotonic()
        if now - self._last_log >= 10:
            log.warning("%s (%d in the last %.0f s)", what, self._closed_since_log, min(now - self._last_log, 1e9))
            self._closed_since_log, self._last_log = 0, now


def guarded_protocol(connections: Connections) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class, wrapped so ``connections`` sees every connection open, read and close.

    Only the ``asyncio.Protocol`` interface is used, so the wrapper does not depend on how uvicorn's own
    protocol works inside.
    """

    class GuardedProtocol(asyncio.Protocol):
        def __init__(self, **uvicorn_arguments: Any) -> None:
            self._inner = AutoHTTPProtocol(**uvicorn_arguments)
            self._admitted = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self._admitted = connections.opened(id(self), transport)
            if not self._admitted:
                transport.abort()
                return
            self._inner.connection_made(transport)

        def data_received(self, data: bytes) -> None:
            if self._admitted:
                connections.received(id(self))
                self._inner.data_received(data)

        def eof_received(self) -> bool | None:
            return self._inner.eof_received() if self._admitted else None

        def connection_lost(self, exc: Exception | None) -> None:
            if self._admitted:
                connections.closed(id(self))
                self._inner.connection_lost(exc)

        def pause_writing(self) -> None:
            self._inner.pause_writing()

        def resume_writing(self) -> None:
            self._inner.resume_writing()

    return GuardedProtocol


def descriptor_budget(wanted: int, reserved: int) -> tuple[int, int]:
    """(connections, listen backlog) that fit the process's file-descriptor limit, raising the soft limit to
    the hard one first.

    ``reserved`` is what the rest of the process may hold at once (its pool of upstream connections).
    Accepting comes in bursts of up to the backlog before closed connections give their descriptors back,
    so the backlog is counted too.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the file-descriptor limit from %d to %d: %s", soft, target, exc)
    available = max(32, soft - reserved - RESERVED_FDS)
    backlog = min(2048, max(16, available // 8))
    connections = min(wanted, max(16, available - backlog))
    if connections < wanted:
        log.warning(
            "FUSION_MAX_CONNECTIONS=%d does not fit %d file descriptors; serving at most %d connections",
            wanted,
            soft,
            connections,
        )
    return connections, backlog
