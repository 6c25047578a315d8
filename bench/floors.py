"""fusion-mcp against its floors: the same figures for the server and for the MCP SDK doing only what a call
cannot avoid (``bench/floor_server.py``), side by side in one run, each as a ratio to its floor.

- **start**: spawn over stdio to the answer of ``tools/list`` (the SDK's client, the same for both);
- **load**: 32 clients over Streamable HTTP, 3 calls each, against a 200 ms critical path (3 members of
  100-150 ms, analyst 50 ms): the added time's p50 and p99, and the server's CPU per call;
- **cpu**: server CPU per call over stdio, 8 near-instant members;
- **stream**: server CPU per run with 8 members of ~2,000 tokens each streamed in bursts (one event per word,
  sent as fast as the simulator writes), against the bare reader (no MCP: httpx2's ``EventSource`` and
  ``json.loads`` on the same 8 streams and the analyst) and the SDK fan-out tool;
- **memory**: resident memory kept per finished run (8 x ~2,000 tokens), over the server's 64 kept runs.

Every figure is measured ``--rounds`` times, alternating server and floor within a round; reported are the
median per round and the range over the rounds. Start-up alternates spawn by spawn, and the CPU figures call
every server alive at once in turn, call by call, so each sees the same moment of the machine (a shared VM's
speed drifts over minutes); the load runs one server at a time (it needs the machine). Where the machine has
two cores or more the servers run on the first and the simulator and this process (the load) on the others
(``sched_setaffinity``). CPU is each server process's CPU-time clock, to the nanosecond
(:func:`bench.common.proc_cpu_seconds`); inside the load's window this process does not collect garbage, and
the simulator rarely does, so neither pauses a call in flight.

``--fusion CMD`` measures another build's ``fusion-mcp`` (a release's virtual environment) in the same run.

    python -m bench.floors [--rounds 3] [--only start,load,cpu,stream,memory] [--fusion CMD]... [--out FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client, StdioServerParameters

from bench.common import (
    REPO,
    Sim,
    free_port,
    fusion_command,
    median,
    panel,
    percentile,
    proc_cpu_seconds,
    proc_memory_mib,
    report,
    scratch_dir,
    server_env,
    simulator,
    spread,
)
from bench.load import LeanClient

FIGURES = ("start", "load", "cpu", "stream", "memory")
CORES = os.cpu_count() or 1
SERVER_CPUS = {0} if CORES >= 2 else None
OTHER_CPUS = set(range(1, CORES)) if CORES >= 2 else None
FLOOR = [sys.executable, "-m", "bench.floor_server"]
LOAD_PATH = {"members": spread(3, 0.10, 0.15), "analyst": 0.05}
INSTANT = {"members": spread(8, 0.02, 0.09), "analyst": 0.02}
LONG = panel([0.0] * 8, tag="burst", length=8000)


def pin(pid: int, cpus: set[int] | None) -> None:
    if cpus is not None:
        os.sched_setaffinity(pid, cpus)


def args_for(members: list[float] | list[str], analyst: float) -> dict[str, Any]:
    models = members if isinstance(members[0], str) else panel(members)  # type: ignore[arg-type]
    judge = f"bench/judge-lat{round(analyst * 1000)}ms"
    return {"prompt": "benchmark question", "analysis_models": models, "model": judge}


class Subject:
    """A server measured: fusion-mcp (one build) or the floor, started over stdio or HTTP."""

    def __init__(self, name: str, stdio: list[str], http: list[str], env: dict[str, str]) -> None:
        self.name, self.stdio, self.http, self.env = name, stdio, http, env
        self.home: str | None = None

    def fresh_env(self, fresh: bool = True) -> dict[str, str]:
        """Its environment with an empty history of its own: builds never share a file, and no figure is
        measured on a history the figures before it filled (start-up reuses one, as a host's restart does)."""
        if not fresh:
            self.home = self.home or scratch_dir("fusion-floors-")
        return {**self.env, "FUSION_HOME": self.home if not fresh else scratch_dir("fusion-floors-")}

    @asynccontextmanager
    async def client(self, fresh: bool = True) -> Any:
        """The SDK's client over stdio, and the server's pid (pinned)."""
        before = set(_children())
        params = StdioServerParameters(command=self.stdio[0], args=self.stdio[1:], env=self.fresh_env(fresh), cwd=REPO)
        async with Client(params, mode="legacy") as client:
            (pid,) = set(_children()) - before
            pin(pid, SERVER_CPUS)
            yield client, pid

    @asynccontextmanager
    async def serving(self) -> Any:
        port = free_port()
        command = [part.replace("{port}", str(port)) for part in self.http]
        with subprocess.Popen(  # noqa: ASYNC220 - started once per figure, before the clock runs
            command, env=self.fresh_env(), cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        ) as proc:
            pin(proc.pid, SERVER_CPUS)
            try:
                await wait_until_up_or_mcp(f"http://127.0.0.1:{port}")
                yield f"http://127.0.0.1:{port}", proc.pid
            finally:
                proc.terminate()
                proc.wait(timeout=20)


def _children() -> list[int]:
    me = os.getpid()
    found = []
    for task in Path(f"/proc/{me}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


async def wait_until_up_or_mcp(base: str) -> None:
    """fusion-mcp answers ``/healthz``; the SDK's server has only ``/mcp`` (a GET without a session: 4xx)."""
    with anyio.fail_after(30):
        while True:
            try:
                async with httpx2.AsyncClient(timeout=1) as http:
                    if (await http.get(f"{base}/healthz")).status_code == 200:
                        return
                    if (await http.get(f"{base}/mcp")).status_code < 500:
                        return
            except httpx2.TransportError:
                pass
            await anyio.sleep(0.05)


def ok(result: Any) -> dict[str, Any]:
    data = result.structured_content or {}
    data = data.get("result", data)
    assert not result.is_error and data.get("status") == "ok", result
    return data


# -- the figures ----------------------------------------------------------------------------------------------


async def start(subject: Subject, spawns: int) -> float:
    times = []
    for _ in range(spawns):
        started = time.perf_counter()
        async with subject.client(fresh=False) as (client, _):
            await client.list_tools()
            times.append(time.perf_counter() - started)
    return median(times)


async def cpu_per_call_side_by_side(
    subjects: list[Subject], args: dict[str, Any], calls: int, warmup: int
) -> dict[str, float]:
    """CPU seconds per call of each subject, every server alive at once and the calls alternating between
    them one by one: each sees the same moment of the machine (its speed drifts by 10-30 % over minutes on a
    shared VM), so their ratio is steady to a few per cent where back-to-back runs scattered by ±20 %."""
    async with AsyncExitStack() as stack:
        live = [(s.name, *(await stack.enter_async_context(s.client()))) for s in subjects]
        for _, client, _ in live:
            for _ in range(warmup):
                ok(await client.call_tool("openrouter_fusion", args))
        spent = dict.fromkeys((name for name, _, _ in live), 0.0)
        for _ in range(calls):
            for name, client, pid in live:
                before = proc_cpu_seconds(pid)
                ok(await client.call_tool("openrouter_fusion", args))
                spent[name] += proc_cpu_seconds(pid) - before
    return {name: seconds / calls for name, seconds in spent.items()}


async def memory_per_run(subject: Subject, args: dict[str, Any], warmup: int, runs: int) -> float:
    """KiB of resident memory the server gained per run over ``runs`` runs, after ``warmup`` runs."""
    async with subject.client() as (client, pid):
        for _ in range(warmup):
            ok(await client.call_tool("openrouter_fusion", args))
        before, _ = proc_memory_mib(pid)
        for _ in range(runs):
            ok(await client.call_tool("openrouter_fusion", args))
        after, _ = proc_memory_mib(pid)
    return (after - before) * 1024 / runs


def bare_reader(sim: Sim, runs: int) -> float:
    command = [*FLOOR, "--read", sim.base, "--runs", str(runs + 2), "--analyst", "bench/judge-lat0ms", *LONG]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
    pin(proc.pid, SERVER_CPUS)
    out, _ = proc.communicate(timeout=600)
    return median([float(s) for s in json.loads(out)[2:]])


async def load(subject: Subject, clients: int, calls: int) -> dict[str, float]:
    args = args_for(LOAD_PATH["members"], LOAD_PATH["analyst"])
    critical = max(LOAD_PATH["members"]) + LOAD_PATH["analyst"]
    async with subject.serving() as (url, pid):
        async with httpx2.AsyncClient(base_url=url, timeout=120) as http:  # warm-up: imports, pools
            warm = LeanClient(http)
            await warm.connect()
            for _ in range(3):
                await warm.call(args)
        walls: list[float] = []
        ready, go = 0, anyio.Event()
        cpu_before = proc_cpu_seconds(pid)

        async def one() -> None:
            nonlocal ready
            limits = httpx2.Limits(max_connections=4)
            async with httpx2.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
                client = LeanClient(http)
                await client.connect()
                ready += 1
                if ready == clients:
                    go.set()
                await go.wait()
                for _ in range(calls):
                    started = time.perf_counter()
                    data = await client.call(args)
                    walls.append(time.perf_counter() - started)
                    assert data.get("result", data)["status"] == "ok", data

        # The 32 clients are this process: a collection here (tens of ms) would read as the server's latency.
        gc.collect()
        gc.disable()
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(clients):
                    tg.start_soon(one)
        finally:
            gc.enable()
        cpu = proc_cpu_seconds(pid) - cpu_before
    added = [(w - critical) * 1000 for w in walls]
    return {"p50": median(added), "p99": percentile(added, 99), "cpu_ms": cpu / len(walls) * 1000}


# -- the run --------------------------------------------------------------------------------------------------


def spread_of(values: list[float]) -> dict[str, float]:
    return {"median": round(median(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}


async def main_async(opts: argparse.Namespace) -> None:
    only = [f.strip() for f in opts.only.split(",")] if opts.only else list(FIGURES)
    if unknown := set(only) - set(FIGURES):
        raise SystemExit(f"--only: unknown {sorted(unknown)}; choose from {', '.join(FIGURES)}")
    builds = opts.fusion or [fusion_command()]
    # --quick: every figure once at a tiny size (CI's smoke test), nothing worth reading.
    spawns, cpu_calls, stream_runs, memory_runs = (1, 2, 1, (1, 2)) if opts.quick else (opts.spawns, 40, 8, (16, 64))
    if opts.quick:
        opts.rounds, opts.clients, opts.calls = 1, 2, 1
    pin(os.getpid(), OTHER_CPUS)
    figures: dict[str, Any] = {}
    with simulator() as sim:
        pin(sim.pid, OTHER_CPUS)
        env = server_env(sim.base)
        subjects = [
            Subject(
                "fusion" if len(builds) == 1 else f"fusion:{build}",
                [build],
                [build, "serve", "--transport", "http", "--port", "{port}"],
                env,
            )
            for build in builds
        ]
        floor = Subject("floor", [*FLOOR, "--stdio"], [*FLOOR, "--http", "{port}"], env)
        everyone = [*subjects, floor]
        raw: dict[str, dict[str, list[float]]] = {}

        def keep(figure: str, name: str, value: float) -> None:
            raw.setdefault(figure, {}).setdefault(name, []).append(value)
            print(f"{figure:7} {name:12} {value:10.4f}", flush=True)

        for _ in range(opts.rounds):
            if "start" in only:  # spawns alternate between the subjects, as the calls below do
                spawned: dict[str, list[float]] = {s.name: [] for s in everyone}
                for _ in range(spawns):
                    for s in everyone:
                        spawned[s.name].append(await start(s, 1))
                for name, times in spawned.items():
                    keep("start_s", name, median(times))
            if "cpu" in only:
                args = args_for(INSTANT["members"], 0.02)
                for name, cpu in (await cpu_per_call_side_by_side(everyone, args, cpu_calls, 3)).items():
                    keep("cpu_ms_per_call", name, 1000 * cpu)
            for s in everyone if "load" in only else []:
                row = await load(s, opts.clients, opts.calls)
                keep("load_p50_ms", s.name, row["p50"])
                keep("load_p99_ms", s.name, row["p99"])
                keep("load_cpu_ms_per_call", s.name, row["cpu_ms"])
            if "stream" in only:
                streamed = await cpu_per_call_side_by_side(everyone, args_for(LONG, 0.0), stream_runs, 2)
                for name, cpu in streamed.items():
                    keep("stream_cpu_ms_per_run", name, 1000 * cpu)
                keep("stream_cpu_ms_per_run", "bare reader", 1000 * bare_reader(sim, stream_runs))
            for s in everyone if "memory" in only else []:
                keep("memory_kib_per_run", s.name, await memory_per_run(s, args_for(LONG, 0.0), *memory_runs))

    for figure, by_name in raw.items():
        base = by_name.get("bare reader") if figure.startswith("stream") else by_name["floor"]
        figures[figure] = {name: spread_of(values) for name, values in by_name.items()}
        if base and figure != "memory_kib_per_run":
            for name, values in by_name.items():
                ratios = [v / b for v, b in zip(values, base, strict=True) if b > 0]
                # A floor measured at zero in every round (a --quick run's CPU within one clock tick, an added
                # latency under the noise) gives no ratio: the report says so instead of failing.
                figures[figure][name]["ratio"] = spread_of(ratios) if ratios else None
    report(
        "floors",
        {
            "rounds": opts.rounds,
            "pinned": {"servers": sorted(SERVER_CPUS or []), "simulator_and_load": sorted(OTHER_CPUS or [])},
            "load": {"clients": opts.clients, "calls": opts.calls, "critical_path_ms": 200},
            "figures": figures,
        },
        opts.out,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--spawns", type=int, default=5, help="stdio spawns per start figure (median)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--only", help=f"comma-separated figures (default: all of {', '.join(FIGURES)})")
    parser.add_argument("--fusion", action="append", help="a fusion-mcp command to measure (repeatable)")
    parser.add_argument("--quick", action="store_true", help="every figure once at a tiny size (CI smoke test)")
    parser.add_argument("--out", help="also write the JSON report here")
    anyio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
