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
from mcp import Client, StdioServerParameters

from bench.common import fusion_command, median, panel, report, server_env, simulator, spread

PROFILES = {
    "realistic": {"members": (0.4, 1.1), "analyst": 0.5},
    "instant": {"members": (0.02, 0.09), "analyst": 0.02},
}


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
                walls = []
                for i in range(warmup + runs):
                    started = time.perf_counter()
                    result = await client.call_tool("openrouter_fusion", args)
                    wall = time.perf_counter() - started
                    assert not result.is_error and result.structured_content["status"] == "ok"
                    if i >= warmup:
                        walls.append(wall)
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
                        "runs": runs,
                    }
                )
                print(
                    f"{profile:9} n={n} stream={stream!s:5} critical={critical * 1000:7.1f} ms "
                    f"median={wall * 1000:7.1f} ms ratio={wall / critical:.4f} "
                    f"added={(wall - critical) * 1000:6.1f} ms",
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
