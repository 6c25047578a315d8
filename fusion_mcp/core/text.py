"""Text that reaches a person or a model from somewhere else, made short and single-line."""

from __future__ import annotations


def one_line(text: str, limit: int, ellipsis: str = "...") -> str:
    """``text`` with its whitespace collapsed to single spaces, cut to ``limit`` characters plus ``ellipsis``."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + ellipsis


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 answer``, ``3 answers``."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"


def number(value: float) -> str:
    """A bound as a person reads it: ``16``, ``0.01``, ``3,600``, ``1,000,000``."""
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"
