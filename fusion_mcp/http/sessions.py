"""Stateful MCP sessions over HTTP (2025-11-25 clients): how many, whose, and which to let go.

The SDK keeps up to ``max_sessions`` sessions and refuses every new one past that, for as long as the old
ones stay open: one token holder could fill the table and lock everybody else out. This table sits in
front: it knows each session's principal, when it was last used and whether a request of it is in flight,
and before a new session opens it picks one to end — the principal's own idlest when it already holds its
share, else the idlest of all — so a newcomer is refused only when every session is busy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio


@dataclass
class Session:
    principal: str
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    """POST requests of the session still being handled (a long-lived GET stream does not count)."""
    settled: anyio.Event = field(default_factory=anyio.Event)
    """Set whenever ``in_flight`` falls to zero."""


class SessionTable:
    """Every session the guard saw opened and not yet closed. A session id it does not know is not served:
    the client either made it up, or the session ended (a DELETE, an idle timeout, a restart)."""

    def __init__(self, *, limit: int, per_principal: int, idle_s: float) -> None:
        self.limit = limit
        self.per_principal = per_principal
        self.idle_s = idle_s
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def owner(self, session_id: str) -> str | None:
        found = self._sessions.get(session_id)
        return found.principal if found is not None else None

    def opened(self, session_id: str, principal: str) -> None:
        self._sessions[session_id] = Session(principal)

    def closed(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def started(self, session_id: str) -> None:
        found = self._sessions.get(session_id)
        if found is not None:
            found.in_flight += 1
            found.last_used = time.monotonic()
            if found.settled.is_set():
                found.settled = anyio.Event()

    def finished(self, session_id: str) -> None:
        found = self._sessions.get(session_id)
        if found is not None:
            found.in_flight = max(0, found.in_flight - 1)
            found.last_used = time.monotonic()
            if found.in_flight == 0:
                found.settled.set()

    async def settle(self, session_id: str, limit_s: float) -> None:
        """Wait (at most ``limit_s``) until the session's requests already handed on have been handled.

        A client that cancels a call and then ends the session sends a notification and a DELETE at once;
        the SDK answers a notification before it passes it to the session, so ending the session first would
        leave the notification to a closed session (the SDK raises there). A call still running when the
        time is up ends with its session.
        """
        found = self._sessions.get(session_id)
        if found is not None and found.in_flight > 0:
            with anyio.move_on_after(limit_s):
                await found.settled.wait()

    def to_end(self, principal: str) -> tuple[str | None, bool]:
        """(session to end first, room) before ``principal`` opens a new session.

        ``room`` is False when the table is full of busy sessions: the new one must be refused.
        """
        self._forget_idle()
        own = [(sid, s) for sid, s in self._sessions.items() if s.principal == principal]
        if len(own) >= self.per_principal:
            return self._idlest(own)
        if len(self._sessions) >= self.limit:
            return self._idlest(list(self._sessions.items()))
        return None, True

    def _forget_idle(self) -> None:
        """Sessions idle past the SDK's own timeout have ended there: drop them here too."""
        cutoff = time.monotonic() - self.idle_s
        for sid in [sid for sid, s in self._sessions.items() if s.in_flight == 0 and s.last_used < cutoff]:
            del self._sessions[sid]

    @staticmethod
    def _idlest(candidates: list[tuple[str, Session]]) -> tuple[str | None, bool]:
        idle = [(sid, s) for sid, s in candidates if s.in_flight == 0]
        if not idle:
            return None, False
        return min(idle, key=lambda pair: pair[1].last_used)[0], True
