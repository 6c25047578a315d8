"""Overhead: one fusion call through a real MCP client over stdio, against its simulated critical path.

The critical path is the slowest member plus the analyst, as the simulator delays them. Reported twice:
as a ratio with realistic latencies (members 0.4-1.1 s, analyst 0.5 s) and as added milliseconds with
near-instant members (20-90 ms, analyst 20 ms), where only the server's own cost remains. Panels of 1, 3
and 8 members, streaming on and off; the median of several runs after a warm-up.

    python -m bench.overhead [--runs 7] [--warmup 2] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import time

import anyio
import httpx2
from mcp import Client, StdioServerParameters

from bench.common import fusion_command, median, panel, report, server_env, simulator, spread
from fusion_mcp.engine.analyst import analysis_schema, labels

PROFILES = {
    "realistic": {"members": (0.4, 1.1), "analyst": 0.5},
    "instant": {"members": (0.02, 0.09), "analyst": 0.02},
}


async def direct_path(base: str, member: str, analyst: str, n: int, stream: bool, runs: int) -> float:
    """The critical path as the simulator delivers it: the slowest member's request, then the analyst's,
    sent by a bare HTTP client. Subtracting it leaves what the server adds, not the simulator's own cost."""
    schema = analysis_schema(labels(n))
    member_body = {"model": member, "messages": [{"role": "user", "content": "q"}], "max_completion_tokens": 100}
    if stream:
        member_body |= {"stream": True, "stream_options": {"include_usage": True}}
    analyst_body = {
        "model": analyst,
        "messages": [{"role": "user", "content": "q"}],
        "max_completion_tokens": 100,
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "strict": True, "schema": schema}},
    }
    times = []
    async with httpx2.AsyncClient(base_url=base, timeout=60) as http:
        for i in range(runs + 1):
            started = time.perf_counter()
            async with http.stream("POST", "/chat/completions", json=member_body) as response:
                await response.aread()
            (await http.post("/chat/completions", json=analyst_body)).raise_for_status()
            if i:
                times.append(time.perf_counter() - started)
    return median(times)


async def measure(base: str, stream: bool, sizes: list[int], runs: int, warmup: int) -> list[dict]:
    env = server_env(base, FUSION_STREAM=str(stream).lower())
    rows = []
    async with Client(StdioServerParameters(command=fusion_command(), env=env), mode="legacy") as client:
        for profile, spec in PROFILES.items():
            for n in sizes:
                latencies = spread(n, *spec["members"])
                args = {
                    "prompt": "benchmark question",
                    "analysis_models": panel(latencies),
                    "model": f"bench/judge-lat{round(spec['analyst'] * 1000)}ms",
                }
                critical = max(latencies) + spec["analyst"]
                delivered = await direct_path(base, args["analysis_models"][-1], args["model"], n, stream, runs)
                walls, inside, client_cpu = [], [], []
                for i in range(warmup + runs):
                    started, cpu = time.perf_counter(), time.process_time()
                    result = await client.call_tool("openrouter_fusion", args)
                    wall = time.perf_counter() - started
                    assert not result.is_error and result.structured_content["status"] == "ok"
                    if i >= warmup:
                        walls.append(wall)
                        inside.append(result.structured_content["timings"]["total"])
                        client_cpu.append(time.process_time() - cpu)
                wall = median(walls)
                rows.append(
                    {
                        "profile": profile,
                        "members": n,
                        "stream": stream,
                        "critical_path_ms": round(critical * 1000, 1),
                        "median_ms": round(wall * 1000, 1),
                        "ratio": round(wall / critical, 4),
                        "added_ms": round((wall - critical) * 1000, 1),
                        # Of the added time: the pipeline's own (its timings.total over the critical path)
                        # and the CPU the SDK's client spent on the call in this process.
                        "pipeline_added_ms": round((median(inside) - critical) * 1000, 1),
                        # Against the critical path as the simulator really delivers it (measured directly).
                        "delivered_path_ms": round(delivered * 1000, 1),
                        "server_added_ms": round((wall - delivered) * 1000, 1),
                        "server_ratio": round(wall / delivered, 4),
                        "client_cpu_ms": round(median(client_cpu) * 1000, 1),
                        "runs": runs,
                    }
                )
                print(
                    f"{profile:9} n={n} stream={stream!s:5} critical={critical * 1000:7.1f} ms "
                    f"median={wall * 1000:7.1f} ms ratio={wall / critical:.4f} "
                    f"added={(wall - critical) * 1000:6.1f} ms (pipeline {(median(inside) - critical) * 1000:5.1f}, "
                    f"client CPU {median(client_cpu) * 1000:4.1f}) | over delivered path {delivered * 1000:7.1f} ms: "
                    f"+{(wall - delivered) * 1000:5.1f} ms, ratio {wall / delivered:.4f}",
                    flush=True,
                )
    return rows


async def main_async(args: argparse.Namespace) -> None:
    sizes = [1, 3] if args.quick else [1, 3, 8]
    runs, warmup = (1, 0) if args.quick else (args.runs, args.warmup)
    with simulator() as sim:
        rows = []
        for stream in (True, False):
            rows += await measure(sim.base, stream, sizes, runs, warmup)
    report("overhead", {"rows": rows}, args.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one run of small panels (CI smoke test)")
    parser.add_argument("--out", help="also write the JSON report here")
    anyio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
