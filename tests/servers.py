"""Start ``fusion-mcp serve --transport http`` as a subprocess, exactly as the README does."""

from __future__ import annotations

import resource
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2

from fusion_mcp.config import load_settings
from fusion_mcp.http.app import build_app
from tests.conftest import child_env, console_script
from tests.fakes.loopback import LoopbackServer
from tests.nginx import free_port  # from below the ephemeral range: see QUIET_PORTS


def wait_for_health(url: str, proc: subprocess.Popen[bytes], limit_s: float = 20) -> bool:
    """Whether ``url`` answered 200 before ``proc`` ended or ``limit_s`` passed."""
    deadline = time.monotonic() + limit_s
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if httpx2.get(url, timeout=1).status_code == 200:
                return True
        except httpx2.TransportError:
            time.sleep(0.05)
    return False


@dataclass
class Running:
    base: str
    """``http://127.0.0.1:PORT``; the MCP endpoint is ``base + "/mcp"``."""
    proc: subprocess.Popen[bytes]
    log: Path
    """Where the server's stderr goes: readable while it runs, so a test shared by many can check its part."""
    final: str | None = None
    """Everything it wrote, once it has stopped (the log file is gone by then)."""

    @property
    def stderr(self) -> str:
        return self.final if self.final is not None else self.log.read_text(errors="replace")


@contextmanager
def in_process(env: dict[str, str]) -> Iterator[str]:
    """The HTTP app ``serve`` runs, built from ``env`` and served on loopback in this process (no start-up of
    a new interpreter): for tests that need settings of their own but not the command line around it."""
    app = build_app(load_settings(environ=env))
    server = LoopbackServer(app, lifespan="on")
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.close()


@contextmanager
def http_server(
    env: dict[str, str], *args: str, host: str = "127.0.0.1", fd_limit: int | None = None, port: int | None = None
) -> Iterator[Running]:
    """The server on ``port`` (a free one by default); ``fd_limit`` caps its file descriptors (soft and hard),
    as a small host would."""
    port = port or free_port()

    def limit() -> None:
        if fd_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    with tempfile.TemporaryDirectory(prefix="fusion-http-") as scratch:
        log = Path(scratch) / "stderr.log"
        with (
            log.open("wb") as sink,
            subprocess.Popen(
                [console_script(), "serve", "--transport", "http", "--host", host, "--port", str(port), *args],
                env=child_env(**env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=sink,
                preexec_fn=limit if fd_limit is not None else None,
            ) as proc,
        ):
            running = Running(f"http://127.0.0.1:{port}", proc, log)
            deadline = time.monotonic() + 20
            # With --workers N, every worker must have answered (each GET is a new connection, and the kernel
            # spreads connections across the workers).
            workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
            seen: set[object] = set()
            while True:
                try:
                    health = httpx2.get(f"{running.base}/healthz", timeout=1)
                    if health.status_code == 200:
                        seen.add(health.json().get("worker"))
                        if len(seen) >= workers:
                            break
                except httpx2.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(f"server did not start: {running.stderr}")
                time.sleep(0.05)
            try:
                yield running
            finally:
                proc.terminate()
                proc.wait(timeout=15)
                running.final = running.stderr
