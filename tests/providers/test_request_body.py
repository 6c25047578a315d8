"""A request's JSON is written by pydantic's encoder: the same document httpx2's ``json=`` sends, and the same
failure where that one fails."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusion_mcp.providers.client import json_body

# What a chat request holds: text (any Unicode a model or a page can produce), numbers, flags, nesting.
TEXT = st.text(st.characters(exclude_categories=("Cs",)))
LEAVES = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | TEXT
FLOATS = st.floats(allow_nan=False, allow_infinity=False)


def bodies(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(
        TEXT, st.recursive(leaves, lambda inner: st.lists(inner) | st.dictionaries(TEXT, inner), max_leaves=30)
    )


def httpx2_json(body: dict[str, Any]) -> bytes:
    return httpx2.Request("POST", "http://127.0.0.1/", json=body).read()


@given(bodies(LEAVES))
def test_the_body_is_the_bytes_httpx2_would_send(body: dict[str, Any]) -> None:
    assert json_body(body) == httpx2_json(body)


@given(bodies(LEAVES | FLOATS))
def test_numbers_read_back_the_same(body: dict[str, Any]) -> None:
    """A float may be spelled otherwise (``1e-5`` for ``1e-05``): the same number either way."""
    assert json.loads(json_body(body)) == json.loads(httpx2_json(body)) == body


def test_non_ascii_is_sent_as_utf8_as_httpx2_sends_it() -> None:
    body = {"messages": [{"role": "user", "content": "naïve café — 東京 😀 \u2028"}]}
    assert json_body(body) == httpx2_json(body)


def test_a_lone_surrogate_fails_as_httpx2_fails() -> None:
    body = {"messages": [{"role": "assistant", "content": "half a pair: \ud800"}]}
    with pytest.raises(UnicodeEncodeError) as ours:
        json_body(body)
    with pytest.raises(UnicodeEncodeError) as theirs:
        httpx2_json(body)
    assert str(ours.value) == str(theirs.value)
