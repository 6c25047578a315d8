"""Which process holds an MCP session, read from the session id it gave the client.

A stateful MCP session (clients of the 2025-11-25 protocol era) lives in the memory of one process: its
requests, progress and cancellation must reach that process. With several processes behind one address —
``--workers`` on one machine, or replicas behind a proxy — the session id the client sees carries where the
session lives, as dot-separated tags before the SDK's own id: ``{replica}.w{worker}.{id}`` (``FUSION_REPLICA``
and the worker's index, each only when set). A proxy routes on the replica tag (``docs/deploy.md`` shows
nginx doing it); a worker that receives another worker's session relays the request to it over that
worker's own loopback port, streaming the response back, so progress, results and cancellation (the client's
``notifications/cancelled``, or its closed stream) all reach the session's process.

The tags are added and removed at the HTTP guard: the MCP SDK inside sees only its own ids.
"""

from __future__ import annotations

import logging
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
from starlette.types import Receive, Scope, Send

log = logging.getLogger(__name__)
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade", b"content-length"}
)
"""Headers about one hop of a connection, never relayed to the next."""
RELAY_TIMEOUT = httpx2.Timeout(connect=5.0, read=None, write=30.0, pool=5.0)
"""A relayed response may stream for a whole run (read: no limit); reaching a sibling must be quick."""


@dataclass(frozen=True)
class Route:
    """Where a request for a session goes: this process (``local``, the SDK's id) or a sibling worker
    (``sibling``, the file naming its relay port)."""

    local: str | None = None
    sibling: Path | None = None


def worker_port_file(directory: Path, index: int) -> Path:
    """Where worker ``index`` of a ``--workers`` server writes the loopback port its siblings relay to.

    Read at each relay: a restarted worker listens on a new port.
    """
    return directory / f"w{index}.port"


class SessionRoutes:
    """The tags of this process (its replica, its worker index) and its siblings' sockets."""

    def __init__(
        self, *, replica: str | None = None, worker: int | None = None, workers: int = 1, directory: Path | None = None
    ) -> None:
        self.tags = tuple(t for t in (replica, None if worker is None else f"w{worker}") if t is not None)
        self.replica = replica
        self.worker = worker
        self.siblings = {
            f"w{i}": worker_port_file(directory, i) for i in range(workers) if directory is not None and i != worker
        }
        self._clients: dict[int, httpx2.AsyncClient] = {}
        """A client per sibling port; forgotten when it cannot be reached (its worker was restarted)."""

    @property
    def active(self) -> bool:
        return bool(self.tags)

    def outward(self, local: str) -> str:
        """The id the client gets for the SDK's session ``local``."""
        return ".".join((*self.tags, local))

    def inward(self, public: str) -> Route:
        """Where the client's session id ``public`` lives; an empty route when it is no session of ours."""
        parts = public.split(".", len(self.tags))
        if len(parts) != len(self.tags) + 1:
            return Route()
        if self.replica is not None and parts[0] != self.replica:
            log.warning(
                "a request for a session of replica %r reached replica %r: route on the session id's first tag "
                "(see docs/deploy.md)",
                parts[0][:40],
                self.replica,
            )
            return Route()
        worker = parts[len(self.tags) - 1] if self.worker is not None else None
        if worker is not None and worker != f"w{self.worker}":
            sibling = self.siblings.get(worker)
            return Route(sibling=sibling)  # an unknown worker tag: no route, so 404
        return Route(local=parts[-1])

    async def relay(self, sibling: Path, scope: Scope, body: bytes, receive: Receive, send: Send) -> bool:
        """Hand the request to the sibling that holds its session and stream its response back; False, with
        nothing sent, when the sibling cannot be reached (it is restarting, and its sessions went with it).

        A client that goes away mid-response closes the relayed request too, so the sibling sees the
        disconnect exactly as if the client had been its own (and cancels the call).
        """
        try:
            # Read at each relay: a sibling that was restarted listens on a new port.
            port = int(await anyio.Path(sibling).read_text())
        except (OSError, ValueError) as exc:
            log.warning("no relay port for %s: %r", sibling.stem, exc)
            return False
        client = self._clients.get(port)
        if client is None:
            client = self._clients[port] = httpx2.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", timeout=RELAY_TIMEOUT
            )
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        url = path.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
        headers = [(k, v) for k, v in scope["headers"] if k not in HOP_BY_HOP]
        request = client.build_request(scope["method"], url, headers=headers, content=body)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_on_disconnect, receive, tg.cancel_scope)
            try:
                response = await client.send(request, stream=True)
            except httpx2.TransportError as exc:
                log.warning("relay to %s failed: %r", sibling.stem, exc)
                if self._clients.get(port) is client:  # not one a concurrent relay put there since
                    del self._clients[port]
                    await client.aclose()
                tg.cancel_scope.cancel()
                return False
            try:
                raw = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
                await send({"type": "http.response.start", "status": response.status_code, "headers": raw})
                try:
                    async with aclosing(response.aiter_raw()) as pieces:  # see providers.client._sse_events
                        async for chunk in pieces:
                            await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except httpx2.TransportError as exc:  # the sibling died mid-response: end what the client got
                    log.warning("relay from %s broke off: %r", sibling.stem, exc)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                await response.aclose()
                tg.cancel_scope.cancel()
        return True

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
