"""The chat endpoint redacts every way out: a writer (a provider or gateway that reflects headers, a
prompt-injected model) that echoes the server's key puts it nowhere a caller or the log can read it.

Over real HTTP against ``fusion-mcp serve`` on the simulator; the ``http_server`` fixture also checks the
server's log for the key and for tracebacks after each test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx2

from tests.conftest import API_KEY, PANEL, child_env
from tests.fakes import writer
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import read_sse

WRITER = "acme/writer"
USER = {"role": "user", "content": "Which of A and B should we choose?"}
LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


def post(base: str, body: dict[str, Any]) -> httpx2.Response:
    return httpx2.post(f"{base}/v1/chat/completions", json=body, timeout=60)


def streamed(base: str, body: dict[str, Any]) -> tuple[bytes, list[Any]]:
    with httpx2.stream("POST", f"{base}/v1/chat/completions", json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200
        raw = response.read()
    events, _ = read_sse(raw.decode().splitlines())
    return raw, events


def text_of(events: list[Any]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events if isinstance(e, dict) and e.get("choices")
    )


def sse(*deltas: dict[str, Any], finish: str = "stop") -> list[bytes]:
    """A writer's SSE stream, one event per delta (each sent as its own write by the simulator)."""
    chunks = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    return [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]


def test_a_writer_echoing_the_key_is_redacted_in_the_json_answer(sim: ProviderSim, http_server: str) -> None:
    for body in (
        {"model": WRITER, "messages": [USER]},
        {"model": WRITER, "messages": [USER], "plugins": [{"id": "fusion"}]},
    ):
        sim.reset()
        sim.script(WRITER, Reply(content="Here is what you sent me:", echo_auth=True))
        response = post(http_server, body)
        assert response.status_code == 200
        assert API_KEY not in response.text
        assert response.json()["choices"][0]["message"]["content"] == (
            "Here is what you sent me: (the request said: Bearer [redacted])"
        )


def test_a_key_split_across_streamed_chunks_is_still_redacted(sim: ProviderSim, http_server: str) -> None:
    """The stream holds back as many characters as the longest secret, so no chunk boundary hides one."""
    half = len(API_KEY) // 2
    for plugins in ([], [{"id": "fusion"}]):
        sim.reset()
        parts = sse({"content": "The key is "}, {"content": API_KEY[:half]}, {"content": API_KEY[half:] + ". Done."})
        sim.script(WRITER, Reply(raw_parts=parts))
        raw, events = streamed(http_server, {"model": WRITER, "messages": [USER], "plugins": plugins})
        assert API_KEY.encode() not in raw and API_KEY[:half].encode() not in raw
        assert text_of(events) == "The key is [redacted]. Done."
        assert events[-1] == "[DONE]"


def test_a_key_echoed_across_whole_words_in_a_stream(sim: ProviderSim, http_server: str) -> None:
    sim.script(WRITER, Reply(content="You sent", echo_auth=True))
    raw, events = streamed(http_server, {"model": WRITER, "messages": [USER]})
    assert API_KEY.encode() not in raw
    assert text_of(events) == "You sent (the request said: Bearer [redacted])"


def test_tool_call_names_and_arguments_are_redacted(sim: ProviderSim, http_server: str) -> None:
    """A caller's tool call the writer fills with the key (its name too): the JSON-escaped form is caught."""
    quoted = json.dumps({"query": f"key={API_KEY}", "nested": {"again": API_KEY}})
    calls = [writer.call("lookup", quoted), writer.call(f"lookup_{API_KEY}", "{}", call_id="call_2")]
    for stream in (False, True):
        sim.reset()
        sim.script(WRITER, Reply(content="", tool_calls=calls, finish_reason="tool_calls"))
        body = {"model": WRITER, "messages": [USER], "tools": [LOOKUP]}
        if stream:
            raw, events = streamed(http_server, body)
            assert API_KEY.encode() not in raw
            sent = next(
                e for e in events if isinstance(e, dict) and e["choices"] and e["choices"][0]["delta"].get("tool_calls")
            )
            made = [c["function"] for c in sent["choices"][0]["delta"]["tool_calls"]]
        else:
            response = post(http_server, body)
            assert API_KEY not in response.text
            made = [c["function"] for c in response.json()["choices"][0]["message"]["tool_calls"]]
        assert json.loads(made[0]["arguments"]) == {"query": "key=[redacted]", "nested": {"again": "[redacted]"}}
        assert made[1]["name"] == "lookup_[redacted]"


def test_an_escaped_echo_in_the_writers_text_and_the_fusion_field(sim: ProviderSim, http_server: str) -> None:
    """The writer calls fusion with the key as its prompt; every member echoes it back: the tool result the
    writer reads, the answer and the ``fusion`` field carry it nowhere."""
    sim.scripts[WRITER] = writer.fusing(prompt=f"Is {API_KEY} a good key?", final=f"About {json.dumps(API_KEY)}: no.")
    for model in PANEL:
        sim.script(model, Reply(echo_auth=True))
    response = post(http_server, {"model": WRITER, "messages": [USER], "plugins": [{"id": "fusion"}]})
    assert response.status_code == 200 and API_KEY not in response.text
    data = response.json()
    assert data["choices"][0]["message"]["content"] == 'About "[redacted]": no.'
    assert data["fusion"]["status"] == "ok"
    told = sim.requests_for(WRITER)[-1].body["messages"][-1]
    assert told["role"] == "tool" and API_KEY not in told["content"]


def test_the_log_filter_redacts_tracebacks_too(sim: ProviderSim) -> None:
    """An exception whose text quotes a secret (h11 quotes a header it refuses) is logged with its traceback:
    the process's stderr carries neither the key nor a lent key in flight."""
    lent = "sk-or-v1-LENT-KEY-IN-FLIGHT-0123456789"
    code = f"""
import logging
from fusion_mcp.cli.main import _setup_logging
from fusion_mcp.config import load_settings
from fusion_mcp.core.errors import live_secret
_setup_logging(load_settings())
log = logging.getLogger("fusion_mcp.test")
with live_secret({lent!r}):
    try:
        raise ValueError("Illegal header value b'Bearer {API_KEY}' and {lent}")
    except ValueError:
        log.exception("request failed for %s", {API_KEY!r})
    log.warning("stack", stack_info=True)
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(OPENROUTER_API_KEY=API_KEY, FUSION_HOME="/nonexistent"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback (most recent call last)" in out.stderr  # the traceback is kept, only redacted
    assert "ValueError: Illegal header value b'Bearer [redacted]' and [redacted]" in out.stderr
    assert "request failed for [redacted]" in out.stderr
    assert API_KEY not in out.stderr and lent not in out.stderr
