"""Clients that stop reading cannot pin the HTTP server (issue 19): the send deadline, stalled connections
evicted at the cap, and ``/healthz`` on a probation connection when every slot is busy.

Raw sockets against ``fusion-mcp serve`` with 16 connection slots; the writer streams an answer of several
MB from the provider simulator, more than the kernel's socket buffers hold, so a client that reads nothing
stalls the server's writes. The client's receive buffer is made small so that point comes sooner.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests import servers
from tests.conftest import shared_env
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import wait_until

SLOTS = 16
PROBATION = 8
WRITER = "acme/writer"
WORD = "x" * 65_535
BIG = " ".join([WORD] * 80)
"""About 5 MB: the loopback socket buffers of one connection take about 3 MB before the writes stall."""
BUSY = (
    "the server is at its connection limit (FUSION_MAX_CONNECTIONS); only /healthz is served on this connection: "
    "try again shortly"
)


def server_env(sim: ProviderSim, send_s: str) -> dict[str, str]:
    return shared_env(sim, FUSION_MAX_CONNECTIONS=str(SLOTS), FUSION_SEND_TIMEOUT_S=send_s)


@pytest.fixture(scope="module")
def _quick(_sim: ProviderSim) -> Iterator[servers.Running]:
    with servers.http_server(server_env(_sim, "2")) as running:
        yield running


@pytest.fixture(scope="module")
def _patient(_sim: ProviderSim) -> Iterator[servers.Running]:
    with servers.http_server(server_env(_sim, "600")) as running:
        yield running


def checked(running: servers.Running) -> Iterator[servers.Running]:
    logged = len(running.stderr)
    yield running
    assert "Traceback" not in running.stderr[logged:], running.stderr[logged:]


@pytest.fixture
def quick(sim: ProviderSim, _quick: servers.Running) -> Iterator[servers.Running]:
    """16 slots, a send deadline of 2 s."""
    yield from checked(_quick)


@pytest.fixture
def patient(sim: ProviderSim, _patient: servers.Running) -> Iterator[servers.Running]:
    """16 slots, a send deadline of 600 s: nothing is cut for stalling while a test runs."""
    yield from checked(_patient)


def port_of(running: servers.Running) -> int:
    return int(running.base.rsplit(":", 1)[1])


def chat_request(
    stream: bool, *extra: bytes, fields: dict[str, Any] | None = None, api: str = "chat/completions"
) -> bytes:
    """A request to ``/v1/{api}``: chat completions, or the Responses API (``input`` for ``messages``)."""
    question = {"messages": [{"role": "user", "content": "q"}]} if api == "chat/completions" else {"input": "q"}
    chat = {"model": WRITER, **question, "stream": stream, **(fields or {})}
    body = json.dumps(chat).encode()
    head = [
        f"POST /v1/{api} HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        b"Content-Type: application/json",
        b"Content-Length: " + str(len(body)).encode(),
        *extra,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def client(port: int, request: bytes) -> socket.socket:
    """A connection with a small receive buffer that has sent ``request`` and read nothing yet."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(request)
    return s


def half_open(port: int) -> socket.socket:
    return client(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")


def closed_by_server(s: socket.socket, limit_s: float = 30.0) -> bool:
    """Read whatever is buffered; True once the server's end is closed (EOF or reset)."""
    s.settimeout(limit_s)
    try:
        while s.recv(1 << 20):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


def dechunked(raw: bytes) -> tuple[bytes, bytes]:
    """(status line and headers, body) of an HTTP/1.1 response sent with chunked transfer encoding."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    body: list[bytes] = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return head, b"".join(body)
        body.append(rest[:size])
        rest = rest[size + 2 :]


def streamed_text(body: bytes) -> str:
    events = [line[len(b"data: ") :] for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


@pytest.mark.anyio
async def test_slow_readers_are_cut_at_the_send_deadline_and_healthz_answers_meanwhile(
    sim: ProviderSim, quick: servers.Running
) -> None:
    """Every slot is a streamed chat whose client reads nothing, its writer still streaming: each is closed for
    its stalled writes, the writer's request with it, and ``/healthz`` answers on a new connection meanwhile."""
    sim.scripts[WRITER] = lambda body: Reply(content=BIG, linger=60)
    logged = len(quick.stderr)
    readers = [client(port_of(quick), chat_request(stream=True)) for _ in range(SLOTS)]
    try:
        await wait_until(lambda: len(sim.requests_for(WRITER)) == SLOTS, 30)
        health = httpx2.get(f"{quick.base}/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        await wait_until(lambda: len(sim.disconnects) == SLOTS, 60)
        assert sim.disconnects == [WRITER] * SLOTS
        assert all(closed_by_server(s) for s in readers)
    finally:
        for s in readers:
            s.close()
    assert "closed connections: writes stalled for 2 s (FUSION_SEND_TIMEOUT_S)" in quick.stderr[logged:]


@pytest.mark.anyio
async def test_at_the_cap_a_stalled_reader_makes_room_for_a_new_request(
    sim: ProviderSim, patient: servers.Running
) -> None:
    """Every slot is a stalled streamed chat (the send deadline far away): a new request is served in full by
    closing one of them, as a connection that never finished its headers would be."""
    sim.scripts[WRITER] = lambda body: Reply(content=BIG, linger=60)
    logged = len(patient.stderr)
    readers = [client(port_of(patient), chat_request(stream=True)) for _ in range(SLOTS)]
    statuses: list[int] = []

    def served() -> bool:
        # Until the stalls show, a new connection is on probation (503); then it takes a stalled one's slot.
        statuses.append(httpx2.get(f"{patient.base}/v1/models", timeout=10).status_code)
        time.sleep(0.05)
        return statuses[-1] == 200

    try:
        await wait_until(lambda: len(sim.requests_for(WRITER)) == SLOTS, 30)
        await wait_until(served, 30)
        assert set(statuses) <= {200, 503}
        await wait_until(lambda: len(sim.disconnects) == 1, 30)
    finally:
        for s in readers:
            s.close()
        await wait_until(lambda: len(sim.disconnects) == SLOTS, 30)
    assert "FUSION_SEND_TIMEOUT_S" not in patient.stderr[logged:]


@pytest.mark.anyio
async def test_with_every_slot_busy_a_probation_connection_gets_healthz_and_nothing_else(
    sim: ProviderSim, patient: servers.Running
) -> None:
    """Every slot serves a chat that is still thinking (nothing stalled, nothing to evict): a new connection is
    admitted on probation, where ``/healthz`` answers and anything else gets a 503 naming the limit; a flood of
    probation connections that never finish their headers is evicted, oldest first."""
    sim.scripts[WRITER] = lambda body: Reply(latency=60)
    port = port_of(patient)
    busy = [client(port, chat_request(stream=False)) for _ in range(SLOTS)]
    flood: list[socket.socket] = []
    try:
        await wait_until(lambda: len(sim.requests_for(WRITER)) == SLOTS, 30)
        flood = [half_open(port) for _ in range(PROBATION)]
        health = httpx2.get(f"{patient.base}/healthz", timeout=10)
        assert (health.status_code, health.headers["connection"]) == (200, "close")
        # The oldest probation connection made room; the others wait for their headers' deadline.
        assert closed_by_server(flood[0])
        flood[-1].setblocking(False)
        with pytest.raises(BlockingIOError):  # still open, nothing to read
            flood[-1].recv(1, socket.MSG_PEEK)
        models = httpx2.get(f"{patient.base}/v1/models", timeout=10)
        assert (models.status_code, models.headers["connection"], models.headers["retry-after"]) == (503, "close", "1")
        assert models.json() == {
            "error": {"message": BUSY, "type": "service_unavailable", "code": "connection_limit", "param": None}
        }
        mcp = httpx2.post(f"{patient.base}/mcp", json={}, timeout=10)
        assert (mcp.status_code, mcp.headers["connection"], mcp.json()) == (503, "close", {"error": BUSY})
        assert len(sim.requests_for(WRITER)) == SLOTS
    finally:
        for s in busy + flood:
            s.close()
        await wait_until(lambda: len(sim.disconnects) == SLOTS, 30)


def test_a_client_that_reads_slowly_but_steadily_is_not_cut(sim: ProviderSim, quick: servers.Running) -> None:
    """A client reading 64 KB every tenth of a second: the server's last large write keeps its transport paused
    for longer than the deadline (it resumes only once its buffer has drained), but the client takes bytes all
    along, and it gets the whole answer."""
    sim.scripts[WRITER] = lambda body: Reply(content=BIG)
    logged = len(quick.stderr)
    s = client(port_of(quick), chat_request(True, b"Connection: close"))
    raw: list[bytes] = []
    try:
        while True:
            got = 0
            while got < 64 * 1024:
                piece = s.recv(65536)
                if not piece:
                    break
                raw.append(piece)
                got += len(piece)
            if not piece:
                break
            time.sleep(0.1)
    finally:
        s.close()
    head, body = dechunked(b"".join(raw))
    assert head.startswith(b"HTTP/1.1 200 ")
    assert streamed_text(body) == BIG
    assert sim.disconnects == []
    assert "FUSION_SEND_TIMEOUT_S" not in quick.stderr[logged:]


HUGE = " ".join([WORD] * 110)
"""About 7 MB: a writer response within the provider client's 8 MiB cap."""


@pytest.mark.anyio
@pytest.mark.parametrize("api", ["chat/completions", "responses"])
async def test_text_piling_up_for_a_client_that_does_not_read_is_bounded(
    sim: ProviderSim, patient: servers.Running, api: str
) -> None:
    """A turn of two writer responses of ~7 MB each (before and after its run) for a client that reads nothing,
    the send deadline far away: once more than one response's worth of text waits to be sent, the turn is
    stopped, its second writer request abandoned, rather than held whole in memory."""

    def writer(body: dict[str, Any]) -> Reply:
        if "openrouter_fusion" not in json.dumps(body.get("tools") or []):
            return Reply()
        if any(m.get("role") == "tool" for m in body["messages"]):
            return Reply(content=HUGE, linger=60)
        call = {"id": "call_1", "type": "function", "function": {"name": "openrouter_fusion", "arguments": "{}"}}
        return Reply(content=HUGE, tool_calls=[call])

    sim.scripts[WRITER] = writer
    logged = len(patient.stderr)
    reader = client(port_of(patient), chat_request(True, fields={"plugins": [{"id": "fusion"}]}, api=api))
    try:
        await wait_until(lambda: len(sim.requests_for(WRITER)) == 2, 60)
        await wait_until(lambda: sim.disconnects == [WRITER], 60)
        await wait_until(lambda: "the client read the stream too slowly" in patient.stderr[logged:], 30)
    finally:
        reader.close()
    assert "FUSION_SEND_TIMEOUT_S" not in patient.stderr[logged:]
