"""What a model id may look like, for settings and call arguments alike."""

from __future__ import annotations

from typing import Any

from .limits import MAX_MODEL_ID_CHARS

MODEL_ID_RULE = "one model id"


def check_model_id(value: Any) -> str:
    """A model id is one non-blank token: ``author/slug``, an alias like ``~openai/gpt-latest``, a local name.

    Raises ``ValueError`` saying what is wrong with this value (the caller adds which argument and its rule).
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a model id is empty")
    value = value.strip()
    if any(c.isspace() for c in value) or len(value) > MAX_MODEL_ID_CHARS:
        raise ValueError(f"{value[:60]!r} is not a model id")
    return value
