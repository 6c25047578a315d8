"""What a model id may look like, for settings and call arguments alike.

One strict grammar, what OpenRouter, Ollama and vLLM ids look like (``openai/gpt-5``,
``~anthropic/claude-opus-latest``, ``llama3:8b``, ``meta-llama/Llama-3.1-8B-Instruct``,
``org/model@v2``, ``model+tag``): letters, digits and ``~ / . _ - : @ +``, no empty, ``.`` or ``..``
segment between slashes, and a bounded length. Ids reach URL paths (the catalogue's ``/model/{id}``) and
request bodies; the grammar keeps a caller from steering either (``~x/../../internal/admin?dump=1#``).
"""

from __future__ import annotations

import re

from .limits import MAX_MODEL_ID_CHARS

MODEL_ID_RULE = (
    f"one model id: up to {MAX_MODEL_ID_CHARS} letters, digits and ~ / . _ - : @ + (no empty, . or .. part "
    "between slashes)"
)
_ID = re.compile(r"[A-Za-z0-9~/._:@+-]+")


def check_model_id(value: object) -> str:
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


PROVIDER_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
"""A provider's name in the config file (``[providers.work-openai]``) and in a model id's prefix."""
PROVIDER_NAME_RULE = "lower-case letters, digits and -, starting with a letter, up to 32 characters"
DEFAULT_PROVIDER = "default"
"""The name of the provider ``OPENROUTER_BASE_URL`` and ``OPENROUTER_API_KEY`` describe, when others are
configured: ``default:qwen3:8b`` sends an id with a colon there."""
PROVIDER_SEPARATOR = ":"


def provider_prefix(model: str) -> tuple[str, str] | None:
    """``("local", "qwen3:8b")`` for ``local:qwen3:8b``: the text before an id's first ``:`` when it could be a
    provider's name, else None.

    The rule that keeps the spellings apart: an OpenRouter id has its vendor and a ``/`` before any colon
    (``openai/gpt-5:free``, ``~anthropic/claude-opus-latest``), so its head is never a name; an Ollama id
    with a colon (``qwen3:8b``) has a head that could be one, and the router decides (a configured provider,
    a pattern, else an unknown provider). A lens (``#skeptic``) is split off before this is asked.
    """
    head, sep, rest = model.partition(PROVIDER_SEPARATOR)
    if not sep or not rest or not PROVIDER_NAME.fullmatch(head):
        return None
    return head, rest
