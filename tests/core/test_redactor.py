"""The redactor's shortcut (one serialisation and a search, no walk, when no secret is in a value) against the
walk itself: on generated JSON-like values with secrets planted in every form, in keys and values, beside
non-ASCII, escapes and control characters, both give the same value."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fusion_mcp.core.errors import REDACTED, Redactor, _walk, secret_forms

SECRETS = ('sk-or-v1-abc/"quoted"\\slash-é-日本', "plain-secret-0123456789")
REDACTOR = Redactor(SECRETS)
FORMS = [f for s in SECRETS for f in secret_forms(s)]

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
planted = st.builds(lambda a, f, b: a + f + b, text, st.sampled_from(FORMS), text)
strings = st.one_of(text, planted)
values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), strings),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(strings, inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_the_shortcut_gives_what_the_walk_gives(value: Any) -> None:
    assert REDACTOR.value(value) == _walk(value, REDACTOR)


def test_a_secret_in_any_form_is_found_in_the_json_text_and_replaced() -> None:
    for form in FORMS:
        value = {"error": {"message": f"you sent {form}!"}, form: [form]}
        assert REDACTOR.value(value) == {"error": {"message": f"you sent {REDACTED}!"}, REDACTED: [REDACTED]}


def test_values_without_a_secret_come_back_as_they_are() -> None:
    value = {"answer": "nothing secret here", "n": [1, 2.5, None, True]}
    assert REDACTOR.value(value) is value


@settings(max_examples=300, deadline=None)
@given(values)
def test_compact_text_reads_back_as_the_walked_value(value: Any) -> None:
    text = REDACTOR.compact(value)
    assert json.loads(text) == json.loads(json.dumps(_walk(value, REDACTOR)))
    assert not any(form in text for form in FORMS)


def test_compact_text_with_a_lone_surrogate_is_written_escaped_and_still_redacted() -> None:
    value = {"answer": f"broken \ud800 stream {SECRETS[1]}"}
    text = REDACTOR.compact(value)
    assert text == json.dumps({"answer": f"broken \ud800 stream {REDACTED}"})
    assert "\\ud800" in text and SECRETS[1] not in text
