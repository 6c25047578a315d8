"""Shared pieces of the benchmarks: the simulator as its own process, the server, statistics, the machine."""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx2

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-bench-not-a-real-key"


def scratch_dir(prefix: str) -> str:
    """A new directory under the system's temporary one, removed when this process exits: a benchmark starts
    many servers, each with a history of its own, and none of it is wanted once the figures are out."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


SCRATCH_HOME = scratch_dir("fusion-bench-")


@dataclass
class Sim:
    base: str
    pid: int


@contextmanager
def simulator() -> Iterator[Sim]:
    """The loopback provider simulator in a process of its own, so it does not share our GIL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.provider_sim"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    base = proc.stdout.readline().strip()
    try:
        yield Sim(base, proc.pid)
    finally:
        proc.stdin.close()
        proc.wait(timeout=15)


def fusion_command() -> str:
    candidate = Path(sys.executable).parent / "fusion-mcp"
    return str(candidate) if candidate.exists() else "fusion-mcp"


def server_env(base: str, **extra: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    env.update(
        OPENROUTER_API_KEY=KEY,
        OPENROUTER_BASE_URL=base,
        FUSION_LOG_LEVEL="WARNING",
        FUSION_DEADLINE_S="600",
        # Identical calls are the point of a benchmark: none may be answered from the cache, and the run
        # history goes to a scratch directory (its writes stay in, as in real use).
        FUSION_CACHE="off",
        FUSION_HOME=SCRATCH_HOME,
    )
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def http_server(env: dict[str, str]) -> AsyncIterator[str]:
    """``fusion-mcp serve --transport http`` on a free port, answering ``/healthz``: its base URL."""
    port = free_port()
    with subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
        [fusion_command(), "serve", "--transport", "http", "--port", str(port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as proc:
        try:
            await wait_until_up(f"http://127.0.0.1:{port}")
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=15)


async def wait_until_up(base: str, limit_s: float = 20.0) -> None:
    """Poll ``{base}/healthz`` until a just-started server answers (it takes a second or so to import)."""
    with anyio.fail_after(limit_s):
        while True:
            try:
                if httpx2.get(f"{base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            await anyio.sleep(0.05)


def spread(n: int, low: float, high: float) -> list[float]:
    """``n`` latencies evenly spread over [low, high] (the slowest is always ``high``)."""
    if n == 1:
        return [high]
    return [low + (high - low) * i / (n - 1) for i in range(n)]


def panel(latencies_s: list[float], tag: str = "m", length: int | None = None) -> list[str]:
    extra = f"-len{length}" if length else ""
    return [f"bench/{tag}{i}-lat{round(s * 1000)}ms{extra}" for i, s in enumerate(latencies_s)]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def report(name: str, data: dict[str, Any], out: str | None) -> None:
    data = {"benchmark": name, "machine": machine(), **data}
    text = json.dumps(data, indent=2)
    if out:
        Path(out).write_text(text + "\n")
    print(text)


def proc_cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system, all its threads, exited ones included) process ``pid`` has used, to the
    nanosecond: read from its CPU-time clock, the id Linux's ``clock_getcpuclockid`` gives
    (``MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)``). ``/proc``'s figure counts whole clock ticks (10 ms): summed
    over 40 calls of ~12 ms, its rounding alone moved a per-call figure by ±4 %. Where that clock cannot be
    read (not Linux), ``/proc``'s ticks; a process that is gone raises :class:`OSError` either way."""
    try:
        return time.clock_gettime(((~pid) << 3) | _CPUCLOCK_SCHED)
    except (OSError, OverflowError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_CPUCLOCK_SCHED = 2


def proc_memory_mib(pid: int) -> tuple[float, float]:
    """(resident now, peak resident) of a process, in MiB."""
    now = peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            now = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return now, peak
