"""One hierarchy for everything that can go wrong upstream, mapped once to result fields.

Callers catch :class:`UpstreamError` and read ``status_code``, ``retryable`` and a message a person can
read; nothing above the provider client parses HTTP bodies.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pydantic_core


class UpstreamError(Exception):
    """A chat completion did not produce a usable answer."""

    retryable: bool = False

    def __init__(self, message: str, *, status_code: int | None = None, partial: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.partial = partial
        """Text that arrived before the failure (a stream cut short), kept for partial answers."""


class HTTPStatusError(UpstreamError):
    """The provider answered with an HTTP error status."""

    RETRYABLE = frozenset({408, 429, 502, 503, 524, 529})

    def __init__(
        self, message: str, *, status_code: int, retry_after: float | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after
        self.code = code
        self.retryable = status_code in self.RETRYABLE


class ConnectionFailed(UpstreamError):
    """The provider could not be reached, or the connection broke before an answer."""

    retryable = True


class Timeout(UpstreamError):
    """The provider did not answer in time."""

    retryable = True


class BadResponse(UpstreamError):
    """The provider answered, but not with a usable chat completion (not JSON, no choices, empty...)."""


MIN_SECRET_CHARS = 8
"""Shorter secrets are not redacted: replacing every ``x`` of a log because a test key was ``x`` hides
everything and protects nothing (no real key is that short; the command line warns about one)."""
REDACTED = "[redacted]"


def secret_forms(secret: str) -> tuple[str, ...]:
    """How ``secret`` can appear in text: as itself, and as JSON writes it inside a string (quotes and
    backslashes escaped, ``/`` as ``\\/``, non-ASCII as ``\\uXXXX``), so an echo inside a JSON document (a
    model's tool-call arguments, a provider's error body) is caught too."""
    escaped = json.dumps(secret)[1:-1]
    found = [secret, escaped, escaped.replace("/", "\\/"), json.dumps(secret, ensure_ascii=False)[1:-1]]
    return tuple(dict.fromkeys(found))


class Redactor:
    """Every secret of one way out (a process's, plus a caller's lent key), removed from text and values.

    Built once per request or run: the forms of each secret are worked out here, longest first, so a secret
    that contains another is replaced whole.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        self.forms, self._in_json, self._in_ascii_json = _forms(tuple(secrets))
        self.longest = len(self.forms[0]) if self.forms else 0

    def __bool__(self) -> bool:
        return bool(self.forms)

    def text(self, text: str) -> str:
        for form in self.forms:
            if form in text:
                text = text.replace(form, REDACTED)
        return text

    def value(self, value: Any) -> Any:
        """``value`` (JSON-like: dicts, lists, strings...) with every secret replaced in every string, keys too.

        Redacting values before they are serialised means escaping cannot hide a secret: one with a quote, a
        backslash or non-ASCII characters looks different in JSON text, but not in the string it came from.
        """
        if not self.forms:
            return value
        try:
            # Most values hold no secret: one native serialisation and a search each tell, not a walk.
            if not self.in_json(pydantic_core.to_json(value, fallback=str).decode()):
                return value
        except (TypeError, ValueError, RecursionError):  # a lone surrogate (from a model): the walk decides
            pass
        return _walk(value, self)

    def dumps(self, value: Any, *, ensure_ascii: bool = True) -> str:
        """``value`` as JSON text with every secret replaced (:meth:`value`), serialised once when it holds none."""
        text = json.dumps(value, ensure_ascii=ensure_ascii)
        forms = self._in_ascii_json if ensure_ascii else self._in_json
        if any(form in text for form in forms):
            text = json.dumps(_walk(value, self), ensure_ascii=ensure_ascii)
        return text

    def compact(self, value: Any) -> str:
        """``value`` as compact JSON text, non-ASCII unescaped, with every secret replaced (:meth:`value`).

        Written by pydantic's serialiser, several times faster than ``json.dumps``: the form records are
        stored in. A value it cannot write (a lone surrogate from a model) is written by :meth:`dumps`, which
        escapes it.
        """
        try:
            text = pydantic_core.to_json(value).decode()
        except (TypeError, ValueError, RecursionError):
            return self.dumps(value)
        if self.in_json(text):
            text = pydantic_core.to_json(_walk(value, self)).decode()
        return text

    def in_json(self, text: str) -> bool:
        """Whether a secret may be in the document whose JSON text (non-ASCII unescaped, as pydantic and
        ``json.dumps(..., ensure_ascii=False)`` write it) is ``text``: False means no string of it holds one."""
        return any(form in text for form in self._in_json)

    def stream(self) -> StreamRedactor:
        return StreamRedactor(self)


class StreamRedactor:
    """Redacts text that arrives in pieces: a secret split across two pieces is still caught.

    :meth:`feed` returns what may go out now and holds back the last ``longest - 1`` characters, where a
    secret could be starting; :meth:`flush` returns the rest once the text has ended.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._hold = max(0, redactor.longest - 1)
        self._pending = ""

    def feed(self, piece: str) -> str:
        if not self._hold:
            return piece
        text = self._redactor.text(self._pending + piece)
        cut = max(0, len(text) - self._hold)
        self._pending = text[cut:]
        return text[:cut]

    def flush(self) -> str:
        rest, self._pending = self._redactor.text(self._pending), ""
        return rest


@functools.lru_cache(maxsize=64)
def _forms(secrets: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """A :class:`Redactor`'s forms of ``secrets`` (longest first), and each as it reads inside a JSON string
    with and without non-ASCII escaped: worked out once per set of secrets, as a run makes several redactors
    of the same ones."""
    forms = tuple(
        sorted({f for s in secrets if len(s) >= MIN_SECRET_CHARS for f in secret_forms(s)}, key=len, reverse=True)
    )
    # A string that holds a form holds it so in the document's JSON text, since JSON escapes character by
    # character.
    in_json = tuple(dict.fromkeys(json.dumps(f, ensure_ascii=False)[1:-1] for f in forms))
    return forms, in_json, tuple(dict.fromkeys(json.dumps(f)[1:-1] for f in forms))


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in ``text``; upstream bodies sometimes echo the key they were sent."""
    return Redactor(secrets).text(text)


def redact_value(value: Any, secrets: Iterable[str]) -> Any:
    """``value`` with every secret replaced in every string (see :meth:`Redactor.value`)."""
    return Redactor(secrets).value(value)


def _walk(value: Any, redactor: Redactor) -> Any:
    if isinstance(value, str):
        return redactor.text(value)
    if isinstance(value, dict):
        return {_walk(k, redactor): _walk(v, redactor) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, redactor) for v in value]
    return value


_LIVE: Counter[str] = Counter()


@contextmanager
def live_secret(secret: str | None) -> Iterator[None]:
    """Count ``secret`` (a caller's lent key) as a secret of the whole process while the block runs, so the log
    filter redacts it from every line written meanwhile, whichever task writes it."""
    if secret is None:
        yield
        return
    _LIVE[secret] += 1
    try:
        yield
    finally:
        _LIVE[secret] -= 1
        if _LIVE[secret] <= 0:
            del _LIVE[secret]


def live_secrets() -> tuple[str, ...]:
    """The lent keys of the requests and runs going on now."""
    return tuple(_LIVE)


class EmptyAnswer(BadResponse):
    """The model finished without any text (and without a tool call it could still make)."""
