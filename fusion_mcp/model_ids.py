"""What a model id may look like, for settings and call arguments alike.

One strict grammar, what OpenRouter, Ollama and vLLM ids look like (``openai/gpt-5``,
``~anthropic/claude-opus-latest``, ``llama3:8b``, ``meta-llama/Llama-3.1-8B-Instruct``,
``org/model@v2``, ``model+tag``): letters, digits and ``~ / . _ - : @ +``, no empty, ``.`` or ``..``
segment between slashes, and a bounded length. Ids reach URL paths (the catalogue's ``/model/{id}``) and
request bodies; the grammar keeps a caller from steering either (``~x/../../internal/admin?dump=1#``).
"""

from __future__ import annotations

import re
from typing import Any

from .limits import MAX_MODEL_ID_CHARS, MAX_PANEL

MODEL_ID_RULE = (
    f"one model id: up to {MAX_MODEL_ID_CHARS} letters, digits and ~ / . _ - : @ + (no empty, . or .. part "
    "between slashes)"
)
PANEL_RULE = f"1-{MAX_PANEL} unique model ids"
_ID = re.compile(r"[A-Za-z0-9~/._:@+-]+")


def check_model_id(value: Any) -> str:
    """A model id, stripped; raises ``ValueError`` saying what is wrong with this value (never echoing more
    than a short, printable head of it)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a model id is empty")
    value = value.strip()
    shown = ascii(value[:60])
    if len(value) > MAX_MODEL_ID_CHARS:
        raise ValueError(f"{shown} is longer than {MAX_MODEL_ID_CHARS} characters")
    if not _ID.fullmatch(value):
        bad = next(c for c in value if not _ID.fullmatch(c))
        raise ValueError(f"{shown} has the character {bad!r}, which no model id has")
    if any(part in ("", ".", "..") for part in value.split("/")):
        raise ValueError(f"{shown} has an empty, '.' or '..' part between slashes")
    return value


def check_model_ids(value: Any) -> tuple[str, ...]:
    """Validate a panel: 1-8 unique model ids, from a list or a comma-separated string."""
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
