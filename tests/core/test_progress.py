"""Progress events: one wording per kind, built from the fields the terminal draws from."""

from __future__ import annotations

import pytest

from fusion_mcp.core.progress import ProgressEvent

PANEL = ("a/x", "b/y", "c/z")


@pytest.mark.parametrize(
    ("kind", "fields", "message"),
    [
        ("queued", {"running": 1}, "waiting for a run slot: 1 run in progress"),
        ("queued", {"running": 32}, "waiting for a run slot: 32 runs in progress"),
        ("started", {"model": "j/x"}, "fusion started: panel of 3 (a/x, b/y, c/z), analyst j/x"),
        ("tool", {"model": "b/y", "tool": "web_search", "used": 2, "budget": 8}, "b/y: web_search 2/8"),
        ("member_answered", {"model": "b/y", "answered": 2}, "2/3 answered: b/y in 1.5 s"),
        ("member_failed", {"model": "c/z", "error": "HTTP 502: down"}, "c/z failed after 1.5 s: HTTP 502: down"),
        ("member_cut", {"model": "a/x", "kept": 1}, "a/x cut off at the deadline after 1.5 s (kept 1 character)"),
        ("member_cut", {"model": "a/x", "kept": 0}, "a/x cut off at the deadline after 1.5 s (nothing to keep)"),
        ("analyst_started", {"model": "j/x", "answered": 1}, "analyst j/x is comparing 1 answer"),
        ("analyst_started", {"model": "j/x", "answered": 2}, "analyst j/x is comparing 2 answers"),
        ("analyst_done", {"model": "j/x", "duration": 0.84}, "analysis ready (0.8 s)"),
        ("analyst_done", {"model": "j/x", "error": "no JSON", "duration": 2}, "analysis failed: no JSON (2.0 s)"),
    ],
)
def test_each_kind_has_one_wording(kind: str, fields: dict[str, object], message: str) -> None:
    event = ProgressEvent(kind, 1.0, 5, 1.5, panel=PANEL, **fields)  # type: ignore[arg-type]
    assert event.message == message
