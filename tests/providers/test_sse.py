"""SSE as the provider may legally send it: every case over the wire from the loopback simulator.

The parser is ours (``providers/sse.py``: bytes split once; ``tests/providers/test_sse_decoder.py`` holds it to
httpx2's ``EventSource`` on generated streams); these tests pin what the provider client makes of each case,
including the size cap.
"""

from __future__ import annotations

import gc
import inspect
import json
from typing import Any

import pytest
from mcp import Client

from fusion_mcp.config import Settings, load_settings
from fusion_mcp.core.errors import BadResponse, UpstreamError
from fusion_mcp.mcp_server.server import create_server
from fusion_mcp.providers.client import MAX_RESPONSE_BYTES, Provider, new_http_client
from tests.conftest import PANEL, sim_env
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import TOOL, structured

pytestmark = pytest.mark.anyio
M = "~openai/gpt-latest"


def chunk(text: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {"content": text} if text is not None else {}
    return {"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


USAGE = {"model": "m", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


async def stream(settings: Settings) -> Any:
    request = {"model": M, "messages": [{"role": "user", "content": "q"}], "stream": True}
    async with new_http_client() as http:
        return await Provider(http, settings).complete(request)


def multi_line(data: dict[str, Any]) -> str:
    """One event whose JSON is spread over several ``data:`` lines (joined with newlines, still valid JSON)."""
    lines = json.dumps(data, indent=1).splitlines()
    return "".join(f"data: {line}\n" for line in lines) + "\n"


async def test_events_whose_data_spans_several_lines(sim: ProviderSim, settings: Settings) -> None:
    body = multi_line(chunk("hello ")) + multi_line(chunk("world", "stop")) + multi_line(USAGE) + "data: [DONE]\n\n"
    sim.script(M, Reply(raw=body.encode(), content_type="text/event-stream"))
    out = await stream(settings)
    assert (out.content, out.finish_reason, out.usage.total_tokens) == ("hello world", "stop", 5)


async def test_comments_event_id_and_retry_fields_are_not_data(sim: ProviderSim, settings: Settings) -> None:
    body = (
        ": OPENROUTER PROCESSING\n\n"
        "retry: 3000\n\n"
        f"id: 1\nevent: message\n: a comment inside an event\ndata: {json.dumps(chunk('a'))}\n\n"
        f"id: 2\ndata:{json.dumps(chunk('b', 'stop'))}\n\n"  # no space after the colon is valid too
        ": trailing keep-alive\n\n"
        "data: [DONE]\n\n"
    )
    sim.script(M, Reply(raw=body.encode(), content_type="text/event-stream"))
    out = await stream(settings)
    assert out.content == "ab" and out.finish_reason == "stop"


@pytest.mark.parametrize("newline", ["\r\n", "\r"], ids=["crlf", "cr"])
async def test_crlf_and_cr_line_endings(sim: ProviderSim, settings: Settings, newline: str) -> None:
    events = [chunk("one "), chunk("two", "stop"), USAGE]
    body = "".join(f"data: {json.dumps(e)}{newline}{newline}" for e in events) + f"data: [DONE]{newline}{newline}"
    sim.script(M, Reply(raw=body.encode(), content_type="text/event-stream"))
    out = await stream(settings)
    assert (out.content, out.usage.total_tokens) == ("one two", 5)


async def test_events_split_across_reads_anywhere(sim: ProviderSim, settings: Settings) -> None:
    body = (
        f"data: {json.dumps(chunk('split '))}\r\n\r\n"
        + multi_line(chunk("across ", None))
        + f"data: {json.dumps(chunk('reads', 'stop'))}\r\n\r\ndata: [DONE]\r\n\r\n"
    ).encode()
    # Cut mid-prefix ("da" | "ta:"), mid-JSON, between \r and \n, and inside a multi-line event.
    cuts = sorted({2, 11, 40, body.index(b"\r\n") + 1, body.index(b"\ndata:", 60) + 3, len(body) - 5})
    parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    sim.script(M, Reply(raw_parts=parts))
    out = await stream(settings)
    assert out.content == "split across reads" and out.finish_reason == "stop"


async def test_a_stream_over_the_size_cap_is_cut_and_named(sim: ProviderSim, settings: Settings) -> None:
    piece = f"data: {json.dumps(chunk('x' * 60_000))}\n\n".encode()
    parts = [piece] * (MAX_RESPONSE_BYTES // len(piece) + 2)
    sim.script(M, Reply(raw_parts=parts))
    with pytest.raises(BadResponse) as info:
        await stream(settings)
    assert info.value.message == "the stream was longer than 8 MiB and was cut"
    assert info.value.partial.startswith("x" * 60_000)  # what came before the cap is kept


async def test_one_endless_event_is_cut_at_the_cap(sim: ProviderSim, settings: Settings) -> None:
    # A line that never ends: what the parser holds is bounded by the stream's cap (and by its own, the same).
    parts = [b"data: " + b"y" * (1024 * 1024)] * 9
    sim.script(M, Reply(raw_parts=parts))
    with pytest.raises(BadResponse) as info:
        await stream(settings)
    assert info.value.message == "the stream was longer than 8 MiB and was cut"


async def test_a_member_streaming_multi_line_events_answers_in_full_through_the_tool(sim: ProviderSim) -> None:
    body = multi_line(chunk("a multi-line ")) + multi_line(chunk("answer", "stop")) + multi_line(USAGE)
    sim.script(PANEL[0], Reply(raw_parts=[body.encode()[:50], body.encode()[50:], b"data: [DONE]\n\n"]))
    async with Client(create_server(load_settings(environ=sim_env(sim)))) as client:
        data = structured(await client.call_tool(TOOL, {"prompt": "q"}))
    assert data["status"] == "ok" and data["responses"][0] == {"model": PANEL[0], "content": "a multi-line answer"}


async def test_streamed_requests_reuse_one_connection(sim: ProviderSim, settings: Settings) -> None:
    """A stream read to its end hands its connection back: no new TCP (and, upstream, TLS) handshake per member."""
    request = {"model": M, "messages": [{"role": "user", "content": "q"}], "stream": True}
    async with new_http_client() as http:
        provider = Provider(http, settings)
        for _ in range(3):
            assert (await provider.complete(request)).content == f"Answer from {M}: the answer is 42."
    peers = {r.peer for r in sim.requests}
    assert len(sim.requests) == 3 and len(peers) == 1, peers


def open_stream_iterators() -> set[int]:
    """The async generators of the provider client and httpx2 that are suspended, neither finished nor closed."""
    return {
        id(o)
        for o in gc.get_objects()
        if inspect.isasyncgen(o)
        and o.ag_frame is not None
        and ("fusion_mcp/providers" in o.ag_code.co_filename or "httpx2" in o.ag_code.co_filename)
    }


async def test_a_stream_left_before_its_end_is_closed_by_its_reader_not_the_collector(
    sim: ProviderSim, settings: Settings
) -> None:
    """An error chunk ends the reading with the rest of the stream unread: the iterators that read it are closed
    before the error reaches the caller. Left to the garbage collector, asyncio finalized httpx2's nested
    iterators at once and raised "async generator already executing" (an unraisable error, seen in the soak)."""
    failing = chunk(finish="error", error={"message": "x"})
    unread = "".join(f"data: {json.dumps(chunk('more '))}\n\n" for _ in range(200))
    body = f"data: {json.dumps(chunk('a'))}\n\ndata: {json.dumps(failing)}\n\n{unread}data: [DONE]\n\n"
    sim.script(M, Reply(raw=body.encode(), content_type="text/event-stream"))
    before = open_stream_iterators()
    with pytest.raises(UpstreamError) as failed:
        await stream(settings)
    assert failed.value.message == "the stream ended with an error: x"
    assert open_stream_iterators() - before == set()  # the traceback still holds the reader's frame
