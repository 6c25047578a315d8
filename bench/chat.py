"""Chat completions: what the endpoint adds to a direct answer, and to a fused turn's critical path.

1. Direct answer: the writer is offered fusion and answers at once. The same request is sent straight to
   the simulator and through ``fusion-mcp serve`` (``/v1/chat/completions`` with a fusion plugin), each over
   its own kept-alive connection, alternately; the difference of the medians is what the server adds.
   Streaming on and off, with an instant writer and a 200 ms one. Target: <= 5 ms.
2. Fused turn: the writer calls fusion, the panel and the analyst run, the writer answers. Its critical path
   is writer + slowest member + analyst + writer, as the simulator is told (nominal) and as it really
   serves those four requests one after another (delivered, measured with a bare HTTP client).

    python -m bench.chat [--runs 30] [--fused-runs 7] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import anyio
import httpx2

from bench.common import (
    http_server,
    median,
    panel,
    percentile,
    report,
    server_env,
    simulator,
    spread,
)
from fusion_mcp.engine.analyst import analysis_schema, labels
from fusion_mcp.openai_api.writer import FUSION_FUNCTION

USER = [{"role": "user", "content": "benchmark question"}]
FUSED_PROFILE = {"writer": 0.3, "members": (0.4, 1.1), "analyst": 0.5}


async def timed(http: httpx2.AsyncClient, url: str, body: dict[str, Any]) -> float:
    """Seconds for one request, read to its end (a stream to its last byte)."""
    started = time.perf_counter()
    async with http.stream("POST", url, json=body) as response:
        await response.aread()
        response.raise_for_status()
    return time.perf_counter() - started


async def direct_answers(sim_base: str, server: str, runs: int, warmup: int) -> list[dict[str, Any]]:
    rows = []
    async with httpx2.AsyncClient(timeout=60) as to_sim, httpx2.AsyncClient(timeout=60) as to_server:
        for latency in (0.0, 0.2):
            writer = f"bench/writer-lat{round(latency * 1000)}ms"
            for stream in (False, True):
                extra: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
                # Exactly what the server sends the writer: the caller's request plus the fusion tool.
                upstream = {"model": writer, "messages": USER, "tools": [FUSION_FUNCTION], **extra}
                through = {"model": writer, "messages": USER, "plugins": [{"id": "fusion"}], **extra}
                direct, served = [], []
                for i in range(warmup + runs):
                    d = await timed(to_sim, f"{sim_base}/chat/completions", upstream)
                    s = await timed(to_server, f"{server}/v1/chat/completions", through)
                    if i >= warmup:
                        direct.append(d)
                        served.append(s)
                added = [(s - d) * 1000 for s, d in zip(served, direct, strict=True)]
                row = {
                    "case": "direct_answer",
                    "writer_ms": round(latency * 1000),
                    "stream": stream,
                    "provider_direct_ms": round(median(direct) * 1000, 2),
                    "through_server_ms": round(median(served) * 1000, 2),
                    "added_ms": round((median(served) - median(direct)) * 1000, 2),
                    "added_ms_p90": round(percentile(added, 90), 2),
                    "runs": runs,
                }
                rows.append(row)
                print(
                    f"direct answer, writer {row['writer_ms']:3} ms, stream={stream!s:5}: provider "
                    f"{row['provider_direct_ms']:7.2f} ms, through the server {row['through_server_ms']:7.2f} ms, "
                    f"added {row['added_ms']:5.2f} ms (p90 of pairs {row['added_ms_p90']:5.2f})",
                    flush=True,
                )
    return rows


async def delivered_path(sim_base: str, writer: str, member: str, analyst: str, n: int, runs: int) -> float:
    """The fused turn's four sequential requests, sent straight to the simulator."""
    decide = {"model": writer, "messages": USER, "tools": [FUSION_FUNCTION]}
    call = {"id": "call_fuse", "type": "function", "function": {"name": "openrouter_fusion", "arguments": "{}"}}
    turn = [{"role": "assistant", "content": None, "tool_calls": [call]}]
    turn.append({"role": "tool", "tool_call_id": "call_fuse", "content": "{}"})
    answer = {"model": writer, "messages": [*USER, *turn], "tools": [FUSION_FUNCTION]}
    member_body = {"model": member, "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    schema = analysis_schema(labels(n))
    analyst_body = {
        "model": analyst,
        "messages": USER,
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "strict": True, "schema": schema}},
    }
    times = []
    async with httpx2.AsyncClient(base_url=sim_base, timeout=60) as http:
        for i in range(runs + 1):
            started = time.perf_counter()
            for body in (decide, member_body, analyst_body, answer):
                await timed(http, "/chat/completions", body)
            if i:
                times.append(time.perf_counter() - started)
    return median(times)


async def fused_turns(sim_base: str, server: str, sizes: list[int], runs: int, warmup: int) -> list[dict[str, Any]]:
    rows = []
    spec = FUSED_PROFILE
    writer = f"bench/writer-fuses-lat{round(spec['writer'] * 1000)}ms"
    analyst = f"bench/judge-lat{round(spec['analyst'] * 1000)}ms"
    async with httpx2.AsyncClient(timeout=120) as http:
        for n in sizes:
            latencies = spread(n, *spec["members"])
            members = panel(latencies)
            plugin = {"id": "fusion", "analysis_models": members, "model": analyst}
            body = {"model": writer, "messages": USER, "plugins": [plugin]}
            critical = 2 * spec["writer"] + max(latencies) + spec["analyst"]
            delivered = await delivered_path(sim_base, writer, members[-1], analyst, n, runs)
            walls = []
            for i in range(warmup + runs):
                started = time.perf_counter()
                response = await http.post(f"{server}/v1/chat/completions", json=body)
                wall = time.perf_counter() - started
                data = response.json()
                assert data["fusion"]["status"] == "ok", data
                if i >= warmup:
                    walls.append(wall)
            wall = median(walls)
            row = {
                "case": "fused_turn",
                "members": n,
                "critical_path_ms": round(critical * 1000, 1),
                "median_ms": round(wall * 1000, 1),
                "ratio": round(wall / critical, 4),
                "added_ms": round((wall - critical) * 1000, 1),
                "delivered_path_ms": round(delivered * 1000, 1),
                "server_added_ms": round((wall - delivered) * 1000, 1),
                "server_ratio": round(wall / delivered, 4),
                "runs": runs,
            }
            rows.append(row)
            print(
                f"fused turn, {n} members: critical {row['critical_path_ms']:7.1f} ms, median "
                f"{row['median_ms']:7.1f} ms, ratio {row['ratio']:.4f}, added {row['added_ms']:5.1f} ms | over "
                f"delivered {row['delivered_path_ms']:7.1f} ms: +{row['server_added_ms']:5.1f} ms, "
                f"ratio {row['server_ratio']:.4f}",
                flush=True,
            )
    return rows


async def main_async(args: argparse.Namespace) -> None:
    runs, warmup = (2, 1) if args.quick else (args.runs, 5)
    fused_runs, fused_warmup = (1, 0) if args.quick else (args.fused_runs, 2)
    sizes = [3] if args.quick else [1, 3, 8]
    with simulator() as sim:
        async with http_server(server_env(sim.base)) as server:
            rows = await direct_answers(sim.base, server, runs, warmup)
            rows += await fused_turns(sim.base, server, sizes, fused_runs, fused_warmup)
    report("chat", {"rows": rows}, args.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="direct answers per case (after 5 warm-ups)")
    parser.add_argument("--fused-runs", type=int, default=7, help="fused turns per panel size (after 2 warm-ups)")
    parser.add_argument("--quick", action="store_true", help="a couple of runs of each (CI smoke test)")
    parser.add_argument("--out", help="also write the JSON report here")
    anyio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
