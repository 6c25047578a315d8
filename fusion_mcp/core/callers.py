"""Who calls over HTTP: the principal the guard found, and the caller's own provider key when it lends one.

The HTTP guard (:mod:`~fusion_mcp.http.guard`) authenticates every request and writes what it found into
the ASGI scope, where front ends read it; a client cannot set scope keys. A caller's own key (with
``FUSION_PASS_THROUGH_KEY``) lives there only for the request: it is never logged, stored or echoed.

Who a bearer is, on every path alike (``/mcp`` and the OpenAI-compatible routes): with pass-through on, a
bearer that starts with the lent-key prefix is a provider key and its holder a ``key:`` principal; any
other bearer must be a server token (no token may start with the prefix: checked at start).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from pydantic import SecretStr

from .limits import MIN_TOKEN_CHARS

DEPTH_HEADER = "x-openrouter-fusion-depth"
"""The fusion depth a request comes with (read by admission) and goes on with (sent by the provider client):
a fusion server asked by another one refuses to fuse, so servers calling each other cannot fan out."""
LOCAL_PRINCIPAL = "local"
"""Who calls when no token is asked for: the stdio host, ``ask``, an HTTP client of a server without tokens."""
DEFAULT_PRINCIPAL = "default"
"""Who holds ``FUSION_HTTP_TOKEN`` (the one unnamed token)."""

PRINCIPAL_KEY = "fusion.principal"
"""Where the HTTP guard puts the caller's principal in the ASGI scope (stdio and in-memory callers are local)."""
UPSTREAM_KEY = "fusion.upstream_key"
"""Where the HTTP guard puts a caller's own provider key (a :class:`SecretStr`), when it may be used upstream."""
BODY_KEY = "fusion.body"
"""Where the HTTP guard puts a chat request's body, parsed once (strictly: see :mod:`~fusion_mcp.core.strict_json`)."""


def _scope(request: object | None) -> Mapping[str, object]:
    scope = getattr(request, "scope", request)
    return scope if isinstance(scope, Mapping) else {}


def principal_of(request: object | None) -> str:
    """The principal the HTTP guard found for this request (or ASGI scope); ``local`` without one."""
    name = _scope(request).get(PRINCIPAL_KEY)
    return name if isinstance(name, str) else LOCAL_PRINCIPAL


def upstream_key_of(request: object | None) -> SecretStr | None:
    """The caller's own provider key for this request (or ASGI scope), when the guard accepted one."""
    key = _scope(request).get(UPSTREAM_KEY)
    return key if isinstance(key, SecretStr) else None


def key_principal(key: str) -> str:
    """The principal of a caller known only by its provider key: ``key:`` and a fingerprint, never the key.

    The colon cannot appear in a configured principal's name, so no token holder can pose as a key holder.
    """
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def bearer(authorization: bytes) -> str | None:
    """The credential of an ``Authorization: Bearer ...`` header, or None."""
    scheme, _, credential = authorization.partition(b" ")
    value = credential.strip().decode("latin-1")
    return value if scheme.lower() == b"bearer" and value else None


def token_principal(credential: bytes, principals: list[tuple[bytes, str]]) -> str | None:
    """The principal whose server token ``credential`` is (``principals``: each token and its holder), or None.

    Every token is compared, in constant time, so the timing says nothing about which one nearly matched. The
    guard checks bearers with it, and the lab its sign-in form: one rule for who a token is.
    """
    found = None
    for token, name in principals:
        if hmac.compare_digest(credential.strip(), token):
            found = name
    return found


MAX_KEY_CHARS = 512
LENT_KEY_RULE = f"printable ASCII without spaces, {MIN_TOKEN_CHARS} to {MAX_KEY_CHARS} characters"
"""What a lent key must be: it travels in a header, and a short one could not be told apart in text (redaction)."""


def lent_key(credential: str | None, prefix: str | None) -> str | None:
    """The bearer ``credential`` when it is a caller's own provider key: it starts with ``prefix`` (the
    operator's ``FUSION_PASS_THROUGH_KEY_PREFIX``, ``sk-or-`` on OpenRouter). None for every other bearer,
    which then must be a server token: a bearer that failed the token check is never sent to the provider.

    Raises ``ValueError`` for a key that could never be sent in a header (see :data:`LENT_KEY_RULE`).
    """
    if prefix is None or credential is None or not credential.startswith(prefix):
        return None
    if not MIN_TOKEN_CHARS <= len(credential) <= MAX_KEY_CHARS or not all(" " < c < "\x7f" for c in credential):
        raise ValueError(LENT_KEY_RULE)
    return credential
