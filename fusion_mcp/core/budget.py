"""The output budget: panel answers trimmed evenly so that a tool result fits ``FUSION_MAX_OUTPUT_CHARS``.

Hosts hand their model either the text block or ``structuredContent`` (Codex and Claude Code pass the
latter, as JSON), so both are held to the budget, each measured as the host receives it: the markdown's
characters, and the compact JSON's. Only answers are trimmed — the analysis, failures, sources and usage
never are — each trimmed answer is marked (``trimmed``, ``full_chars``, ``full_answer_at``) and points to
``fusion://runs/{run_id}``, where the run history keeps it whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .models import FusionResult, PanelResponse

MIN_SHARE = 400
"""Characters every answer keeps however tight the budget: enough to tell what it says."""
WORD_BACKOFF = 80
"""A cut moves back to the last space when one is this close: answers end on a whole word."""

Measure = Callable[[FusionResult], int]
"""The size of a whole result as the host receives it."""
Cost = Callable[[str], int]
"""What one answer's text adds to that size."""


def fit(result: FusionResult, max_chars: int | None, measure: Measure, cost: Cost = len) -> FusionResult:
    """``result`` with its answers trimmed evenly so that ``measure`` stays within ``max_chars``.

    A short answer keeps all of itself and leaves its unused share to the long ones. Every answer keeps at
    least :data:`MIN_SHARE`, so a budget too small for that is exceeded rather than emptying answers.
    """
    if max_chars is None or not result.responses or measure(result) <= max_chars:
        return result
    uri = f"fusion://runs/{result.run_id}"
    # Room left by everything else, counted as if every answer carried its trim marks (the worst case).
    bare = [_marked(r, "", uri) for r in result.responses]
    room = max_chars - measure(result.model_copy(update={"responses": bare}))
    allowed = shares([cost(r.content) for r in result.responses], room, MIN_SHARE)
    responses = [_trim(r, share, cost, uri) for r, share in zip(result.responses, allowed, strict=True)]
    return result.model_copy(update={"responses": responses})


def fit_json(result: FusionResult, max_chars: int | None) -> FusionResult:
    """:func:`fit` for ``structuredContent``: measured as compact JSON, the way hosts pass it to a model."""
    return fit(result, max_chars, json_size, _json_cost)


def fit_json_data(result: FusionResult, max_chars: int | None) -> dict[str, Any]:
    """:func:`fit_json`'s result as its JSON data (``structuredContent``): one that fits is serialised once,
    not once to be measured and again to be sent."""
    data = result.to_json()
    if max_chars is None or _compact_size(data) <= max_chars:
        return data
    return fit_json(result, max_chars).to_json()


def json_size(result: FusionResult) -> int:
    return _compact_size(result.to_json())


def _compact_size(data: dict[str, Any]) -> int:
    return len(json.dumps(data, ensure_ascii=False, separators=(",", ":")))


def _json_cost(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False)) - 2


def shares(sizes: list[int], room: int, floor: int) -> list[int]:
    """Split ``room`` evenly among items of ``sizes``; an item needing less than its share frees the rest.

    Every item that does not fit whole gets the same share (never below ``floor``).
    """
    allowed = [0] * len(sizes)
    left = max(0, room)
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    for done, i in enumerate(order):
        level = max(left // (len(sizes) - done), floor)
        if sizes[i] > level:
            for j in order[done:]:
                allowed[j] = level
            break
        allowed[i] = sizes[i]
        left = max(0, left - sizes[i])
    return allowed


def _trim(response: PanelResponse, share: int, cost: Cost, uri: str) -> PanelResponse:
    content = response.content
    if cost(content) <= share:
        return response
    # The longest prefix within the share (escaping makes JSON cost more than one per character).
    low, high = 0, min(len(content), share)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if cost(content[:middle]) <= share else (low, middle - 1)
    kept = content[:low]
    space = kept.rfind(" ")
    if space >= len(kept) - WORD_BACKOFF and space > 0:
        kept = kept[:space]
    return _marked(response, kept, uri)


def _marked(response: PanelResponse, kept: str, uri: str) -> PanelResponse:
    return response.model_copy(
        update={"content": kept, "trimmed": True, "full_chars": len(response.content), "full_answer_at": uri}
    )
