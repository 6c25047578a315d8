"""Loopback fakes of the search APIs the server can use: SearXNG, Brave and Tavily, each in its own shape.

One uvicorn server in a thread answers all three under path prefixes (``/searxng``, ``/brave``, ``/tavily``),
so a test points ``FUSION_SEARXNG_URL``, ``FUSION_BRAVE_URL`` or ``FUSION_TAVILY_URL`` at it. Keys are checked
the way the real services check them; every request is recorded for assertions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.loopback import LoopbackServer

BRAVE_KEY = "BSA-test-key-0123456789-do-not-leak"
TAVILY_KEY = "tvly-test-key-0123456789-do-not-leak"


@dataclass
class Seen:
    backend: str
    query: str
    max_results: int | None
    headers: dict[str, str]


class SearchApis:
    def __init__(self) -> None:
        self.hits: list[tuple[str, str, str]] = []
        """(title, url, snippet) answered to every query."""
        self.fail_next = 0
        self.fail_status = 503
        self.raw: bytes | None = None
        """When set, every answer is these bytes (for garbage-in tests)."""
        self.seen: list[Seen] = []
        routes = [
            Route("/searxng/search", self._searxng, methods=["GET"]),
            Route("/brave/res/v1/web/search", self._brave, methods=["GET"]),
            Route("/tavily/search", self._tavily, methods=["POST"]),
        ]
        self._http = LoopbackServer(Starlette(routes=routes))
        self.base = f"http://127.0.0.1:{self._http.port}"

    def reset(self) -> None:
        self.hits, self.fail_next, self.fail_status, self.raw, self.seen = [], 0, 503, None, []

    def close(self) -> None:
        self._http.close()

    def _record(self, backend: str, request: Request, query: str, count: Any) -> Response | None:
        self.seen.append(Seen(backend, query, int(count) if count is not None else None, dict(request.headers)))
        if self.fail_next:
            self.fail_next -= 1
            return JSONResponse({"error": "scripted failure"}, status_code=self.fail_status)
        if self.raw is not None:
            return Response(self.raw, media_type="application/json")
        return None

    async def _searxng(self, request: Request) -> Response:
        if request.query_params.get("format") != "json":
            return Response("JSON output is disabled", status_code=403)
        failed = self._record("searxng", request, request.query_params.get("q", ""), None)
        results = [{"url": u, "title": t, "content": s, "engine": "fake"} for t, u, s in self.hits]
        return failed or JSONResponse({"query": request.query_params.get("q"), "results": results})

    async def _brave(self, request: Request) -> Response:
        if request.headers.get("x-subscription-token") != BRAVE_KEY:
            return JSONResponse({"type": "ErrorResponse", "error": {"code": "SUBSCRIPTION_TOKEN_INVALID"}}, 401)
        params = request.query_params
        failed = self._record("brave", request, params.get("q", ""), params.get("count"))
        results = [{"title": t, "url": u, "description": s, "type": "search_result"} for t, u, s in self.hits]
        return failed or JSONResponse({"type": "search", "web": {"type": "search", "results": results}})

    async def _tavily(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {TAVILY_KEY}":
            return JSONResponse({"detail": {"error": "Unauthorized: missing or invalid API key."}}, 401)
        body = await request.json()
        failed = self._record("tavily", request, body.get("query", ""), body.get("max_results"))
        results = [{"title": t, "url": u, "content": s, "score": 0.9} for t, u, s in self.hits]
        return failed or JSONResponse({"query": body.get("query"), "results": results, "response_time": 0.1})
