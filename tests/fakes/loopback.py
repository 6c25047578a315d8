"""An ASGI app served by uvicorn in a thread on a free 127.0.0.1 port: the base of the loopback fakes."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn


class LoopbackServer:
    """Serve ``app`` until :meth:`close`; ``config`` goes to ``uvicorn.Config`` (TLS files, for one; ``lifespan="on"``
    for an app whose lifespan opens what it serves with)."""

    def __init__(self, app: Any, **config: Any) -> None:
        # IPPROTO_TCP explicitly, so asyncio sets TCP_NODELAY (no 40 ms delayed-ACK stalls on reuse).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, **{"log_level": "error", "lifespan": "off", **config}))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("loopback server did not start")
            time.sleep(0.01)

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
