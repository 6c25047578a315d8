"""Redaction on the Responses API, as on chat: a writer or a panel member that echoes the server's key puts it
nowhere a caller can read it, split across streamed pieces or not; and the chat endpoint's own fusion events
(``stream_options.include_fusion_events``), which carry the panel's text the same way.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2

from tests.conftest import API_KEY, PANEL
from tests.fakes import writer
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import read_sse

WRITER = "acme/writer"
QUESTION = "Which of A and B should we choose?"
PLUGIN = {"id": "fusion"}


def sse(*deltas: dict[str, Any]) -> list[bytes]:
    """A model's SSE stream, one event per delta (each sent as its own write by the simulator)."""
    chunks = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]


def split_key(prefix: str) -> list[bytes]:
    half = len(API_KEY) // 2
    return sse({"content": prefix}, {"content": API_KEY[:half]}, {"content": API_KEY[half:] + ". Done."})


def raw_events(base: str, body: dict[str, Any]) -> tuple[bytes, list[dict[str, Any]]]:
    with httpx2.stream("POST", f"{base}/v1/responses", json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200
        raw = response.read()
    found, _ = read_sse(raw.decode().splitlines())
    return raw, found


def test_a_key_split_across_the_writers_streamed_text_is_redacted(sim: ProviderSim, http_server: str) -> None:
    half = len(API_KEY) // 2
    sim.script(WRITER, Reply(raw_parts=split_key("The key is ")))
    raw, found = raw_events(http_server, {"model": WRITER, "input": QUESTION})
    assert API_KEY.encode() not in raw and API_KEY[:half].encode() not in raw
    text = "".join(e["delta"] for e in found if e["type"] == "response.output_text.delta")
    assert text == "The key is [redacted]. Done."
    assert found[-1]["response"]["output"][0]["content"][0]["text"] == text


def test_a_key_echoed_by_a_panel_member_is_redacted_in_its_deltas_and_result(
    sim: ProviderSim, http_server: str
) -> None:
    half = len(API_KEY) // 2
    sim.scripts[WRITER] = writer.fusing()
    sim.script(PANEL[1], Reply(raw_parts=split_key("My key: ")))
    raw, found = raw_events(http_server, {"model": WRITER, "input": QUESTION, "plugins": [PLUGIN]})
    assert API_KEY.encode() not in raw and API_KEY[:half].encode() not in raw
    member = [e for e in found if e.get("model") == PANEL[1]]
    said = "".join(e["delta"] for e in member if e["type"] == "response.fusion_call.panel.delta")
    assert said == "My key: [redacted]. Done." == member[-1]["content"]
    fused = found[-1]["response"]["output"][0]
    assert fused["responses"][1]["content"] == "My key: [redacted]. Done."


def test_a_writer_echoing_the_key_is_redacted_in_the_json_response(sim: ProviderSim, http_server: str) -> None:
    sim.script(WRITER, Reply(content="Here is what you sent me:", echo_auth=True))
    response = httpx2.post(f"{http_server}/v1/responses", json={"model": WRITER, "input": QUESTION}, timeout=60)
    assert API_KEY not in response.text
    assert response.json()["output"][0]["content"][0]["text"] == (
        "Here is what you sent me: (the request said: Bearer [redacted])"
    )


# -- the chat endpoint's fusion events ----------------------------------------------------------------------------


def chat_stream(base: str, body: dict[str, Any]) -> tuple[bytes, list[Any], list[str]]:
    with httpx2.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        raw = response.read()
    found, comments = read_sse(raw.decode().splitlines())
    return raw, found, comments


def test_chat_sends_fusion_events_as_comments_when_asked(sim: ProviderSim, http_server: str) -> None:
    half = len(API_KEY) // 2
    sim.scripts[WRITER] = writer.fusing()
    sim.script(PANEL[1], Reply(raw_parts=split_key("My key: ")))
    body = {
        "model": WRITER,
        "messages": [{"role": "user", "content": QUESTION}],
        "plugins": [PLUGIN],
        "stream": True,
        "stream_options": {"include_fusion_events": True},
    }
    raw, found, comments = chat_stream(http_server, body)
    assert API_KEY.encode() not in raw and API_KEY[:half].encode() not in raw
    fusion = [json.loads(c.removeprefix("fusion ")) for c in comments if c.startswith("fusion {")]
    kinds = [e["type"].removeprefix("response.fusion_call.") for e in fusion]
    assert kinds[0] == "in_progress" and kinds[-3:] == ["analysis.in_progress", "analysis.completed", "completed"]
    assert [e["model"] for e in fusion if e["type"].endswith("panel.added")] == list(PANEL)
    member = [e for e in fusion if e.get("model") == PANEL[1]]
    said = "".join(e["delta"] for e in member if e["type"].endswith("panel.delta"))
    assert said == "My key: [redacted]. Done." == member[-1]["content"]
    # The chat reply itself is unchanged: the answer, then the last chunk and [DONE].
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in found[:-1]) == writer.FINAL
    assert found[-1] == "[DONE]"


def test_chat_sends_no_fusion_events_unless_asked(sim: ProviderSim, http_server: str) -> None:
    sim.scripts[WRITER] = writer.fusing()
    body = {"model": WRITER, "messages": [{"role": "user", "content": QUESTION}], "plugins": [PLUGIN], "stream": True}
    _, _, comments = chat_stream(http_server, body)
    assert comments and not [c for c in comments if c.startswith("fusion {")]
    assert any(c.startswith("fusion running: ") for c in comments)
