"""Who may use the chat endpoint and whose key pays: server tokens, ``FUSION_PASS_THROUGH_KEY``, a missing
key; keep-alive comments; the model list with a catalogue. Each set-up is a ``fusion-mcp serve`` of its own."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client

from fusion_mcp.config import load_settings
from fusion_mcp.core.callers import key_principal
from fusion_mcp.http.app import build_app
from tests import servers
from tests.conftest import API_KEY, HOME_DIR, PANEL, shared_env, sim_env
from tests.fakes import writer
from tests.fakes.loopback import LoopbackServer
from tests.fakes.provider_sim import ProviderSim, Reply, priced
from tests.helpers import read_sse, recorded, wait_until

TOKEN = "chat-token-0123456789-SECRET"
KEY_PREFIX = "caller-key-"
CALLER_KEY = "caller-key-0123456789-pays-for-this"
WRITER = "acme/writer"
USER = {"role": "user", "content": "Which of A and B should we choose?"}
FUSED = {"model": WRITER, "messages": [USER], "plugins": [{"id": "fusion"}]}


@pytest.fixture(scope="module")
def _lending(_sim: ProviderSim) -> Iterator[servers.Running]:
    env = shared_env(
        _sim,
        FUSION_HTTP_TOKEN=TOKEN,
        FUSION_PASS_THROUGH_KEY="true",
        FUSION_PASS_THROUGH_KEY_PREFIX=KEY_PREFIX,
        FUSION_KEEPALIVE_S="0.2",
    )
    with servers.http_server(env) as running:
        yield running


@pytest.fixture
def lending(sim: ProviderSim, _lending: servers.Running) -> Iterator[str]:
    """A server with a token and pass-through keys on; no secret may reach its log."""
    logged = len(_lending.stderr)
    yield _lending.base
    new = _lending.stderr[logged:]
    assert TOKEN not in new and API_KEY not in new and CALLER_KEY not in new
    assert "Traceback" not in new, new


def post(base: str, body: dict[str, Any], bearer: str | None = None, path: str = "/v1/chat/completions") -> Any:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return httpx2.post(f"{base}{path}", json=body, headers=headers, timeout=60)


def authorizations(sim: ProviderSim) -> set[str]:
    return {r.headers.get("authorization", "") for r in sim.requests}


def history_bytes() -> bytes:
    return b"".join(p.read_bytes() for p in Path(HOME_DIR).glob("fusion.sqlite3*"))


def test_no_bearer_is_refused_in_openai_shape(sim: ProviderSim, lending: str) -> None:
    for path, method in (("/v1/chat/completions", "POST"), ("/api/v1/models", "GET")):
        response = httpx2.request(method, f"{lending}{path}", json=FUSED, timeout=10)
        assert response.status_code == 401 and response.headers["www-authenticate"] == 'Bearer realm="fusion-mcp"'
        assert response.json() == {
            "error": {
                "message": "missing or wrong bearer token",
                "type": "authentication_error",
                "code": "invalid_api_key",
                "param": None,
            }
        }
    assert sim.requests == []


def test_a_server_token_spends_the_servers_key(sim: ProviderSim, lending: str) -> None:
    sim.scripts[WRITER] = writer.fusing()
    data = post(lending, FUSED, TOKEN).json()
    assert data["fusion"]["status"] == "ok"
    assert authorizations(sim) == {f"Bearer {API_KEY}"}
    assert all(TOKEN not in json.dumps(r.headers) + json.dumps(r.body) for r in sim.requests)
    assert TOKEN not in json.dumps(data)


def test_a_callers_own_key_pays_for_every_request_and_is_never_kept(sim: ProviderSim, lending: str) -> None:
    sim.scripts[WRITER] = writer.fusing()
    data = post(lending, FUSED, CALLER_KEY).json()
    assert data["choices"][0]["message"]["content"] == writer.FINAL and data["fusion"]["status"] == "ok"
    assert len(sim.requests) == 6 and authorizations(sim) == {f"Bearer {CALLER_KEY}"}
    assert CALLER_KEY not in json.dumps(data)
    assert CALLER_KEY.encode() not in history_bytes()
    # The run is the key holder's, under a fingerprint of the key.
    owner = recorded(data["fusion"]["run_id"])["principal"]
    assert owner == key_principal(CALLER_KEY) and owner.startswith("key:") and CALLER_KEY not in owner
    # A key opens the API routes and /mcp alike: both front ends admit exactly the same callers.
    bearer = {"Authorization": f"Bearer {CALLER_KEY}"}
    assert httpx2.get(f"{lending}/v1/models", headers=bearer, timeout=10).status_code == 200
    assert httpx2.post(f"{lending}/mcp", json={}, headers=bearer, timeout=10).status_code != 401


def test_a_rejected_caller_key_is_a_401_that_never_echoes_it(sim: ProviderSim, lending: str) -> None:
    sim.script(WRITER, Reply(status=401, error_message="key revoked", echo_auth=True))
    response = post(lending, FUSED, CALLER_KEY)
    assert response.status_code == 401
    assert response.json()["error"] == {
        "message": f"{WRITER}: HTTP 401: the API key was rejected: key revoked (you sent Bearer [redacted])",
        "type": "authentication_error",
        "code": "invalid_api_key",
        "param": None,
    }


def test_members_echoing_the_callers_key_are_redacted_everywhere(sim: ProviderSim, lending: str) -> None:
    sim.scripts[WRITER] = writer.fusing(final="No panel today.")
    for model in PANEL:
        sim.script(model, Reply(status=403, error_message="forbidden", echo_auth=True))
    data = post(lending, FUSED, CALLER_KEY).json()
    assert data["fusion"]["failure_reason"] == "all_panels_failed"
    assert all("[redacted]" in f["error"] for f in data["fusion"]["failed_models"])
    told = [r.body for r in sim.requests_for(WRITER)][-1]["messages"][-1]
    assert told["role"] == "tool" and CALLER_KEY not in json.dumps(told) and "[redacted]" in told["content"]
    assert CALLER_KEY not in json.dumps(data) and CALLER_KEY.encode() not in history_bytes()


def test_answers_echoing_the_callers_key_are_stored_without_it(sim: ProviderSim, lending: str) -> None:
    sim.scripts[WRITER] = writer.fusing()
    for model in PANEL:
        sim.script(model, Reply(echo_auth=True))
    data = post(lending, FUSED, CALLER_KEY).json()
    assert data["fusion"]["status"] == "ok"
    assert all("(the request said: Bearer [redacted])" in r["content"] for r in data["fusion"]["responses"])
    assert CALLER_KEY not in json.dumps(data)
    stored = json.dumps(recorded(data["fusion"]["run_id"]))
    assert "Bearer [redacted]" in stored and CALLER_KEY not in stored
    assert CALLER_KEY.encode() not in history_bytes()


def test_keep_alive_comments_while_the_writer_and_the_panel_work(sim: ProviderSim, lending: str) -> None:
    """With ``FUSION_KEEPALIVE_S=0.2``, a writer that takes 0.6 s and members that take 1 s."""
    sim.scripts[WRITER] = writer.fusing(latency=0.6)
    for model in PANEL:
        sim.script(model, Reply(latency=1.0))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    body = {**FUSED, "stream": True}
    with httpx2.stream("POST", f"{lending}/v1/chat/completions", json=body, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        lines = list(response.iter_lines())
    events, comments = read_sse(lines)
    assert re.fullmatch(f": waiting for {WRITER} \\(\\d+ s\\)", lines[0])  # the response starts with a keep-alive
    assert any(re.fullmatch(r"fusion running \(\d+ s\)", c) for c in comments), comments
    assert events[-1] == "[DONE]" and events[-2]["fusion"]["status"] == "ok"


def test_models_list_the_providers_catalogue(sim: ProviderSim) -> None:
    sim.catalogue = [priced("openai/gpt-5"), priced("llama3")]
    with servers.in_process(sim_env(sim)) as base:
        data = httpx2.get(f"{base}/v1/models", timeout=10).json()
    assert [(m["id"], m["owned_by"]) for m in data["data"]] == [
        ("openrouter/fusion", "fusion-mcp"),
        ("fusion", "fusion-mcp"),
        ("llama3", "fusion-mcp"),
        ("openai/gpt-5", "openai"),
    ]


def test_a_provider_without_streaming_still_serves_a_streaming_client(sim: ProviderSim) -> None:
    sim.scripts[WRITER] = writer.fusing()
    body = {**FUSED, "stream": True}
    with (
        servers.in_process(sim_env(sim, FUSION_STREAM="false")) as base,
        httpx2.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as response,
    ):
        events, _ = read_sse(response.iter_lines())
    texts = [e["choices"][0]["delta"]["content"] for e in events[:-1] if e["choices"][0]["delta"].get("content")]
    assert texts == [writer.FINAL] and events[-2]["fusion"]["status"] == "ok"
    assert not any(r.body.get("stream") for r in sim.requests)


@pytest.mark.anyio
async def test_mcp_and_chat_share_one_service_and_its_run_slots(sim: ProviderSim) -> None:
    """One run slot (``FUSION_MAX_CONCURRENT=1``): while an MCP call holds it, a chat turn's fusion is told
    ``server_busy`` (a tool result; the writer still answers)."""
    for model in PANEL:
        sim.scripts[model] = lambda body: Reply(latency=5) if "from mcp" in json.dumps(body["messages"]) else Reply()
    sim.scripts[WRITER] = writer.fusing(final="Answered without the panel: it was busy.")
    env = sim_env(sim, FUSION_MAX_CONCURRENT="1", FUSION_QUEUE_TIMEOUT_S="0.2")
    with servers.in_process(env) as base:
        async with Client(f"{base}/mcp", mode="legacy") as mcp, anyio.create_task_group() as tg:
            tg.start_soon(mcp.call_tool, "openrouter_fusion", {"prompt": "from mcp"})
            await wait_until(lambda: len(sim.requests) == 3)
            async with httpx2.AsyncClient(timeout=60) as http:
                data = (await http.post(f"{base}/v1/chat/completions", json=FUSED)).json()
            tg.cancel_scope.cancel()
    assert data["choices"][0]["message"]["content"] == "Answered without the panel: it was busy."
    assert data["fusion"]["failure_reason"] == "server_busy"
    assert data["fusion"]["error"].startswith("server busy: 1 fusion run in progress")


@pytest.mark.anyio
async def test_writer_requests_beyond_their_cap_get_503_busy(sim: ProviderSim) -> None:
    sim.scripts[WRITER] = lambda body: Reply(content="slow", latency=5) if "first" in json.dumps(body) else Reply()
    env = sim_env(sim, FUSION_MAX_CHAT_REQUESTS="1", FUSION_QUEUE_TIMEOUT_S="0.2")
    first = {"model": WRITER, "messages": [{"role": "user", "content": "first"}]}
    with servers.in_process(env) as base:
        async with httpx2.AsyncClient(base_url=base, timeout=60) as http, anyio.create_task_group() as tg:

            async def slow() -> None:
                await http.post("/v1/chat/completions", json=first)

            tg.start_soon(slow)
            await wait_until(lambda: len(sim.requests) == 1)
            busy = await http.post("/v1/chat/completions", json={"model": WRITER, "messages": [USER]})
            tg.cancel_scope.cancel()
    assert (busy.status_code, busy.headers["retry-after"]) == (503, "1")
    assert busy.json()["error"] == {
        "message": "server busy: 1 chat requests are waiting on the provider (FUSION_MAX_CHAT_REQUESTS) and none "
        "finished within 0.2 s; try again shortly",
        "type": "service_unavailable",
        "code": "server_busy",
        "param": None,
    }
    assert len(sim.requests) == 1


def test_before_the_service_is_open_requests_get_503(sim: ProviderSim) -> None:
    """Served without its lifespan (uvicorn's ``lifespan="off"``), the app has no service to lend yet."""
    server = LoopbackServer(build_app(load_settings(environ=sim_env(sim))))
    try:
        response = post(f"http://127.0.0.1:{server.port}", FUSED)
    finally:
        server.close()
    assert (response.status_code, response.json()["error"]) == (
        503,
        {
            "message": "the server is starting or stopping; try again",
            "type": "service_unavailable",
            "code": "not_ready",
            "param": None,
        },
    )
    assert sim.requests == []


@pytest.mark.parametrize(
    ("lend", "bearer", "status", "message"),
    [
        ("false", None, 503, "OPENROUTER_API_KEY is not set on this server"),
        (
            "true",
            "not-an-openrouter-key",
            401,
            "send your OpenRouter key as 'Authorization: Bearer sk-or-...': this server has no key of its own",
        ),
    ],
    ids=["no-key", "pass-through-needs-an-sk-or-key"],
)
def test_openrouter_without_any_key(lend: str, bearer: str | None, status: int, message: str) -> None:
    """OpenRouter is the provider and no key is set: refused before anything is sent (nothing can be)."""
    env = {"FUSION_HOME": HOME_DIR, "FUSION_PASS_THROUGH_KEY": lend}
    with servers.in_process(env) as base:
        response = post(base, FUSED, bearer)
    assert response.status_code == status
    assert response.json()["error"] == {
        "message": message,
        "type": "authentication_error" if status == 401 else "service_unavailable",
        "code": "missing_api_key",
        "param": None,
    }


RESPONSES = {"model": WRITER, "input": USER["content"], "plugins": [{"id": "fusion"}]}


@pytest.mark.parametrize("path", ["/v1/responses", "/api/v1/responses"])
def test_the_responses_api_refuses_a_caller_without_a_bearer_in_openai_shape(
    sim: ProviderSim, lending: str, path: str
) -> None:
    for bearer in (None, "not-a-token-nor-a-key"):
        response = post(lending, RESPONSES, bearer, path=path)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert sim.requests == []


def test_the_responses_api_spends_the_callers_own_key_and_never_lets_it_out(sim: ProviderSim, lending: str) -> None:
    """A lent key on /v1/responses, streamed, with every member echoing the key it was sent: every request goes
    out with the caller's key, and neither the events (the members' deltas, the fusion item, the answer) nor
    the history hold it."""
    sim.scripts[WRITER] = writer.fusing()
    for model in PANEL:
        sim.script(model, Reply(echo_auth=True))
    body = {**RESPONSES, "stream": True}
    with httpx2.stream(
        "POST", f"{lending}/v1/responses", json=body, headers={"Authorization": f"Bearer {CALLER_KEY}"}, timeout=60
    ) as response:
        assert response.status_code == 200
        raw = response.read().decode()
    events, _ = read_sse(raw.splitlines())
    assert events[-1]["type"] == "response.completed"
    deltas = "".join(e["delta"] for e in events if e.get("type") == "response.fusion_call.panel.delta")
    assert "(the request said: Bearer [redacted])" in deltas
    assert CALLER_KEY not in raw
    assert len(sim.requests) == 6 and authorizations(sim) == {f"Bearer {CALLER_KEY}"}
    assert CALLER_KEY.encode() not in history_bytes()


def test_the_responses_api_turns_a_rejected_caller_key_into_a_401_that_never_echoes_it(
    sim: ProviderSim, lending: str
) -> None:
    sim.script(WRITER, Reply(status=401, error_message="key revoked", echo_auth=True))
    response = post(lending, RESPONSES, CALLER_KEY, path="/v1/responses")
    assert response.status_code == 401
    assert response.json()["error"] == {
        "message": f"{WRITER}: HTTP 401: the API key was rejected: key revoked (you sent Bearer [redacted])",
        "type": "authentication_error",
        "code": "invalid_api_key",
        "param": None,
    }
