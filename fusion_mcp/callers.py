"""Who calls over HTTP: the principal the guard found, and the caller's own provider key when it lends one.

The HTTP guard (:mod:`~fusion_mcp.http_app`) authenticates every request and writes what it found into the
ASGI scope, where front ends read it; a client cannot set scope keys. A caller's own key (with
``FUSION_PASS_THROUGH_KEY``) lives there only for the request: it is never logged, stored or echoed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from pydantic import SecretStr

from .config import LOCAL_PRINCIPAL

PRINCIPAL_KEY = "fusion.principal"
"""Where the HTTP guard puts the caller's principal in the ASGI scope (stdio and in-memory callers are local)."""
UPSTREAM_KEY = "fusion.upstream_key"
"""Where the HTTP guard puts a caller's own provider key (a :class:`SecretStr`), when it may be used upstream."""
OPENROUTER_KEY_PREFIX = "sk-or-"


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


def forwardable_key(authorization: bytes, *, openrouter: bool) -> str | None:
    """The caller's bearer when it may be a provider key: any value elsewhere, ``sk-or-...`` for OpenRouter.

    On OpenRouter the prefix keeps a mistyped server token (or a client's placeholder key) from being sent
    to the provider as if it were an account's key.
    """
    key = bearer(authorization)
    if key is None or (openrouter and not key.startswith(OPENROUTER_KEY_PREFIX)):
        return None
    return key
