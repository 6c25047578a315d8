"""One hierarchy for everything that can go wrong upstream, mapped once to result fields.

Callers catch :class:`UpstreamError` and read ``status_code``, ``retryable`` and a message a person can
read; nothing above the provider client parses HTTP bodies.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


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


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in ``text``; upstream bodies sometimes echo the key they were sent."""
    for secret in secrets:
        if len(secret) >= MIN_SECRET_CHARS and secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_value(value: Any, secrets: Iterable[str]) -> Any:
    """``value`` (JSON-like: dicts, lists, strings...) with every secret replaced in every string, keys too.

    Redacting values before they are serialised means escaping cannot hide a secret: one with a quote, a
    backslash or non-ASCII characters looks different in JSON text, but not in the string it came from.
    """
    secrets = [s for s in secrets if len(s) >= MIN_SECRET_CHARS]
    if not secrets:
        return value
    return _walk(value, secrets)


def _walk(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {_walk(k, secrets): _walk(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, secrets) for v in value]
    return value


class EmptyAnswer(BadResponse):
    """The model finished without any text (and without a tool call it could still make)."""
