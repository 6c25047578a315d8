"""The Responses API against the chat endpoint: what ``/v1/responses`` costs on top of the same turn on
``/v1/chat/completions``, on one ``fusion-mcp serve``.

1. Direct answer: the writer (instant, and 200 ms) is offered fusion and answers at once; streamed and not.
2. Fused turn: the writer calls fusion, a panel of 3 (400-1100 ms) and the analyst run, the writer answers;
   streamed (every panel delta as an event on /v1/responses) and not.

Each case sends the same turn to both endpoints, alternately, each over its own kept-alive connection, read
to its last byte; the ratio of the medians is the Responses API's overhead. Target: within 5 %.

    python -m bench.responses [--runs 30] [--fused-runs 7] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import anyio
import httpx2

from bench.common import http_server, median, panel, report, server_env, simulator, spread

QUESTION = "benchmark question"
FUSED = {"writer": 0.3, "members": (0.4, 1.1), "analyst": 0.5}


async def timed(http: httpx2.AsyncClient, url: str, body: dict[str, Any]) -> float:
    """Seconds for one request, read to its end (a stream to its last byte)."""
    started = time.perf_counter()
    async with http.stream("POST", url, json=body) as response:
        await response.aread()
        response.raise_for_status()
    return time.perf_counter() - started


async def compare(
    server: str, case: str, model: str, plugin: dict[str, Any], stream: bool, runs: int, warmup: int
) -> dict[str, Any]:
    chat_body = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "plugins": [plugin]}
    responses_body = {"model": model, "input": QUESTION, "plugins": [plugin]}
    if stream:
        chat_body |= {"stream": True, "stream_options": {"include_usage": True}}
        responses_body["stream"] = True
    chat: list[float] = []
    responses: list[float] = []
    async with httpx2.AsyncClient(timeout=120) as to_chat, httpx2.AsyncClient(timeout=120) as to_responses:
        for i in range(warmup + runs):
            c = await timed(to_chat, f"{server}/v1/chat/completions", chat_body)
            r = await timed(to_responses, f"{server}/v1/responses", responses_body)
            if i >= warmup:
                chat.append(c)
                responses.append(r)
    row = {
        "case": case,
        "stream": stream,
        "chat_median_ms": round(median(chat) * 1000, 2),
        "responses_median_ms": round(median(responses) * 1000, 2),
        "ratio": round(median(responses) / median(chat), 4),
        "added_ms": round((median(responses) - median(chat)) * 1000, 2),
        "runs": runs,
    }
    print(
        f"{case:<22} stream={stream!s:<5} chat {row['chat_median_ms']:8.2f} ms, responses "
        f"{row['responses_median_ms']:8.2f} ms, ratio {row['ratio']:.4f} ({row['added_ms']:+.2f} ms)",
        flush=True,
    )
    return row


async def rows_for(server: str, runs: int, warmup: int, fused_runs: int, fused_warmup: int) -> list[dict[str, Any]]:
    rows = []
    for latency in (0.0, 0.2):
        writer = f"bench/writer-lat{round(latency * 1000)}ms"
        for stream in (False, True):
            case = f"direct_{round(latency * 1000)}ms"
            rows.append(await compare(server, case, writer, {"id": "fusion"}, stream, runs, warmup))
    members = panel(spread(3, *FUSED["members"]))
    analyst = f"bench/judge-lat{round(FUSED['analyst'] * 1000)}ms"
    writer = f"bench/writer-fuses-lat{round(FUSED['writer'] * 1000)}ms"
    plugin = {"id": "fusion", "analysis_models": members, "model": analyst}
    for stream in (False, True):
        rows.append(await compare(server, "fused_3_members", writer, plugin, stream, fused_runs, fused_warmup))
    return rows


async def main_async(args: argparse.Namespace) -> None:
    runs, warmup = (2, 1) if args.quick else (args.runs, 5)
    fused_runs, fused_warmup = (1, 0) if args.quick else (args.fused_runs, 2)
    with simulator() as sim:
        async with http_server(server_env(sim.base)) as server:
            rows = await rows_for(server, runs, warmup, fused_runs, fused_warmup)
    report("responses", {"rows": rows}, args.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="direct answers per case (after 5 warm-ups)")
    parser.add_argument("--fused-runs", type=int, default=7, help="fused turns per case (after 2 warm-ups)")
    parser.add_argument("--quick", action="store_true", help="a couple of runs of each (CI smoke test)")
    parser.add_argument("--out", help="also write the JSON report here")
    anyio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
