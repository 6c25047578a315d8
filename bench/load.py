"""Load: K concurrent MCP clients over Streamable HTTP, each making M fusion calls, against three
deployments in one run: one process, ``--workers 2``, and two replicas behind nginx (the documented config,
``docs/nginx/fusion-mcp.conf``), each at 32 and 64 clients.

Reports throughput, p50/p99 added latency over the simulated critical path (slowest member + analyst) —
of every call, of the calls after each client's first (the steady state), and inside the run (its own
``timings.total``: upstream requests, the simulator's queueing included, but not HTTP, the SDK or the client) —
the server's CPU time per call (every process of the deployment: workers and their supervisor, replicas
and nginx), and its resident memory (after warm-up, at the end, peak; summed over processes).

The replicas share one store: ``FUSION_DATABASE_URL`` when given (``--database-url``), else one SQLite
file, as every deployment here does.

    python -m bench.load [--clients 32,64] [--calls 10] [--deployments one,workers,replicas]
                         [--database-url URL] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2

from bench.common import (
    Sim,
    free_port,
    fusion_command,
    median,
    panel,
    percentile,
    proc_cpu_seconds,
    proc_memory_mib,
    report,
    server_env,
    simulator,
)
from tests import nginx

MEMBERS = [0.4, 0.7, 1.0]
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


class LeanClient:
    """A minimal MCP client over Streamable HTTP (2025-11-25 era): initialize, then tools/call.

    The SDK's client spends ~25 ms of CPU per call (result validation, models); with 32 of them in one
    benchmark process the harness, not the server, became the bottleneck. This one only parses JSON.
    """

    def __init__(self, http: httpx2.AsyncClient) -> None:
        self.http = http
        self.headers = dict(HEADERS)
        self.next_id = 1

    async def _rpc(self, method: str, params: dict) -> dict:
        self.next_id += 1
        message = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        async with self.http.stream("POST", "/mcp", json=message, headers=self.headers) as response:
            response.raise_for_status()
            if "mcp-session-id" in response.headers:
                self.headers["mcp-session-id"] = response.headers["mcp-session-id"]
            if response.headers.get("content-type", "").startswith("application/json"):
                return json.loads(await response.aread())["result"]
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    data = json.loads(line[5:])
                    if data.get("id") == self.next_id:
                        return data["result"]
        raise RuntimeError(f"no answer to {method}")

    async def connect(self) -> None:
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "load", "version": "1"}}
        result = await self._rpc("initialize", init)
        self.headers["mcp-protocol-version"] = result["protocolVersion"]
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        (await self.http.post("/mcp", json=note, headers=self.headers)).raise_for_status()

    async def call(self, arguments: dict) -> dict:
        return (await self._rpc("tools/call", {"name": "openrouter_fusion", "arguments": arguments}))[
            "structuredContent"
        ]


ANALYST = 0.5
DEPLOYMENTS = ("one", "workers", "replicas")


@dataclass
class Deployment:
    name: str
    url: str
    pids: Callable[[], list[int]]
    """Every process serving it now (workers restart; nginx has workers of its own)."""


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@contextmanager
def deployment(name: str, env: dict[str, str]) -> Iterator[Deployment]:
    """One of :data:`DEPLOYMENTS`, started and answering ``/healthz`` on every process."""
    with ExitStack() as stack:
        if name == "replicas":
            proxy = nginx.start(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-nginx-"))))
            stack.callback(nginx.stop, proxy.directory)
            procs = [
                stack.enter_context(server([], proxy.replicas[replica], dict(env, FUSION_REPLICA=replica)))
                for replica in sorted(proxy.replicas)
            ]
            for replica in sorted(proxy.replicas):
                wait_for_workers(f"http://127.0.0.1:{proxy.replicas[replica]}", 1)
            yield Deployment(name, proxy.url, lambda: [p.pid for p in procs] + proxy.pids())
            return
        port = free_port()
        workers = ["--workers", "2"] if name == "workers" else []
        proc = stack.enter_context(server(workers, port, env))
        url = f"http://127.0.0.1:{port}"
        wait_for_workers(url, 2 if workers else 1)
        yield Deployment(name, url, lambda: [proc.pid, *children(proc.pid)])


@contextmanager
def server(extra: list[str], port: int, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    command = [fusion_command(), "serve", "--transport", "http", "--port", str(port), *extra]
    with subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL) as proc:
        try:
            yield proc
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def wait_for_workers(url: str, count: int, limit_s: float = 30) -> None:
    """Until ``/healthz`` has answered from ``count`` different processes (new connections spread)."""
    seen: set[object] = set()
    end = time.monotonic() + limit_s
    while len(seen) < count:
        if time.monotonic() > end:
            raise RuntimeError(f"{url}: only {len(seen)} of {count} processes answered")
        try:
            health = httpx2.get(f"{url}/healthz", timeout=1)
            if health.status_code == 200:
                seen.add(health.json().get("worker"))
        except httpx2.TransportError:
            time.sleep(0.05)


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += proc_cpu_seconds(pid)
        except OSError:
            pass  # gone since listed
    return total


def memory_of(pids: list[int]) -> tuple[float, float]:
    now = peak = 0.0
    for pid in pids:
        try:
            rss, top = proc_memory_mib(pid)
        except OSError:
            continue
        now, peak = now + rss, peak + top
    return now, peak


WARM_CLIENTS = 8
"""Warm-up connections: new connections spread over the processes (the kernel's ``SO_REUSEPORT`` hash, nginx's
balancing), and with eight of them every process of two is warmed but for a chance of 1 in 128."""


async def warm_up(url: str, args: dict) -> None:
    """Two calls on each of :data:`WARM_CLIENTS` connections at once, so no process meets its first call (lazy
    imports, first pool connections) inside the measured run."""

    async def one() -> None:
        async with httpx2.AsyncClient(base_url=url, timeout=120) as http:
            warm = LeanClient(http)
            await warm.connect()
            for _ in range(2):
                await warm.call(args)

    async with anyio.create_task_group() as tg:
        for _ in range(WARM_CLIENTS):
            tg.start_soon(one)


async def run(sim: Sim, where: Deployment, clients: int, calls: int, verbose: bool) -> dict:
    url = where.url
    args = {"prompt": "load", "analysis_models": panel(MEMBERS), "model": f"bench/judge-lat{round(ANALYST * 1000)}ms"}
    critical = max(MEMBERS) + ANALYST
    await warm_up(url, args)
    pids = where.pids()
    rss_warm, _ = memory_of(pids)
    cpu_before = cpu_of(pids)
    sim_cpu_before = proc_cpu_seconds(sim.pid)
    own_cpu_before = time.process_time()
    walls: list[float] = []

    marks: list = []
    ready = 0
    go = anyio.Event()

    async def client_loop(ci: int) -> None:
        nonlocal ready
        async with httpx2.AsyncClient(base_url=url, timeout=120) as http:
            client = LeanClient(http)
            await client.connect()  # connected before the clock starts: the calls alone are measured
            ready += 1
            if ready == clients:
                go.set()
            await go.wait()
            for k in range(calls):
                started = time.perf_counter()
                data = await client.call(args)
                walls.append(time.perf_counter() - started)
                marks.append((walls[-1], ci, k, data["timings"]["total"]))
                assert data["status"] == "ok", data

    async with anyio.create_task_group() as tg:
        for i in range(clients):
            tg.start_soon(client_loop, i)
        await go.wait()
        started = time.perf_counter()
    elapsed = time.perf_counter() - started
    cpu = cpu_of(pids) - cpu_before
    sim_cpu = proc_cpu_seconds(sim.pid) - sim_cpu_before
    own_cpu = time.process_time() - own_cpu_before
    rss_end, rss_peak = memory_of(pids)
    added = [(w - critical) * 1000 for w in walls]
    # After each client's first call the clients no longer move in lockstep: the steady state.
    steady = [(w - critical) * 1000 for w, _, k, _ in marks if k > 0] or added
    # The run's own clock (timings.total) against the path: what the pipeline added, the simulator's queueing
    # included. The rest of a call's added time is outside the run: HTTP, the MCP SDK, the client's loop.
    in_run = [(total - critical) * 1000 for _, _, _, total in marks]
    if verbose:
        print(
            "slowest (added ms, client, call):",
            sorted((round((w - critical) * 1000), c, k, t) for w, c, k, t in marks)[-5:],
        )
    return {
        "deployment": where.name,
        "processes": len(pids),
        "clients": clients,
        "calls_per_client": calls,
        "calls": len(walls),
        "critical_path_ms": round(critical * 1000, 1),
        "throughput_calls_per_s": round(len(walls) / elapsed, 2),
        "added_ms_p50": round(median(added), 1),
        "added_ms_p99": round(percentile(added, 99), 1),
        "added_ms_max": round(max(added), 1),
        "steady_added_ms_p50": round(median(steady), 1),
        "steady_added_ms_p99": round(percentile(steady, 99), 1),
        "in_run_added_ms_p50": round(median(in_run), 1),
        "in_run_added_ms_p99": round(percentile(in_run, 99), 1),
        "server_cpu_ms_per_call": round(cpu / len(walls) * 1000, 2),
        "simulator_cpu_ms_per_call": round(sim_cpu / len(walls) * 1000, 2),
        "clients_cpu_ms_per_call": round(own_cpu / len(walls) * 1000, 2),
        "machine_cpu_busy": round((cpu + sim_cpu + own_cpu) / (elapsed * (os.cpu_count() or 1)), 3),
        "server_rss_mib_after_warmup": round(rss_warm, 1),
        "server_rss_mib_end": round(rss_end, 1),
        "server_rss_mib_peak": round(rss_peak, 1),
    }


async def main_async(args: argparse.Namespace) -> None:
    counts = [2] if args.quick else [int(c) for c in args.clients.split(",")]
    calls = 1 if args.quick else args.calls
    names = [n.strip() for n in args.deployments.split(",")]
    if unknown := set(names) - set(DEPLOYMENTS):
        raise SystemExit(f"--deployments: unknown {sorted(unknown)}; choose from {', '.join(DEPLOYMENTS)}")
    rows = []
    with simulator() as sim:
        extra = {"FUSION_DATABASE_URL": args.database_url} if args.database_url else {}
        env = server_env(sim.base, FUSION_MAX_CONCURRENT=str(max(max(counts), 8)), FUSION_QUEUE_TIMEOUT_S="60", **extra)
        for name in names:
            with deployment(name, env) as where:
                for clients in counts:
                    row = await run(sim, where, clients, calls, args.verbose)
                    rows.append(row)
                    print(
                        f"{name}: {clients} clients x {calls} calls: {row['throughput_calls_per_s']} calls/s, "
                        f"added p50 {row['added_ms_p50']} ms, p99 {row['added_ms_p99']} ms "
                        f"(steady state p50 {row['steady_added_ms_p50']}, p99 {row['steady_added_ms_p99']}), "
                        f"inside the run p50 {row['in_run_added_ms_p50']}, p99 {row['in_run_added_ms_p99']}, "
                        f"CPU ms/call: server {row['server_cpu_ms_per_call']}, "
                        f"simulator {row['simulator_cpu_ms_per_call']}, clients {row['clients_cpu_ms_per_call']} "
                        f"(machine {row['machine_cpu_busy']:.0%} busy), RSS {row['server_rss_mib_after_warmup']} -> "
                        f"{row['server_rss_mib_end']} MiB (peak {row['server_rss_mib_peak']})",
                        flush=True,
                    )
    report("load", {"rows": rows}, args.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="32,64", help="comma-separated client counts (default: 32,64)")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--deployments", default=",".join(DEPLOYMENTS), help="default: one,workers,replicas")
    parser.add_argument("--database-url", help="a PostgreSQL URL for the store (default: a SQLite file)")
    parser.add_argument("--quick", action="store_true", help="2 clients x 1 call per deployment (CI smoke test)")
    parser.add_argument("--out", help="also write the JSON report here")
    parser.add_argument("--verbose", action="store_true", help="also print the slowest calls")
    anyio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
