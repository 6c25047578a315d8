"""Pass-through keys cannot open the door: with ``FUSION_PASS_THROUGH_KEY``, a bearer is a lent key only when
it starts with the operator's prefix; any other bearer must be a token, on ``/mcp`` and ``/v1`` alike. A lent
key pays for its caller's runs, and gets none of the server's own resources (its search key, its network, its
files) and only run slots of its own.

Against ``fusion-mcp serve`` (and the in-process app) on the simulator, a provider that checks no key.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from fusion_mcp.core.callers import key_principal
from tests import servers
from tests.conftest import API_KEY, PANEL, child_env, console_script, shared_env, sim_env
from tests.fakes import writer
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.fakes.search_apis import BRAVE_KEY
from tests.helpers import INIT, MCP_HEADERS, TOOL, over_http, recorded, structured, wait_until

ALICE = "alice-token-0123456789abcdef"
PREFIX = "lent-key-"
LENT = "lent-key-0123456789-CALLER-PAYS"
OTHER = "lent-key-9876543210-ANOTHER-ONE"
WRITER = "acme/writer"
CHAT = {"model": WRITER, "messages": [{"role": "user", "content": "Which of A and B?"}], "plugins": [{"id": "fusion"}]}


def lending_env(sim: ProviderSim, roots: Path, **extra: str) -> dict[str, str]:
    return shared_env(
        sim,
        FUSION_HTTP_TOKENS=f"alice:{ALICE}",
        FUSION_PASS_THROUGH_KEY="true",
        FUSION_PASS_THROUGH_KEY_PREFIX=PREFIX,
        FUSION_WEB_TOOLS="local",
        FUSION_SEARCH="brave",
        BRAVE_API_KEY=BRAVE_KEY,
        FUSION_FILES_ROOTS=str(roots),
        **extra,
    )


@pytest.fixture(scope="module")
def _roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    roots = tmp_path_factory.mktemp("roots")
    (roots / "notes.txt").write_text("the server's own notes")
    return roots


@pytest.fixture(scope="module")
def _lending(_sim: ProviderSim, _roots: Path) -> Iterator[servers.Running]:
    with servers.http_server(lending_env(_sim, _roots)) as running:
        yield running


@pytest.fixture
def lending(sim: ProviderSim, _lending: servers.Running) -> Iterator[str]:
    logged = len(_lending.stderr)
    yield _lending.base
    new = _lending.stderr[logged:]
    assert LENT not in new and OTHER not in new and ALICE not in new and API_KEY not in new
    assert "Traceback" not in new, new


def chat(base: str, bearer: str | bytes | None, body: dict[str, Any] = CHAT) -> httpx2.Response:
    headers = (
        {"Authorization": b"Bearer " + bearer if isinstance(bearer, bytes) else f"Bearer {bearer}"} if bearer else {}
    )
    return httpx2.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=60)


def mcp_initialize(base: str, bearer: str | bytes | None) -> httpx2.Response:
    headers = dict(MCP_HEADERS)
    if bearer is not None:
        headers["Authorization"] = b"Bearer " + bearer if isinstance(bearer, bytes) else f"Bearer {bearer}"
    return httpx2.post(f"{base}/mcp", json=INIT, headers=headers, timeout=30)


MISTYPED = ALICE[:-1] + "X"


@pytest.mark.parametrize("bearer", [None, "i-am-not-a-token", MISTYPED, "sk-or-v1-0123456789abcdefABCDEF"])
def test_a_bearer_that_is_no_token_nor_lent_key_is_refused_alike_on_both_front_ends(
    sim: ProviderSim, lending: str, bearer: str | None
) -> None:
    """A random string, a token one character off, a key of another format: 401 on /v1 as on /mcp, and
    nothing reaches the provider (which would have taken any of them: it checks no key)."""
    sim.scripts[WRITER] = writer.fusing()
    refused = chat(lending, bearer)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == 'Bearer realm="fusion-mcp"'
    assert refused.json() == {
        "error": {
            "message": "missing or wrong bearer token",
            "type": "authentication_error",
            "code": "invalid_api_key",
            "param": None,
        }
    }
    mcp = mcp_initialize(lending, bearer)
    assert (mcp.status_code, mcp.json()) == (401, {"error": "missing or wrong bearer token"})
    assert sim.requests == []


def test_a_malformed_lent_key_is_a_401_naming_the_header(sim: ProviderSim, lending: str) -> None:
    """A key with a non-ASCII character could never be sent in a header: refused at the door (it was an HTTP 500
    with a traceback in the log), on both front ends."""
    bad = (PREFIX + "caf\u00e9-0123456789abcdef").encode("latin-1")
    message = (
        "the provider key in the Authorization header is malformed: it must be printable ASCII without spaces, 16 "
        "to 512 characters"
    )
    refused = chat(lending, bad)
    assert refused.status_code == 401 and refused.json()["error"]["message"] == message
    assert mcp_initialize(lending, bad).json() == {"error": message}
    assert chat(lending, PREFIX + "short").json()["error"]["message"] == message
    assert sim.requests == []


@pytest.mark.anyio
async def test_a_lent_key_pays_on_mcp_as_on_the_chat_routes(sim: ProviderSim, lending: str) -> None:
    async with over_http(lending, LENT) as client:
        result = structured(await client.call_tool(TOOL, {"prompt": "over MCP, on my key"}))
    assert result["status"] == "ok"
    assert {r.headers["authorization"] for r in sim.requests} == {f"Bearer {LENT}"}
    assert recorded(result["run_id"])["principal"] == key_principal(LENT)
    sim.reset()
    sim.scripts[WRITER] = writer.fusing()
    data = chat(lending, LENT).json()
    assert data["fusion"]["status"] == "ok"
    assert {r.headers["authorization"] for r in sim.requests} == {f"Bearer {LENT}"}
    # The token still spends the server's key.
    sim.reset()
    async with over_http(lending, ALICE) as client:
        assert structured(await client.call_tool(TOOL, {"prompt": "on the server's key"}))["status"] == "ok"
    assert {r.headers["authorization"] for r in sim.requests} == {f"Bearer {API_KEY}"}


def offered_tools(sim: ProviderSim) -> set[str]:
    return {t["function"]["name"] for r in sim.requests for t in r.body.get("tools") or [] if "function" in t}


@pytest.mark.anyio
async def test_a_lent_key_gets_none_of_the_servers_own_resources(sim: ProviderSim, lending: str) -> None:
    """No local web tools (they would spend the server's search key and reach out from its network) and no
    files from the server's roots; a token holder gets both."""
    async with over_http(lending, LENT) as client:
        plain = structured(await client.call_tool(TOOL, {"prompt": "q"}))
        files = structured(await client.call_tool(TOOL, {"prompt": "q", "files": ["notes.txt"]}))
    assert plain["status"] == "ok" and offered_tools(sim) == set()
    assert (files["failure_reason"], files["error"]) == (
        "invalid_arguments",
        "invalid argument files: must be at most 16 paths of UTF-8 text files or PNG, JPEG, WebP or GIF images "
        "inside the allowed roots (the client's MCP roots, else FUSION_FILES_ROOTS), together within "
        "FUSION_FILES_MAX_BYTES (this server reads its files only for callers that use its own key, see "
        "FUSION_PASS_THROUGH_SERVER_TOOLS)",
    )
    assert "the server's own notes" not in json.dumps([r.body for r in sim.requests])
    sim.reset()
    async with over_http(lending, ALICE) as client:
        own = structured(await client.call_tool(TOOL, {"prompt": "q", "files": ["notes.txt"]}))
    assert own["status"] == "ok" and offered_tools(sim) == {"web_search", "web_fetch"}


@pytest.mark.anyio
async def test_the_operator_may_lend_the_servers_tools_too(sim: ProviderSim, _roots: Path) -> None:
    env = lending_env(sim, _roots, FUSION_PASS_THROUGH_SERVER_TOOLS="true")
    with servers.in_process(env) as base:
        async with over_http(base, LENT) as client:
            result = structured(await client.call_tool(TOOL, {"prompt": "q", "files": ["notes.txt"]}))
    assert result["status"] == "ok" and offered_tools(sim) == {"web_search", "web_fetch"}
    assert "the server's own notes" in json.dumps([r.body for r in sim.requests])


@pytest.mark.anyio
async def test_lent_keys_have_run_slots_of_their_own(sim: ProviderSim, _roots: Path) -> None:
    """One slot for every lent key together: a second key waits, then is told which setting holds it, while a
    token holder's run goes ahead in the token holders' slots."""
    for model in PANEL:
        sim.scripts[model] = lambda body: Reply(latency=3) if "slow" in json.dumps(body["messages"]) else Reply()
    env = lending_env(sim, _roots, FUSION_PASS_THROUGH_MAX_CONCURRENT="1", FUSION_QUEUE_TIMEOUT_S="0.3")
    with servers.in_process(env) as base:
        async with anyio.create_task_group() as tg, over_http(base, LENT) as first:
            tg.start_soon(first.call_tool, TOOL, {"prompt": "slow, on the first key"})
            await wait_until(lambda: len(sim.requests) == 3)
            async with over_http(base, OTHER) as second:
                busy = structured(await second.call_tool(TOOL, {"prompt": "second key"}))
            async with over_http(base, ALICE) as alice:
                served = structured(await alice.call_tool(TOOL, {"prompt": "alice"}))
            tg.cancel_scope.cancel()
    assert (busy["failure_reason"], busy["error"]) == (
        "server_busy",
        "server busy: 1 fusion run in progress (FUSION_PASS_THROUGH_MAX_CONCURRENT, for callers paying with their own "
        "key) and none finished within 0.3 s; try again shortly",
    )
    assert served["status"] == "ok"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {},
            "invalid setting FUSION_PASS_THROUGH_KEY_PREFIX: must be set with FUSION_PASS_THROUGH_KEY=true and a "
            "provider other than OpenRouter: it says how the keys callers lend start (sk-proj-, say); without it any "
            "bearer would be sent on as a key, and a provider that checks no keys (Ollama, vLLM, a gateway) would "
            "serve anyone",
        ),
        (
            {"FUSION_PASS_THROUGH_KEY_PREFIX": "alice-"},
            "invalid setting FUSION_PASS_THROUGH_KEY_PREFIX: a server token starts with the lent-key prefix "
            "'alice-', so a mistyped token would be sent to the provider as a key: choose tokens (or a prefix) "
            "that differ",
        ),
    ],
    ids=["no-prefix-off-openrouter", "a-token-shares-the-prefix"],
)
def test_pass_through_that_would_take_any_bearer_is_refused_at_start(
    sim: ProviderSim, extra: dict[str, str], message: str
) -> None:
    env = sim_env(sim, FUSION_HTTP_TOKENS=f"alice:{ALICE}", FUSION_PASS_THROUGH_KEY="true", **extra)
    out = subprocess.run(
        [console_script(), "serve", "--transport", "http", "--port", str(servers.free_port())],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert (out.returncode, out.stderr) == (2, f"fusion-mcp: {message}\n")
    assert ALICE not in out.stderr
