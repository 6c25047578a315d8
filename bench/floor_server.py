"""The floors fusion-mcp is measured against: the same libraries doing only the work a fusion call cannot avoid.

- ``--stdio`` / ``--http PORT``: the MCP SDK's own ``MCPServer`` with one tool, ``openrouter_fusion``, that
  streams every panel member at once with httpx2 (``EventSource`` + ``json.loads``), then asks the analyst
  (one JSON request) and returns the answers and the analysis. Listing its tools is the start-up floor
  (httpx2 is imported on its first call, as fusion-mcp loads what a call needs on first use); a call is the
  per-call and load floor.
- ``--read BASE --runs N MODEL...``: the bare reader, no MCP at all: the same fan-out N times in a loop,
  printing the CPU seconds each took as JSON (the streaming floor).

    python -m bench.floor_server --stdio | --http PORT | --read BASE --runs N --analyst MODEL MODEL...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer

BASE = os.environ.get("OPENROUTER_BASE_URL", "")
server = MCPServer("floor", log_level="WARNING")
_client: Any = None


async def fan_out(http: Any, prompt: str, members: list[str], analyst: str) -> dict[str, Any]:
    """Stream every member at once, then the analyst: the work of a fusion call, nothing else."""
    import httpx2

    answers: dict[str, str] = {}

    async def member(model: str) -> None:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        parts: list[str] = []
        async with http.stream("POST", "/chat/completions", json=body) as response:
            async for event in httpx2.EventSource(response):
                if not event.data or event.data == "[DONE]":
                    continue
                chunk = json.loads(event.data)
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        parts.append(text)
        answers[model] = "".join(parts)

    async with anyio.create_task_group() as tg:
        for model in members:
            tg.start_soon(member, model)
    labels = [f"Model {chr(65 + i)}" for i in range(len(members))]
    material = "\n\n".join(f"{label}:\n{answers[m]}" for label, m in zip(labels, members, strict=True))
    body = {
        "model": analyst,
        "messages": [{"role": "user", "content": f"{prompt}\n\n{material}"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "analysis", "strict": True, "schema": _schema(labels)},
        },
    }
    response = await http.post("/chat/completions", json=body)
    analysis = json.loads(response.json()["choices"][0]["message"]["content"])
    return {
        "status": "ok",
        "responses": [{"model": m, "content": answers[m]} for m in members],
        "analysis": analysis,
    }


def _schema(labels: list[str]) -> dict[str, Any]:
    """The least of the analysis schema: the labels an insight may name (what the simulator reads)."""
    insight = {"type": "object", "properties": {"model": {"type": "string", "enum": labels}}}
    return {"type": "object", "properties": {"unique_insights": {"type": "array", "items": insight}}}


@server.tool()
async def openrouter_fusion(prompt: str, analysis_models: list[str], model: str) -> dict[str, Any]:
    """Ask every model in the panel at once, then have the analyst compare their answers."""
    global _client
    if _client is None:
        import httpx2

        limits = httpx2.Limits(max_connections=256, max_keepalive_connections=256)
        _client = httpx2.AsyncClient(base_url=BASE, timeout=600, limits=limits)
    return await fan_out(_client, prompt, analysis_models, model)


async def read(base: str, runs: int, members: list[str], analyst: str) -> list[float]:
    import httpx2

    seconds = []
    async with httpx2.AsyncClient(base_url=base, timeout=600) as http:
        for _ in range(runs):
            cpu = time.process_time()
            await fan_out(http, "benchmark question", members, analyst)
            seconds.append(time.process_time() - cpu)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--stdio", action="store_true")
    mode.add_argument("--http", type=int, metavar="PORT")
    mode.add_argument("--read", metavar="BASE")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--analyst", default="")
    parser.add_argument("members", nargs="*")
    args = parser.parse_args()
    if args.stdio:
        server.run("stdio")
    elif args.http:
        server.run("streamable-http", port=args.http)
    else:
        json.dump(anyio.run(read, args.read, args.runs, args.members, args.analyst), sys.stdout)


if __name__ == "__main__":
    main()
