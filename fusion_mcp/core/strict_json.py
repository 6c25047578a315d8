"""JSON from outside, read strictly: only values that can go on anywhere.

Python's :func:`json.loads` takes ``NaN``, ``Infinity`` and ``1e400`` (as infinity), and strings with lone
surrogates (``"\\ud800"``). None of them can be sent on: a provider's JSON has no NaN, and a lone surrogate
cannot be encoded as UTF-8 — so a request carrying one would fail later, deep inside, as a server error.
:func:`loads` refuses them where the text is read, naming the field (``messages[0].content``) so the
caller can fix it.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_SHOWN_PATH = 200


class JSONValueError(ValueError):
    """A value JSON allows but nothing downstream can carry; ``field`` names where it is (``""``: the top)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field or 'the body'}: {detail}")
        self.field = field
        self.detail = detail


class _NotFinite:
    def __init__(self, text: str) -> None:
        self.text = text


def as_object(value: object) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one: for reading optional parts of a reply."""
    return value if isinstance(value, dict) else {}


def as_array(value: object) -> list[Any]:
    """``value`` when it is a JSON array, else an empty one."""
    return value if isinstance(value, list) else []


def _constant(text: str) -> _NotFinite:
    return _NotFinite(text)


def _float(text: str) -> float | _NotFinite:
    value = float(text)
    return value if math.isfinite(value) else _NotFinite(text)


def loads(data: bytes | str) -> Any:
    """The JSON document ``data``; ``ValueError`` when it is not JSON, :class:`JSONValueError` (a ValueError
    too) naming the first value that is not a finite number or a string of Unicode characters."""
    value = json.loads(data, parse_constant=_constant, parse_float=_float)
    _check(value, "")
    return value


def _check(value: Any, path: str) -> None:
    # A loop, not recursion: the parser's own nesting limit is the only one a hostile body should meet.
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            _text(item, where)
        elif isinstance(item, _NotFinite):
            raise JSONValueError(where[:MAX_SHOWN_PATH], f"{item.text[:40]} is not a finite number")
        elif isinstance(item, dict):
            for key in item:
                _text(key, where, key=True)
            # Reversed onto the stack, so the first bad value in the document is the one named.
            stack.extend((item[key], f"{where}.{key}" if where else key) for key in reversed(item))
        elif isinstance(item, list):
            stack.extend((item[i], f"{where}[{i}]") for i in reversed(range(len(item))))


def lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (JSON's ``"\\ud800"``, or a non-UTF-8 byte of a command line, which
    Python decodes as one): such text cannot be encoded as UTF-8, so it cannot be sent anywhere."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _text(text: str, where: str, *, key: bool = False) -> None:
    if lone_surrogate(text):
        what = "a key" if key else "the string"
        raise JSONValueError(
            where[:MAX_SHOWN_PATH], f"{what} holds a lone surrogate (\\ud800-\\udfff), which is not a character"
        ) from None
