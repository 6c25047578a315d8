"""``fusion-mcp serve --transport http --workers N``: every core of one machine on one port.

One event loop spends a few milliseconds of CPU per call, so a single process saturates one core while
the others idle (``docs/benchmarks.md``). With ``--workers N`` the command becomes a small supervisor that
starts N worker processes, each a whole server (its own event loop, provider pool, run slots, connection
and session limits) listening on the same port with ``SO_REUSEPORT``: the kernel spreads new connections
across them. The supervisor holds the port bound (not listening) for its whole life, so a busy port is
reported at once and no other program can take it while a worker restarts.

Both protocol eras keep working. A 2026-07-28 client has no session: each request is whole where it lands,
and closing its stream cancels the call. A 2025-11-25 client's session lives in the worker that opened it;
its id names that worker (``w1.…``), and a request landing on another worker is relayed to it over the
worker's own loopback port (:mod:`~fusion_mcp.http.session_routes`), so progress, the result and cancellation
all reach the session. ``--stateless`` works with workers too (no sessions, nothing to relay).

Workers share the store (the SQLite file under ``FUSION_HOME``, or ``FUSION_DATABASE_URL``): runs, cache
hits and ``fusion://runs`` reads cross workers. Limits set per process (``FUSION_MAX_CONCURRENT``,
``FUSION_MAX_CONNECTIONS``, ``FUSION_MAX_SESSIONS``, ``FUSION_MAX_CHAT_REQUESTS``) apply per worker.

The supervisor restarts a worker that dies (at most once a second per worker; the sessions it held are
gone, and their clients get 404 and start new ones) and, on SIGINT or SIGTERM, stops them all and waits
for them before it exits.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)
STOP_S = 15.0
"""How long the supervisor waits for its workers to stop before killing them."""
PR_SET_PDEATHSIG = 1
"""prctl(2): the signal a process gets when its parent dies."""
RESTART_GAP_S = 1.0
"""A worker that keeps dying is restarted at most this often."""


@dataclass(frozen=True)
class WorkerPlace:
    """Which worker of how many a process is, and where the workers say which ports they relay on."""

    index: int
    count: int
    directory: Path


def default_workers() -> int:
    """``auto``: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def parse_workers(value: str) -> int:
    """``--workers``: a whole number from 1 to 64, or ``auto``."""
    if value.strip().lower() == "auto":
        return default_workers()
    if not value.strip().isdigit() or not 1 <= int(value) <= 64:
        raise ValueError(f"--workers must be a whole number from 1 to 64, or auto (got {value!r})")
    return int(value)


def port_sockets(host: str, port: int, *, share: bool = True) -> list[socket.socket]:
    """TCP sockets bound to ``host:port`` (with ``SO_REUSEPORT`` if ``share``), not listening yet: uvicorn
    listens once the app has started, so the kernel hands a worker no connection before it can serve.

    One socket for each address ``host`` resolves to, as asyncio's own server makes them (``localhost`` is
    often ``127.0.0.1`` and ``::1``); an IPv6 socket takes IPv6 only, so ``::`` and ``0.0.0.0`` stay apart.
    """
    bare = host.strip("[]")
    infos = socket.getaddrinfo(bare or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    addresses = list(dict.fromkeys((family, address) for family, _, _, _, address in infos))
    sockets: list[socket.socket] = []
    try:
        for family, address in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if share:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class PortUnavailable(Exception):
    """The server cannot have its port; the message names the port and what to do about it."""


def claim_port(host: str, port: int, *, share: bool = False) -> list[socket.socket]:
    """:func:`port_sockets`, or :class:`PortUnavailable` saying why not (the same words with and without
    ``--workers``)."""
    try:
        return port_sockets(host, port, share=share)
    except OSError as exc:
        raise PortUnavailable(port_problem(host, port, exc)) from None


def port_problem(host: str, port: int, exc: OSError) -> str:
    """Why ``host:port`` cannot be bound, with what to do."""
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use: stop the other server or pick another --port"
    if exc.errno == errno.EACCES:
        return f"port {port} on {host} needs privileges this user does not have: pick one above 1023 with --port"
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return f"cannot serve on {host}: not an address of this machine ({exc.strerror or exc}); check --host"
    return f"cannot serve on {host}:{port}: {exc.strerror or exc}"


def relay_socket(place: WorkerPlace) -> socket.socket:
    """The worker's loopback socket for requests its siblings relay, on a port of its own choosing, which
    it writes where they look (:func:`~fusion_mcp.http.session_routes.worker_port_file`).

    A relayed request passes this worker's guard like any other (token, Host, limits): the port gives a
    local user nothing the public one does not.
    """
    from .session_routes import worker_port_file

    (sock,) = port_sockets("127.0.0.1", 0, share=False)
    path = worker_port_file(place.directory, place.index)
    written = path.with_suffix(".tmp")
    written.write_text(str(sock.getsockname()[1]))
    written.replace(path)  # siblings never read half a number
    return sock


def follow_supervisor(supervisor: int) -> None:
    """Have the kernel stop this worker (SIGTERM, a graceful stop) when its supervisor (that pid) dies, even by
    SIGKILL, so no orphan keeps serving the port. Linux only; elsewhere a killed supervisor leaves its workers."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    # It died before the line above (the worker was re-parented). Not "parent is 1": in a container the
    # supervisor itself is often pid 1.
    if os.getppid() != supervisor:
        os.kill(os.getpid(), signal.SIGTERM)


def serve_workers(
    worker_argv: list[str], host: str, port: int, count: int, depth: int, on_started: Callable[[], None]
) -> int:
    """Run ``count`` workers on ``host:port`` until signalled; the exit status. :class:`PortUnavailable` at
    once if the port cannot be had. ``on_started`` is called once the workers are started.

    ``worker_argv`` is a worker's command line after ``fusion-mcp`` (``serve --transport http ...``); each
    worker gets its place appended. ``depth`` is this server's own fusion depth, passed on unchanged: a
    worker is this server, not a process it launched.
    """
    # A plain bind first: SO_REUSEPORT alone would share the port with another server of this user.
    for sock in claim_port(host, port):
        sock.close()
    reserved = claim_port(host, port, share=True)
    directory = Path(tempfile.mkdtemp(prefix="fusion-mcp-workers-"))
    env = dict(os.environ, FUSION_DEPTH=str(depth))
    stopping = False

    def start(index: int) -> subprocess.Popen[bytes]:
        place = ["--worker-index", str(index), "--worker-count", str(count), "--worker-dir", str(directory)]
        place += ["--worker-supervisor", str(os.getpid())]
        # Its own process group: a terminal's Ctrl-C reaches the supervisor only, which stops each worker once
        # (a second signal would make uvicorn skip its graceful shutdown).
        command = [sys.executable, "-m", "fusion_mcp", *worker_argv, *place]
        return subprocess.Popen(command, env=env, process_group=0)

    def stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    workers = [start(i) for i in range(count)]
    started = [time.monotonic()] * count
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    on_started()
    try:
        while not stopping:
            time.sleep(0.2)
            for index, worker in enumerate(workers):
                if stopping or worker.poll() is None:
                    continue
                wait = RESTART_GAP_S - (time.monotonic() - started[index])
                log.warning("worker %d exited with status %s; restarting it", index, worker.returncode)
                if wait > 0:
                    time.sleep(wait)
                if not stopping:
                    workers[index], started[index] = start(index), time.monotonic()
    finally:
        if not stopping:  # an error in the loop (a restart that could not start): stop the workers gracefully
            stop(signal.SIGTERM, None)
        deadline = time.monotonic() + STOP_S
        for worker in workers:
            try:
                worker.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop within %.0f s: killing it", worker.pid, STOP_S)
                worker.kill()
                worker.wait()
        for sock in reserved:
            sock.close()
        shutil.rmtree(directory, ignore_errors=True)
    return 0
