"""Which ``failure_reason`` a panel that gave no answer gets, decided from its members' errors alone."""

from __future__ import annotations

import pytest

from fusion_mcp.core.errors import BadResponse, ConnectionFailed, HTTPStatusError, UpstreamError
from fusion_mcp.engine.panel import panel_failure


def status(code: int, message: str = "", error_code: str | None = None) -> HTTPStatusError:
    return HTTPStatusError(message or f"HTTP {code}: x", status_code=code, code=error_code)


@pytest.mark.parametrize(
    ("errors", "reason", "message"),
    [
        (
            [status(402, "HTTP 402: insufficient credits: none"), status(500, "HTTP 500: boom")],
            "insufficient_credits",
            "the provider reports insufficient credits: HTTP 402: insufficient credits: none; HTTP 500: boom",
        ),
        (
            [status(429, "HTTP 429: slow down")] * 3,
            "rate_limited",
            "every panel model was rate limited: HTTP 429: slow down",
        ),
        (
            [status(429, "HTTP 429: a"), status(503, "HTTP 503: b")],
            "all_panels_failed",
            "all panel models failed: HTTP 429: a; HTTP 503: b",
        ),
        (
            [
                status(404, "HTTP 404: no such model", "model_not_found"),
                status(400, "HTTP 400: bad", "model_not_found"),
            ],
            "invalid_model",
            "no panel model id is known to the provider: HTTP 404: no such model; HTTP 400: bad",
        ),
        (
            [status(404, "HTTP 404: nope", "model_not_found"), ConnectionFailed("could not connect")],
            "all_panels_failed",
            "all panel models failed: HTTP 404: nope; could not connect",
        ),
        (
            [BadResponse("the provider's answer has no choices"), UpstreamError("the model failed: refused")],
            "all_panels_failed",
            "all panel models failed: the provider's answer has no choices; the model failed: refused",
        ),
        ([status(500), None], "all_panels_failed", "no panel model answered within the deadline"),
        ([None, None], "all_panels_failed", "no panel model answered within the deadline"),
    ],
)
def test_the_shared_cause_is_named_else_all_panels_failed(
    errors: list[UpstreamError | None], reason: str, message: str
) -> None:
    assert panel_failure(errors) == (reason, message)
