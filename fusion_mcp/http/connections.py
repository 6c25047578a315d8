"""The HTTP server's connections: read and send deadlines, and a cap that a flood of slow clients cannot
exhaust.

uvicorn bounds a connection's idle time between requests, but not how long it may take to send a request's
headers, nor how long a client may leave a response unread: a thousand half-open connections (headers never
finished), or a few that ask for long streamed answers and never read them, would hold their descriptors (and
the answers, in memory) until the process could accept nothing, not even ``/healthz``. So every connection is
wrapped by :func:`guarded_protocol` and tracked here with its phase:

- ``headers`` from the first byte of a request until its headers are complete (deadline ``header_s``);
- ``body`` until the body is read (the HTTP guard reads it under ``body_s`` and answers 408 past it);
- ``serving`` while the application answers (a fusion run, an SSE stream): no deadline here;
- ``idle`` between requests of a kept-alive connection (deadline ``idle_s``).

Whatever the phase, a connection whose writes have stalled for ``send_s`` (the transport paused writing, its
buffer full, and the client has taken none of the bytes already written since) is aborted; uvicorn then tells
the application the client disconnected, which cancels what it was doing for it.

The guard (``http_guard.Guard``) reports the phase changes it sees, keyed by the client's address. At the
cap, the connection that has waited longest on its client (without finishing a request, idling, or with its
writes stalled) is closed to make room, as nginx reuses its slots. When every connection is being served, a
newcomer is admitted on probation, in one of a few slots beyond the cap: the guard serves it ``/healthz`` and
refuses anything else (503), so an operator's health check still answers, and it closes after that one
response; its deadlines are the others'. When the probation slots are full too, the one that has waited longest
is closed in turn; only when none of them is waiting is the newcomer turned away.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import resource
import socket
import struct
import termios
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
STALLED_S = 1.0
"""A connection whose writes have made no progress for this long counts, at the cap, as waiting on its client."""
PROBATION_SLOTS = 8
"""Connections admitted beyond the cap, for ``/healthz`` only, when every connection is being served."""
LIMIT_REACHED = "the connection limit was reached"
OUTQ: int | None = getattr(termios, "TIOCOUTQ", None)
"""The ioctl that tells how much a socket's kernel send queue holds (Linux; elsewhere it may fail: then
only the transport's own buffer is watched)."""


@dataclass(eq=False)
class Connection:
    key: int
    transport: asyncio.Transport
    peer: Peer | None
    probation: bool = False
    phase: Phase = "headers"
    since: float = field(default_factory=time.monotonic)
    stalled_since: float | None = None
    """While the transport has paused writing (its buffer is full: the client is not reading fast enough):
    when the client last took any of what was written. None while writes flow."""
    unsent: int = 0
    """Bytes written but not yet taken by the client, when last looked at (:func:`_unsent`)."""

    def pause(self, now: float) -> None:
        self.stalled_since, self.unsent = now, _unsent(self.transport)

    def look(self, now: float) -> None:
        """While writes are paused, see whether the client took some bytes since the last look.

        The transport resumes only once its buffer has drained, which after one large write can take a
        steady but slow reader much longer than the deadline: progress is what counts, not the pause.
        """
        if self.stalled_since is not None:
            unsent = _unsent(self.transport)
            if unsent < self.unsent:
                self.stalled_since = now
            self.unsent = unsent

    def waiting_since(self, now: float) -> float | None:
        """Since when this connection has been waiting on its client (evictable at the cap): without finishing
        a request, idling, or with its writes stalled for ``STALLED_S``; None while it is being served."""
        self.look(now)
        stalled = self.stalled_since
        if stalled is not None and now - stalled < STALLED_S:
            stalled = None
        if self.phase == "serving":
            return stalled
        return self.since if stalled is None else min(self.since, stalled)


class Connections:
    """Every open client connection, with its phase; enforces the deadlines and the cap."""

    def __init__(
        self,
        *,
        limit: int,
        header_s: float,
        body_s: float,
        idle_s: float,
        send_s: float,
        probation: int = PROBATION_SLOTS,
    ) -> None:
        self.limit = limit
        self.probation = probation
        self.send_s = send_s
        self.deadlines: dict[Phase, float] = {"headers": header_s, "body": body_s, "idle": idle_s}
        self._open: dict[int, Connection] = {}
        self._by_peer: dict[Peer, Connection] = {}
        self._on_probation = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._notes: dict[str, tuple[int, float]] = {}

    def __len__(self) -> int:
        return len(self._open)

    # -- what the protocol wrapper reports ---------------------------------------------------------------

    def opened(self, key: int, transport: asyncio.Transport) -> bool:
        """Register a new connection, on probation if every slot is serving a request; False if it must be
        turned away (the probation slots are full too, and serving)."""
        probation = len(self._open) - self._on_probation >= self.limit and not self._evict(probation=False)
        if probation and self._on_probation >= self.probation and not self._evict(probation=True):
            self._note("turned away a new connection: every connection is serving a request")
            return False
        if probation:
            self._note("a new connection is on probation, for /healthz only: every connection is serving a request")
        peer = transport.get_extra_info("peername")
        conn = Connection(key, transport, tuple(peer[:2]) if isinstance(peer, tuple) else None, probation)
        self._open[key] = conn
        self._on_probation += probation
        if conn.peer is not None:
            self._by_peer[conn.peer] = conn
        self._schedule_sweep()
        return True

    def closed(self, key: int) -> None:
        conn = self._open.pop(key, None)
        if conn is None:
            return
        self._on_probation -= conn.probation
        if conn.peer is not None and self._by_peer.get(conn.peer) is conn:
            del self._by_peer[conn.peer]

    def writing(self, key: int, *, paused: bool) -> None:
        """The transport paused writing (its buffer is full: the client is not reading), or resumed."""
        conn = self._open.get(key)
        if conn is not None and paused:
            conn.pause(time.monotonic())
        elif conn is not None:
            conn.stalled_since = None

    def received(self, key: int) -> None:
        """Bytes arrived: an idle connection starts a new request (its headers' deadline starts now)."""
        conn = self._open.get(key)
        if conn is not None and conn.phase == "idle":
            conn.phase, conn.since = "headers", time.monotonic()

    # -- what the HTTP guard reports -------------------------------------------------------------------

    def moved(self, peer: Any, phase: Phase) -> None:
        """The request from ``peer`` (an ASGI scope's ``client``) reached ``phase``."""
        conn = self._find(peer)
        if conn is not None:
            conn.phase, conn.since = phase, time.monotonic()

    def on_probation(self, peer: Any) -> bool:
        """Whether the connection from ``peer`` (an ASGI scope's ``client``) may only be served ``/healthz``."""
        conn = self._find(peer)
        return conn is not None and conn.probation

    def _find(self, peer: Any) -> Connection | None:
        return self._by_peer.get(tuple(peer)) if isinstance(peer, list | tuple) else None

    # -- enforcement ---------------------------------------------------------------------------------------

    def _evict(self, *, probation: bool) -> bool:
        """Close the connection (of the cap's slots, or of the probation slots) that has waited longest on its
        client: without finishing a request, idling, or with its writes stalled."""
        now = time.monotonic()
        waiting: list[tuple[float, Connection]] = []
        for conn in self._open.values():
            since = conn.waiting_since(now) if conn.probation == probation else None
            if since is not None:
                waiting.append((since, conn))
        if not waiting:
            return False
        self._close(min(waiting, key=lambda pair: pair[0])[1], LIMIT_REACHED)
        return True

    def _close(self, conn: Connection, why: str) -> None:
        if conn.stalled_since is not None:
            _drop_unsent(conn.transport)
        conn.transport.abort()  # frees the descriptor now; no goodbye owed to a client that sent nothing
        self.closed(conn.key)
        self._note(f"closed connections: {why}")

    def _schedule_sweep(self) -> None:
        if self._sweeper is None and self._open:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        for conn in list(self._open.values()):
            why = self._overdue(conn, now)
            if why is not None:
                self._close(conn, why)
        self._schedule_sweep()

    def _overdue(self, conn: Connection, now: float) -> str | None:
        """Why ``conn`` must be closed now (a deadline it has passed), or None."""
        conn.look(now)
        if conn.stalled_since is not None and now - conn.stalled_since > self.send_s:
            return f"writes stalled for {self.send_s:g} s (FUSION_SEND_TIMEOUT_S): the client stopped reading"
        deadline = self.deadlines.get(conn.phase)
        if deadline is not None and now - conn.since > deadline:
            return f"no complete request within the {conn.phase} deadline"
        return None

    def _note(self, what: str) -> None:
        # A flood closes thousands of connections: one log line every ten seconds per cause says enough.
        count, last = self._notes.get(what, (0, 0.0))
        count += 1
        now = time.monotonic()
        if now - last >= 10:
            log.warning("%s (%d in the last %.0f s)", what, count, min(now - last, 1e9))
            count, last = 0, now
        self._notes[what] = (count, last)


def _unsent(transport: asyncio.Transport) -> int:
    """Bytes written to ``transport`` that the client has not taken yet: in its buffer, and where the system
    tells (Linux) in the kernel's send queue too, which holds megabytes and drains as the client reads."""
    size = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if OUTQ is not None and sock is not None:
        with contextlib.suppress(OSError, ValueError):
            size += struct.unpack("i", fcntl.ioctl(sock.fileno(), OUTQ, b"\0\0\0\0"))[0]
    return size


def _drop_unsent(transport: asyncio.Transport) -> None:
    """Make the coming close a reset: the megabytes a client left unread are dropped with the connection,
    rather than kept in the kernel's buffer while it tries to deliver them (SO_LINGER with a zero timeout)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


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
            if self._admitted:
                connections.writing(id(self), paused=True)
            self._inner.pause_writing()

        def resume_writing(self) -> None:
            if self._admitted:
                connections.writing(id(self), paused=False)
            self._inner.resume_writing()

    return GuardedProtocol


def descriptor_budget(wanted: int, reserved: int, probation: int = PROBATION_SLOTS) -> tuple[int, int]:
    """(connections, listen backlog) that fit the process's file-descriptor limit, raising the soft limit to
    the hard one first.

    ``reserved`` is what the rest of the process may hold at once (its pool of upstream connections).
    Accepting comes in bursts of up to the backlog before closed connections give their descriptors back,
    so the backlog is counted too, and so are the ``probation`` slots beyond the cap.
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
    connections = min(wanted, max(16, available - backlog - probation))
    if connections < wanted:
        log.warning(
            "FUSION_MAX_CONNECTIONS=%d does not fit %d file descriptors; serving at most %d connections",
            wanted,
            soft,
            connections,
        )
    return connections, backlog
