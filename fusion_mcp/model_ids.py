"""What a model id may look like, for settings and call arguments alike."""

from __future__ import annotations

from typing import Any

from .limits import MAX_MODEL_ID_CHARS, MAX_PANEL

MODEL_ID_RULE = "one model id"
PANEL_RULE = f"1-{MAX_PANEL} unique model ids"


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


def check_model_ids(value: Any) -> tuple[str, ...]:
    """Validate a panel: 1-8 unique, non-blank model ids, from a list or a comma-separated string."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple):
        raise ValueError("not a list of model ids")
    ids = tuple(check_model_id(v) for v in value)
    if not 1 <= len(ids) <= MAX_PANEL:
        raise ValueError(f"{len(ids)} model ids given")
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{', '.join(duplicates)} appears more than once")
    return ids
