"""Start-up does no work the first call could do: the run machinery (engine, store, connection pools) opens
when first needed, web tools load when first used (a server started with them off never imports the
fetcher or lxml), the TLS context on the first HTTPS request (never for an http:// provider)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client

from fusion_mcp.cli import YOUNG_COLLECTION_AFTER
from fusion_mcp.config import load_settings
from fusion_mcp.engine.service import FusionService
from fusion_mcp.mcp_server.handle import ServiceHandle, ServiceUnavailable
from fusion_mcp.mcp_server.server import create_server
from fusion_mcp.providers.client import new_http_client
from fusion_mcp.store.sqlite import DB_NAME
from tests.conftest import API_KEY, child_env, run_python, sim_env
from tests.fakes.provider_sim import ProviderSim
from tests.fakes.web import TlsSite
from tests.helpers import TOOL, structured, wait_until

WEB_MODULES = (
    "lxml",
    "trafilatura",
    "ddgs",
    "h2",
    "fusion_mcp.web.fetch",
    "fusion_mcp.web.search",
    "fusion_mcp.web.tools",
)
RUN_MODULES = (
    "fusion_mcp.engine.service",
    "fusion_mcp.engine.pipeline",
    "fusion_mcp.providers.client",
    "fusion_mcp.store",
)
"""The run machinery: loaded when the service opens, not to list tools (nor to check a call's arguments)."""
SCRIPT = f"""
import math
import sys

import anyio
from mcp import Client

import fusion_mcp.cli.main  # what the console script imports before it serves
from fusion_mcp.config import load_settings
from fusion_mcp.core.tls import default_tls
from fusion_mcp.mcp_server.server import create_server


def report(when: str) -> None:
    web = {WEB_MODULES!r}
    loaded = sorted(m for m in sys.modules if m in web or m.split(".")[0] in web)
    print(when, loaded, "TLS contexts", default_tls.cache_info().currsize, file=sys.stderr)
    run = sorted(m for m in {RUN_MODULES!r} if m in sys.modules)
    print(when, "run machinery", run, file=sys.stderr)


async def main() -> None:
    # Opened on the first call only (not also a moment after start), so what listing needs is seen alone.
    async with Client(create_server(load_settings(), open_after_s=math.inf)) as client:
        await client.list_tools()
        report("STARTED")
        result = await client.call_tool("openrouter_fusion", {{"prompt": "q"}})
    print("STATUS", result.structured_content["status"], file=sys.stderr)


anyio.run(main)
report("CALLED")
"""


@pytest.mark.parametrize(
    ("web_tools", "loaded", "tls"),
    [
        # The provider (the simulator) is reached over http://: no TLS context is loaded.
        ("off", [], 0),
        # Ours: the tool box is made for the first run (its search client and fetcher share the process's TLS
        # context); lxml and ddgs wait for the first page or search.
        ("local", ["fusion_mcp.web.fetch", "fusion_mcp.web.search", "fusion_mcp.web.tools"], 1),
    ],
)
def test_the_stdio_server_imports_the_web_tools_only_when_they_are_on(
    sim: ProviderSim, web_tools: str, loaded: list[str], tls: int
) -> None:
    env = child_env(**sim_env(sim, FUSION_WEB_TOOLS=web_tools))
    out = run_python(SCRIPT, env=env)
    assert "STATUS ok" in out.stderr, out.stderr
    assert "STARTED [] TLS contexts 0" in out.stderr, out.stderr  # started and listed its tools: nothing yet
    assert "STARTED run machinery []" in out.stderr, out.stderr
    assert f"CALLED run machinery {sorted(RUN_MODULES)!r}" in out.stderr, out.stderr
    assert f"CALLED {loaded!r} TLS contexts {tls}" in out.stderr, out.stderr


def test_the_command_sets_the_collector_before_it_loads_the_sdk_and_pydantic() -> None:
    """What the console script (and ``python -m fusion_mcp``, a worker) imports first sets the collector, so
    the imports of a start are collected at its thresholds too."""
    code = (
        "import gc, sys\n"
        "import fusion_mcp.cli\n"
        "print(gc.get_threshold()[0], sorted(m for m in ('mcp', 'pydantic', 'anyio', 'httpx2') if m in sys.modules))\n"
    )
    out = run_python(code)
    assert out.stdout.split("\n")[0] == f"{YOUNG_COLLECTION_AFTER} []", out.stderr


def test_the_command_line_builds_its_parser_without_the_eval_engine() -> None:
    """Every ``fusion-mcp`` command builds the whole parser, ``eval`` included (bare ``fusion-mcp``, what a host
    starts, builds none): the eval's runner, grading and report load only when an eval runs."""
    code = (
        "import sys\n"
        "from fusion_mcp.cli.main import _parser\n"
        "_parser().parse_args(['eval', '--help'] if len(sys.argv) > 1 else [])\n"
        "print(sorted(m for m in sys.modules if m.startswith('fusion_mcp.evals.')))\n"
    )
    out = run_python(code)
    assert out.stdout.strip() == "['fusion_mcp.evals.questions']", out.stderr
    shown = run_python(code, "help")
    assert "'sample' (the built-in set)" in shown.stdout and "--concurrency N" in shown.stdout, shown.stderr


@pytest.mark.anyio
async def test_the_provider_pool_verifies_https_with_the_process_context() -> None:
    """Made on first use, the HTTPS side is not weakened: a certificate from an unknown CA is refused."""
    site = TlsSite()
    try:
        async with new_http_client() as http:
            with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.get(f"https://127.0.0.1:{site.port}/page")
            # Plain HTTP to the same port goes through the other pool, without TLS: the server hangs up on it.
            with pytest.raises(httpx2.RemoteProtocolError, match="Server disconnected without sending a response"):
                await http.get(f"http://127.0.0.1:{site.port}/page")
    finally:
        site.close()


@pytest.mark.anyio
async def test_a_proxy_in_the_environment_still_carries_provider_requests(
    sim: ProviderSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a proxy set, httpx2 builds the transport itself (its proxies come from the environment only then)."""
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", sim.base_url.split("/api/")[0])  # the simulator stands in for the proxy
    async with new_http_client() as http:
        response = await http.get("http://provider.invalid/api/v1/models")  # a name that resolves nowhere
    # The simulator's server got it (it routes no absolute-form target, hence its 404): no lookup was tried.
    assert (response.status_code, response.headers["server"], response.text) == (404, "uvicorn", "Not Found")


@pytest.mark.anyio
async def test_a_server_nobody_calls_opens_its_service_a_moment_after_start(sim: ProviderSim, tmp_path: Path) -> None:
    """Listing tools opens nothing; the store appears once the service opens, on its own after ``open_after_s``
    (so a server nobody calls still checks its models), or at the first call."""
    settings = load_settings(environ=sim_env(sim, FUSION_HOME=str(tmp_path)))
    async with Client(create_server(settings, open_after_s=math.inf)) as client:
        await client.list_tools()
    assert not (tmp_path / DB_NAME).exists()
    async with Client(create_server(settings, open_after_s=math.inf)) as client:
        assert structured(await client.call_tool(TOOL, {"prompt": "q"}))["status"] == "ok"
        assert (tmp_path / DB_NAME).exists()
    (tmp_path / DB_NAME).unlink()
    async with Client(create_server(settings, open_after_s=0.1)):
        await wait_until(lambda: (tmp_path / DB_NAME).exists())


@pytest.mark.anyio
async def test_a_service_that_cannot_open_fails_each_call_naming_the_cause_in_the_log(
    sim: ProviderSim, caplog: pytest.LogCaptureFixture
) -> None:
    """Every call gets an error result (the server keeps serving); the cause's text, which may quote a
    setting, goes to the log only."""
    settings = load_settings(environ=sim_env(sim))

    @asynccontextmanager
    async def unopenable() -> AsyncIterator[FusionService]:
        raise OSError(f"no room for the pools (key {API_KEY})")
        yield  # pragma: no cover - never reached: an async generator for asynccontextmanager

    async with Client(create_server(settings, service=unopenable)) as client:
        for _ in range(2):
            data = structured(await client.call_tool(TOOL, {"prompt": "q"}))
            assert (data["status"], data["failure_reason"], data["error"]) == (
                "error",
                "unexpected_error",
                "the server could not open its run service (OSError); its log says why",
            )
        with pytest.raises(Exception, match=r"the server could not open its run service \(OSError\)"):
            await client.read_resource("fusion://runs")
    assert API_KEY not in str(data)
    opened = [r for r in caplog.records if r.getMessage().startswith("the run service could not be opened")]
    cause = f"the run service could not be opened: no room for the pools (key {API_KEY})"
    assert [r.getMessage() for r in opened] == [cause]


@pytest.mark.anyio
async def test_a_request_that_comes_as_the_server_stops_is_told_so_and_opens_nothing() -> None:
    """Once the lifespan has ended, asking for the service neither hangs nor opens it: the request is told the
    server is stopping."""
    opened: list[str] = []

    @asynccontextmanager
    async def service() -> AsyncIterator[FusionService]:
        opened.append("opened")
        raise AssertionError("a stopping server opens nothing")
        yield  # pragma: no cover - never reached: an async generator for asynccontextmanager

    handle = ServiceHandle()
    async with handle.kept(service, open_after_s=math.inf):
        pass
    with anyio.fail_after(10), pytest.raises(ServiceUnavailable, match=r"^the server is stopping: no new runs$"):
        await handle.get()
    assert opened == []
