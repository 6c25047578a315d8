"""Small helpers shared by the test modules."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from fusion_mcp.core.models import FusionResult

MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
"""What a Streamable HTTP client sends with every POST."""
LEGACY = "2025-11-25"
"""The protocol era with sessions."""
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
"""A 2025-era ``initialize`` request, for raw HTTP tests."""

TOOL = "openrouter_fusion"


def structured(result: CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None, result.content
    FusionResult.model_validate(result.structured_content)  # the contract holds on every path
    return result.structured_content


def text(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


def dump(result: CallToolResult) -> str:
    """Everything a host could see, for secret checks."""
    return text(result) + json.dumps(result.structured_content or {})


def wait_for(predicate: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Blocking :func:`wait_until`, for tests that drive subprocesses: fails (not carries on) at the limit."""
    end = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < end, f"condition not reached within {limit_s:g} s"
        time.sleep(0.02)


async def wait_until(predicate: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Poll a condition the simulator's thread makes true; fail (not hang) if it never does."""
    with anyio.fail_after(limit_s):
        while not predicate():  # noqa: ASYNC110 - the state lives in another thread, no Event to wait on
            await anyio.sleep(0.01)


ANALYSIS_KEYS = {"consensus", "contradictions", "partial_coverage", "unique_insights", "blind_spots"}


async def call_then_cancel(client: Any, ready: Callable[[], bool], prompt: str = "q") -> None:
    """Start a fusion call, wait until ``ready()`` (seen at the simulator), then cancel the call."""
    async with anyio.create_task_group() as tg:

        async def run_call() -> None:
            await client.call_tool(TOOL, {"prompt": prompt})

        tg.start_soon(run_call)
        await wait_until(ready)
        tg.cancel_scope.cancel()


_FENCED = re.compile(r'<(answer-[0-9a-f]{16}) model="(Model [A-Z])"( truncated="true")?>\n(.*?)\n</\1>', re.DOTALL)


def fenced_answers(prompt: str) -> list[tuple[str, bool, str]]:
    """The answers an analyst request shows: (label, truncated, text), in the order shown."""
    return [(m.group(2), bool(m.group(3)), m.group(4)) for m in _FENCED.finditer(prompt)]


def shown_labels(sim: Any) -> dict[str, str]:
    """Label -> panel model, read from the analyst's request (answers the simulator wrote name their model)."""
    request = next(r for r in sim.requests if "response_format" in r.body)
    found = fenced_answers(request.body["messages"][1]["content"])
    return {label: text.removeprefix("Answer from ").split(":", 1)[0] for label, _, text in found}


def read_sse(lines: Iterable[str]) -> tuple[list[Any], list[str]]:
    """(every ``data`` payload, JSON-decoded except ``[DONE]``; every comment) of an SSE stream, in order."""
    events: list[Any] = []
    comments: list[str] = []
    for line in lines:
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
        elif line.startswith(":"):
            comments.append(line[1:].strip())
    return events, comments


def recorded(run_id: str) -> dict[str, Any]:
    """A run's record in the session's history, as the operator reads it (``fusion-mcp runs show ID --json``)."""
    from tests.conftest import HOME_DIR, child_env, console_script

    out = subprocess.run(
        [console_script(), "runs", "show", run_id, "--json"],
        env=child_env(FUSION_HOME=HOME_DIR),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@asynccontextmanager
async def over_http(base: str, token: str | None = None) -> AsyncIterator[Client]:
    """An MCP client of the server at ``base`` over Streamable HTTP, with ``token`` as its bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    http = httpx2.AsyncClient(headers=headers, timeout=60)
    async with http, Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client:
        yield client


def with_a_terminal(command: list[str], **options: Any) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run ``command`` with its stderr on a pseudo-terminal (as a person's shell gives it; stdout piped), and
    return it with everything it drew there: live progress is drawn only for a terminal."""
    import os

    master, slave = os.openpty()
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=slave, text=True, **options)
        os.close(slave)
        screen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal's other end is closed: all of it has been read
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(master)
    return done, screen.decode()
