"""The chat-completions client against the loopback simulator: SSE, JSON, retries, typed errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fusion_mcp.config import Settings, load_settings
from fusion_mcp.core.errors import BadResponse, ConnectionFailed, HTTPStatusError, UpstreamError
from fusion_mcp.providers.client import MAX_RESPONSE_BYTES, Provider, new_http_client
from tests.conftest import API_KEY, sim_env
from tests.fakes.provider_sim import DEFAULT_USAGE, ProviderSim, Reply

pytestmark = pytest.mark.anyio
M = "~openai/gpt-latest"


def body(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": M,
        "messages": [{"role": "user", "content": "q"}],
        "max_completion_tokens": 10,
        "stream": stream,
        **extra,
    }


async def complete(settings: Settings, request: dict[str, Any], depth: int = 0):
    async with new_http_client() as http:
        return await Provider(http, settings, depth=depth).complete(request)


async def test_sse_skips_keepalives_and_reads_the_final_usage_chunk(sim: ProviderSim, settings: Settings) -> None:
    sim.script(M, Reply(content="one two three four five six seven", keepalives=3))
    out = await complete(settings, body(stream=True))
    assert out.content == "one two three four five six seven"
    assert out.model == "openai/gpt-20261101" and out.finish_reason == "stop"
    assert (
        out.usage.prompt_tokens == 100 and out.usage.reasoning_tokens == 7 and out.usage.cost == DEFAULT_USAGE["cost"]
    )


async def test_sse_tool_calls_are_assembled_from_pieces(sim: ProviderSim, settings: Settings) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "web_search", "arguments": '{"query": "x y"}'}}
    sim.script(M, Reply(content="", tool_calls=[call]))
    out = await complete(settings, body(stream=True))
    assert [(c.id, c.name, json.loads(c.arguments)) for c in out.tool_calls] == [("c1", "web_search", {"query": "x y"})]
    assert out.finish_reason == "tool_calls"


async def test_json_answer_and_headers(sim: ProviderSim, settings: Settings) -> None:
    out = await complete(settings, body(), depth=2)
    assert out.content == f"Answer from {M}: the answer is 42."
    (req,) = sim.requests
    assert req.headers["authorization"] == f"Bearer {API_KEY}"
    assert req.headers["x-openrouter-fusion-depth"] == "3"
    assert req.headers["x-title"] == "fusion-mcp" and req.headers["http-referer"].startswith("https://")


async def test_no_authorization_header_without_a_key(sim: ProviderSim) -> None:
    env = sim_env(sim)
    del env["OPENROUTER_API_KEY"]
    await complete(load_settings(environ=env), body())
    assert "authorization" not in sim.requests[0].headers


async def test_mid_stream_error_keeps_the_text_that_came_before(sim: ProviderSim, settings: Settings) -> None:
    sim.script(M, Reply(content="partial answer here", stream_error="provider crashed"))
    with pytest.raises(UpstreamError) as info:
        await complete(settings, body(stream=True))
    assert info.value.message == "the stream ended with an error: provider crashed"
    assert info.value.partial == "partial answer here" and info.value.status_code == 502
    assert len(sim.requests) == 1  # text already arrived: not retried


async def test_stream_cut_off_before_the_end(sim: ProviderSim, settings: Settings) -> None:
    chunk = {"choices": [{"index": 0, "delta": {"content": "half"}, "finish_reason": None}]}
    sim.script(M, Reply(raw=f"data: {json.dumps(chunk)}\n\n".encode(), content_type="text/event-stream"))
    with pytest.raises(ConnectionFailed) as info:
        await complete(settings, body(stream=True))
    assert info.value.message == "the stream ended before the answer was complete" and info.value.partial == "half"


async def test_retryable_statuses_are_retried_honouring_retry_after(sim: ProviderSim, settings: Settings) -> None:
    sim.script(M, Reply(status=503, retry_after="0.05"), Reply(status=429, retry_after="0"), Reply(content="finally"))
    out = await complete(settings, body())
    assert out.content == "finally" and len(sim.requests) == 3


async def test_retries_run_out_after_two(sim: ProviderSim, settings: Settings) -> None:
    sim.script(M, Reply(status=529, retry_after="0", error_message="overloaded"))
    with pytest.raises(HTTPStatusError) as info:
        await complete(settings, body())
    assert info.value.status_code == 529 and info.value.message == "HTTP 529: overloaded"
    assert len(sim.requests) == 3


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "HTTP 400: scripted failure"),
        (401, "HTTP 401: the API key was rejected: scripted failure"),
        (402, "HTTP 402: insufficient credits: scripted failure"),
        (403, "HTTP 403: scripted failure"),
        (404, "HTTP 404: scripted failure"),
    ],
)
async def test_client_errors_are_never_retried(sim: ProviderSim, settings: Settings, status: int, message: str) -> None:
    sim.script(M, Reply(status=status))
    with pytest.raises(HTTPStatusError) as info:
        await complete(settings, body())
    assert info.value.message == message and not info.value.retryable
    assert len(sim.requests) == 1


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        (
            Reply(raw=b"<html>oops</html>", content_type="text/html"),
            BadResponse,
            "the provider answered with text/html that is not JSON: '<html>oops</html>'",
        ),
        (Reply(raw=b'{"id": "x"}'), BadResponse, "the provider's answer has no choices"),
        (Reply(raw=b'{"choices": []}'), BadResponse, "the provider's answer has no choices"),
        (Reply(raw=b"[1, 2]"), BadResponse, "the provider answered with JSON that is not an object"),
        (
            Reply(raw=b'{"error": {"code": 502, "message": "upstream died"}}'),
            UpstreamError,
            "provider error: upstream died",
        ),
        (
            Reply(raw=json.dumps({"choices": [{"error": {"message": "refused"}, "message": {}}]}).encode()),
            UpstreamError,
            "the model failed: refused",
        ),
        (Reply(raw=b"x" * (MAX_RESPONSE_BYTES + 10)), BadResponse, "the response was larger than 8 MiB"),
        (Reply(status=500, raw=b"<h1>Bad Gateway</h1>"), HTTPStatusError, "HTTP 500: <h1>Bad Gateway</h1>"),
    ],
)
async def test_upstream_garbage_becomes_a_readable_error(
    sim: ProviderSim, settings: Settings, reply: Reply, error: type[Exception], message: str
) -> None:
    sim.script(M, reply)
    with pytest.raises(error) as info:
        await complete(settings, body())
    assert str(info.value).startswith(message)


async def test_unreachable_provider_is_a_connection_failure(settings: Settings) -> None:
    dead = settings.model_copy(update={"base_url": "http://127.0.0.1:9/api/v1"})
    with pytest.raises(ConnectionFailed) as info:
        await complete(dead, body())
    assert info.value.message.startswith(
        "could not connect to the provider at http://127.0.0.1:9/api/v1/chat/completions: ConnectError"
    )


async def test_echoed_key_is_redacted(sim: ProviderSim, settings: Settings) -> None:
    sim.script(M, Reply(status=400, echo_auth=True))
    with pytest.raises(HTTPStatusError) as info:
        await complete(settings, body())
    assert API_KEY not in info.value.message and "[redacted]" in info.value.message


async def test_sse_with_crlf_line_endings_and_event_lines(sim: ProviderSim, settings: Settings) -> None:
    chunks = [
        {"model": "m", "choices": [{"index": 0, "delta": {"content": "hello "}, "finish_reason": None}]},
        {"model": "m", "choices": [{"index": 0, "delta": {"content": "world"}, "finish_reason": "stop"}]},
        {"model": "m", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    ]
    raw = ": keep-alive\r\n\r\n" + "".join(f"event: message\r\ndata: {json.dumps(c)}\r\n\r\n" for c in chunks)
    sim.script(M, Reply(raw=(raw + "data: [DONE]\r\n\r\n").encode(), content_type="text/event-stream"))
    out = await complete(settings, body(stream=True))
    assert out.content == "hello world" and out.usage.total_tokens == 5 and out.finish_reason == "stop"
