"""``fusion-mcp lab``: the web lab on a loopback server of its own, signed in by a fresh one-time link.

For people who use the stdio server: the lab shows the ``local`` principal's runs (the stdio host's and
``ask``'s, in the same history) and runs new ones as that principal. The link's token signs one browser in,
once; the server binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import socket
import sys
import webbrowser
from collections.abc import Callable

import anyio

from ..config import Settings
from ..core.callers import LOCAL_PRINCIPAL

HOST = "127.0.0.1"


def add_arguments(parser: argparse.ArgumentParser, port: Callable[[str], int]) -> None:
    parser.add_argument("--port", type=port, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument(
        "--no-browser", action="store_true", help="print the sign-in link without opening a browser (headless machines)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Serve the lab until interrupted; exit 1 when the port cannot be had."""
    from ..http.app import base_url, serve_http
    from ..http.workers import PortUnavailable
    from ..lab import SignIns

    port = args.port or free_port()
    sign_ins = SignIns(settings.principals)
    link = f"{base_url(HOST, port)}/lab/signin?once={sign_ins.one_time(LOCAL_PRINCIPAL)}"

    def started() -> None:
        print(f"fusion-mcp lab: {link}", flush=True)
        print("  the link signs one browser in, once (within an hour); Ctrl-C stops the lab", file=sys.stderr)
        if not args.no_browser and not webbrowser.open(link):
            print("  no browser could be opened here: open the link yourself", file=sys.stderr, flush=True)

    try:
        anyio.run(lambda: serve_http(settings, HOST, port, on_started=started, sign_ins=sign_ins))
    except PortUnavailable as exc:
        print(f"fusion-mcp: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
