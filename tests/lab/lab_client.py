"""A browser-like HTTP client of the web lab: it keeps the cookies, sends each form with the page's CSRF token
and its Origin, as a browser does (the lab refuses a POST without them)."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx2

from fusion_mcp.config import load_settings
from fusion_mcp.http.app import build_app
from fusion_mcp.lab import SignIns
from fusion_mcp.web.network import Network
from tests.fakes.loopback import LoopbackServer

ALICE = "alice-lab-token-0123456789"
BOB = "bob-lab-token-0123456789ab"
TOKENS = f"alice:{ALICE},bob:{BOB}"
CSRF = re.compile(r'name="csrf" value="([^"]*)"')


@dataclass
class Lab:
    base: str
    sign_ins: SignIns


@contextmanager
def lab_server(env: dict[str, str], network: Network | None = None) -> Iterator[Lab]:
    """The whole HTTP app ``serve`` runs, in this process on a loopback port, with its own history."""
    with tempfile.TemporaryDirectory(prefix="fusion-lab-home-") as home:
        settings = load_settings(environ={"FUSION_HOME": home, **env})
        sign_ins = SignIns(settings.principals)
        app = build_app(settings, sign_ins=sign_ins, **({"network": network} if network is not None else {}))
        server = LoopbackServer(app, lifespan="on")
        try:
            yield Lab(f"http://127.0.0.1:{server.port}", sign_ins)
        finally:
            server.close()


class LabClient(httpx2.Client):
    def __init__(self, base: str) -> None:
        super().__init__(base_url=base, follow_redirects=False, timeout=30)
        self.base = base

    def csrf(self, path: str) -> str:
        page = self.get(path)
        found = CSRF.search(page.text)
        assert found, f"no form on {path}: {page.status_code} {page.text[:300]}"
        return found[1]

    def form(
        self, path: str, data: dict[str, str], *, page: str = "/lab/ask", csrf: str | None = None
    ) -> httpx2.Response:
        fields = {"csrf": self.csrf(page) if csrf is None else csrf, **data}
        return self.post(path, data=fields, headers={"origin": self.base})

    def sign_in(self, token: str) -> httpx2.Response:
        return self.form("/lab/signin", {"token": token}, page="/lab/signin")

    def ask(self, **fields: str) -> str:
        """Start a run from the ask form; its run id."""
        answer = self.form("/lab/runs", fields)
        assert answer.status_code == 303, (answer.status_code, answer.text[:500])
        return answer.headers["location"].rsplit("/", 1)[1]

    def events(self, run_id: str) -> list[dict[str, object]]:
        """Every ``news`` event of a run's live stream, until its last."""
        import json

        found = []
        with self.stream("GET", f"/lab/runs/{run_id}/events") as stream:
            assert stream.status_code == 200, stream.status_code
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    found.append(json.loads(line[6:]))
        return found
