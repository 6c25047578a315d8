"""How web fetches reach the outside world: :class:`Network`, the system's or a test's fake one.

Apart from :mod:`~fusion_mcp.web.fetch` so that a front end can name the network without loading the fetcher
(httpcore2's connection machinery, h11): that is loaded when web tools are first used.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    import httpcore2

Resolver = Callable[[str, int], Awaitable[list[str]]]
Connector = Callable[[str, int, float | None], Awaitable["httpcore2.AsyncNetworkStream"]]


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (glibc accepts 127.1, 0x7f.1, 2130706433...)."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Network:
    """How fetches resolve names and open connections: the system's, unless a test fakes the outside world."""

    resolve: Resolver = system_resolve
    connect: Connector | None = None
    ssl_context: ssl.SSLContext | None = None
    """The CAs and TLS settings fetches use; None: the default context (certificates verified, host names too)."""


SYSTEM_NETWORK = Network()
