"""Who is signed in to the lab: sessions, their CSRF tokens, sign-in attempts, one-time tokens.

A browser signs in with its principal's bearer token (``FUSION_HTTP_TOKEN(S)``; who a token is, is
:func:`~fusion_mcp.core.callers.token_principal`'s rule, the guard's) or with a one-time token that
``fusion-mcp lab`` (or a server without tokens) prints; either is exchanged for a random session id in a cookie.
Sessions live in this process's memory, each with an absolute expiry and a CSRF token every form carries.
Failed sign-ins are counted per client address: past :data:`MAX_FAILURES` in :data:`FAILURE_WINDOW_S`, the
address is refused until the window has passed, even with a right token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.callers import token_principal

SESSION_S = 8 * 3600.0
"""How long a session lasts from its sign-in (then the browser signs in again)."""
MAX_SESSIONS = 1000
"""Sessions held at once; a new one past it ends the one closest to its expiry."""
MAX_FAILURES = 5
FAILURE_WINDOW_S = 60.0
MAX_ADDRESSES = 10_000
"""Client addresses whose failures are remembered; past it the oldest are forgotten."""
ONE_TIME_S = 3600.0
"""How long a one-time token may wait for its use."""


@dataclass
class Session:
    principal: str
    csrf: str
    expires: float


@dataclass
class _Failures:
    times: list[float] = field(default_factory=list)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class SignIns:
    """The lab's sessions and sign-in rules for one process."""

    def __init__(self, principals: dict[str, str], clock: Callable[[], float] = time.time) -> None:
        """``principals``: each server token and its holder (``Settings.principals``)."""
        self._principals = [(token.encode(), name) for token, name in principals.items()]
        self._sessions: dict[str, Session] = {}
        self._failures: dict[str, _Failures] = {}
        self._once: dict[bytes, tuple[str, float]] = {}
        self._clock = clock

    @property
    def has_tokens(self) -> bool:
        return bool(self._principals)

    def one_time(self, principal: str) -> str:
        """A new token that signs one browser in as ``principal``, once, within :data:`ONE_TIME_S`."""
        token = secrets.token_urlsafe(32)
        self._once[_digest(token)] = (principal, self._clock() + ONE_TIME_S)
        return token

    def wait_s(self, address: str) -> float:
        """Seconds until ``address`` may try again (0: it may now)."""
        now = self._clock()
        failures = self._failures.get(address)
        if failures is None:
            return 0.0
        failures.times = [t for t in failures.times if t > now - FAILURE_WINDOW_S]
        if len(failures.times) < MAX_FAILURES:
            return 0.0
        return max(0.0, failures.times[0] + FAILURE_WINDOW_S - now)

    def redeem(self, token: str, address: str) -> str | None:
        """The principal a one-time ``token`` signs in (spending it), or None, counted as a failure of ``address``.
        Never a bearer token: a link can carry only what signs in once (a link carrying someone's bearer token
        would sign its victim in as them, and file the victim's questions under their name)."""
        once = self._once.pop(_digest(token), None) if token else None
        if once is not None and once[1] > self._clock():
            return once[0]
        self._failed(address)
        return None

    def sign_in(self, token: str, address: str) -> str | None:
        """The principal ``token`` signs in (a one-time token is spent by it), or None, counted as a failure of
        ``address``. Call :meth:`wait_s` first: a rate-limited address must not try at all."""
        once = self._once.pop(_digest(token), None)
        if once is not None and once[1] > self._clock():
            return once[0]
        principal = token_principal(token.encode(), self._principals) if token else None
        if principal is None:
            self._failed(address)
        return principal

    def _failed(self, address: str) -> None:
        if address not in self._failures and len(self._failures) >= MAX_ADDRESSES:
            del self._failures[next(iter(self._failures))]
        self._failures.setdefault(address, _Failures()).times.append(self._clock())

    def open(self, principal: str) -> str:
        """A new session of ``principal``: its id, for the cookie."""
        now = self._clock()
        self._sessions = {k: v for k, v in self._sessions.items() if v.expires > now}
        self._once = {k: v for k, v in self._once.items() if v[1] > now}
        if len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[min(self._sessions, key=lambda k: self._sessions[k].expires)]
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = Session(principal, secrets.token_urlsafe(32), now + SESSION_S)
        return session_id

    def session(self, session_id: str | None) -> Session | None:
        """The live session of this id, or None (unknown, ended, or expired)."""
        if not session_id:
            return None
        found = self._sessions.get(session_id)
        if found is None or found.expires <= self._clock():
            self._sessions.pop(session_id, None)
            return None
        return found

    def close(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)


def same_token(given: str | None, expected: str) -> bool:
    """A form's CSRF token against its session's, in constant time."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
