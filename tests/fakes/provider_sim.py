"""A loopback OpenAI-compatible provider: a real HTTP server, scripted per model id.

Runs uvicorn in a thread so that in-process tests, a stdio subprocess and the Inspector can all reach it.
Every request is recorded with its headers and body. A model without a script answers plainly; a request
that asks for ``response_format: json_schema`` (the analyst) gets a valid analysis built from the labels
its schema allows, plus one insight under a label that names nobody (which the server must drop).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.loopback import LoopbackServer

DEFAULT_USAGE = {
    "prompt_tokens": 100,
    "completion_tokens": 50,
    "total_tokens": 150,
    "cost": 0.0015,
    "completion_tokens_details": {"reasoning_tokens": 7},
}
GHOST_LABEL = "Model Z"


@dataclass
class Reply:
    """One scripted answer. Defaults give a plain, successful completion."""

    content: str | None = None
    """None: a generated answer naming the model (or an analysis for the analyst)."""
    latency: float = 0.0
    status: int = 200
    error_message: str = "scripted failure"
    error_metadata: dict[str, Any] | None = None
    retry_after: str | None = None
    raw: bytes | None = None
    """Send these bytes as the body, as is (malformed JSON, HTML...)."""
    raw_parts: list[bytes] | None = None
    """Send the body in these pieces, each written and flushed on its own a moment after the last, so the
    client reads them separately (an SSE event split across reads)."""
    content_type: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    usage: dict[str, Any] | None = field(default_factory=lambda: dict(DEFAULT_USAGE))
    stream_error: str | None = None
    """Streaming only: after the content, send a chunk with ``error`` and ``finish_reason: "error"``."""
    chunk_delay: float = 0.0
    linger: float = 0.0
    """Streaming only: after the content, hold the stream open this long before its closing chunk (a model
    still writing); a client that hangs up meanwhile is recorded in ``disconnects``."""
    keepalives: int = 2
    finish_reason: str = "stop"
    echo_auth: bool = False
    """Put the request's Authorization header into the error message, or into the answer of a successful
    reply (a provider, or a model, echoing the key)."""
    annotations: list[dict[str, Any]] | None = None
    """``message.annotations`` (OpenRouter's server tools cite pages as ``url_citation``)."""
    reasoning: str | None = None
    """Streaming only: OpenRouter's ``delta.reasoning``, word by word, before the content."""


@dataclass
class Recorded:
    model: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float
    peer: tuple[str, int] | None = None
    """The client's address and port: two requests with one peer came over one connection."""


Script = list[Reply] | Callable[[dict[str, Any]], Reply]


class ProviderSim:
    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.requests: list[Recorded] = []
        self.disconnects: list[str] = []
        """Models whose request the client abandoned while the simulator was still "thinking" (or lingering)."""
        self._lock = threading.Lock()
        self.catalogue: list[dict[str, Any]] | None = None
        """What ``GET /models`` lists (None: the endpoint answers 404, as many local servers do)."""
        self.aliases: dict[str, dict[str, Any]] = {}
        """What ``GET /model/{id}`` resolves (OpenRouter's ``~...-latest`` aliases)."""
        self.valid_key: str | None = None
        """When set, ``GET /key`` answers 401 for any other bearer token, and so do chat completions and ``GET
        /models`` (as a vendor's API does)."""
        self.lookups: list[str] = []
        self.catalogue_reads = 0
        self.catalogue_headers: list[dict[str, str]] = []
        """The headers of every ``GET /models`` request."""
        """``GET /models`` requests served."""
        """Every ``GET /model/...`` path, as the server sent it (before any decoding)."""
        self._app = Starlette(
            routes=[
                Route("/api/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/api/v1/models", self._models, methods=["GET"]),
                Route("/api/v1/model/{model:path}", self._model, methods=["GET"]),
                Route("/api/v1/key", self._key, methods=["GET"]),
                Route("/shared/api/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/shared/api/v1/models", self._no_catalogue, methods=["GET"]),
                Route("/shared/api/v1/model/{model:path}", self._no_catalogue, methods=["GET"]),
                Route("/shared/api/v1/key", self._key, methods=["GET"]),
            ]
        )
        self._http: LoopbackServer | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    @property
    def shared_base_url(self) -> str:
        """The same provider without a catalogue, for servers that outlive a test.

        A server caches the catalogue it reads (an hour), and it reads it when it likes (a second after
        start, on a call): a server shared by many tests would keep whatever catalogue the test running at
        that moment had set, and refuse the next test's models. Through this address it never sees one.
        """
        return f"http://127.0.0.1:{self.port}/shared/api/v1"

    def start(self) -> ProviderSim:
        self._http = LoopbackServer(self._app, access_log=False)
        self.port = self._http.port
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()

    def reset(self) -> None:
        with self._lock:
            self.scripts.clear()
            self.requests.clear()
            self.disconnects.clear()
            self.catalogue = None
            self.aliases.clear()
            self.valid_key = None
            self.lookups.clear()
            self.catalogue_reads = 0
            self.catalogue_headers.clear()

    def script(self, model: str, *replies: Reply) -> None:
        """Answer ``model``'s requests with these replies in turn; the last one repeats."""
        self.scripts[model] = list(replies)

    def requests_for(self, model: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.model == model]

    def _next(self, model: str, body: dict[str, Any]) -> Reply:
        with self._lock:
            script = self.scripts.get(model)
            if script is None:
                return _from_name(model, body)
            if callable(script):
                return script(body)
            return script.pop(0) if len(script) > 1 else script[0]

    async def _models(self, request: Request) -> Response:
        with self._lock:
            self.catalogue_reads += 1
            self.catalogue_headers.append(dict(request.headers))
        if self.valid_key is not None and request.headers.get("authorization") != f"Bearer {self.valid_key}":
            return JSONResponse({"error": {"code": 401, "message": "Incorrect API key provided"}}, status_code=401)
        if self.catalogue is None:
            return JSONResponse({"error": {"code": 404, "message": "not found"}}, status_code=404)
        return JSONResponse({"data": self.catalogue})

    async def _no_catalogue(self, request: Request) -> Response:
        return JSONResponse({"error": {"code": 404, "message": "not found"}}, status_code=404)

    async def _model(self, request: Request) -> Response:
        with self._lock:
            self.lookups.append(request.scope.get("raw_path", b"").decode("latin-1"))
        found = self.aliases.get(request.path_params["model"])
        if found is None:
            return JSONResponse({"error": {"code": 404, "message": "model not found"}}, status_code=404)
        return JSONResponse({"data": found})

    async def _key(self, request: Request) -> Response:
        if self.valid_key is not None and request.headers.get("authorization") != f"Bearer {self.valid_key}":
            return JSONResponse({"error": {"code": 401, "message": "No auth credentials found"}}, status_code=401)
        return JSONResponse({"data": {"label": "sk-or-v1-abc...xyz", "limit": 10, "usage": 1.25}})

    async def _think(self, request: Request, model: str, seconds: float) -> bool:
        """Wait like a slow model, noticing at once when the client hangs up; False if it did.

        Waits on the connection's next ASGI message rather than polling, so a hundred slow requests in
        flight cost the simulator nothing (polling would make it the bottleneck of a load benchmark).
        """

        async def hang_up() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        sleeper = asyncio.ensure_future(asyncio.sleep(seconds))
        watcher = asyncio.ensure_future(hang_up())
        done, pending = await asyncio.wait({sleeper, watcher}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if watcher in done:
            self._abandoned(model)
            return False
        return True

    def _abandoned(self, model: str) -> None:
        with self._lock:
            self.disconnects.append(model)

    async def _chat(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            return JSONResponse({"error": {"code": 400, "message": "body is not JSON"}}, status_code=400)
        model = str(body.get("model"))
        with self._lock:
            peer = (request.client.host, request.client.port) if request.client else None
            self.requests.append(Recorded(model, body, dict(request.headers), time.monotonic(), peer))
        if self.valid_key is not None and request.headers.get("authorization") != f"Bearer {self.valid_key}":
            error = {"code": 401, "message": "Incorrect API key provided"}
            return JSONResponse({"error": error}, status_code=401)
        reply = self._next(model, body)
        if reply.latency and not await self._think(request, model, reply.latency):
            return Response(status_code=499)
        if reply.status >= 400:
            message = reply.error_message
            if reply.echo_auth:
                message += f" (you sent {request.headers.get('authorization')})"
            error: dict[str, Any] = {"code": reply.status, "message": message}
            if reply.error_metadata:
                error["metadata"] = reply.error_metadata
            headers = {"Retry-After": reply.retry_after} if reply.retry_after else None
            content = reply.raw if reply.raw is not None else json.dumps({"error": error}).encode()
            return Response(content, status_code=reply.status, headers=headers, media_type="application/json")
        if reply.raw is not None:
            return Response(reply.raw, media_type=reply.content_type or "application/json")
        if reply.raw_parts is not None:
            return StreamingResponse(_parts(reply.raw_parts), media_type=reply.content_type or "text/event-stream")
        content = reply.content if reply.content is not None else _default_content(model, body)
        if reply.echo_auth:
            content += f" (the request said: {request.headers.get('authorization')})"
        concrete = model.lstrip("~").replace("-latest", "-20261101")
        if body.get("stream"):
            stream = _sse(reply, concrete, content, lambda: self._abandoned(model))
            return StreamingResponse(stream, media_type="text/event-stream")
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        if reply.annotations:
            message["annotations"] = reply.annotations
        return JSONResponse(
            {
                "id": "gen-sim",
                "object": "chat.completion",
                "model": concrete,
                "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
                "usage": reply.usage,
            }
        )


_LATENCY = re.compile(r"lat(\d+)ms")
_FUSES = "-fuses"
FUSION_TOOL = "openrouter_fusion"


def _should_fuse(body: dict[str, Any]) -> bool:
    offered = [t.get("function", {}).get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
    answered = any(m.get("role") == "tool" for m in body.get("messages") or [] if isinstance(m, dict))
    return FUSION_TOOL in offered and not answered


_LENGTH = re.compile(r"len(\d+)")


def priced(model: str, prompt: float = 1e-6, completion: float = 4e-6, tools: bool = True) -> dict[str, Any]:
    """A catalogue entry as OpenRouter shapes it (prices are USD strings per token)."""
    params = ["tools", "structured_outputs", "response_format"] if tools else ["response_format"]
    return {
        "id": model,
        "pricing": {"prompt": str(prompt), "completion": str(completion)},
        "supported_parameters": params,
    }


def _from_name(model: str, body: dict[str, Any]) -> Reply:
    """Unscripted models may carry their behaviour in their id: ``bench/m1-lat400ms-len2500``.

    A writer named ``...-fuses...`` calls the ``openrouter_fusion`` function it is offered, once per
    conversation, then answers (the chat endpoint's benchmark).
    """
    latency = _LATENCY.search(model)
    length = _LENGTH.search(model)
    if _FUSES in model and _should_fuse(body):
        arguments = json.dumps({"prompt": "benchmark question"})
        call = {"id": "call_fuse", "type": "function", "function": {"name": FUSION_TOOL, "arguments": arguments}}
        return Reply(latency=int(latency.group(1)) / 1000 if latency else 0.0, content="", tool_calls=[call])
    content = None
    if length:
        sentence = f"{model} explains one more aspect of the question in a plain sentence. "
        content = (sentence * (int(length.group(1)) // len(sentence) + 1))[: int(length.group(1))]
    return Reply(latency=int(latency.group(1)) / 1000 if latency else 0.0, content=content)


def schema_labels(body: dict[str, Any]) -> list[str]:
    """The labels the analyst may use, read from the request's JSON schema."""
    schema = body["response_format"]["json_schema"]["schema"]
    return schema["properties"]["unique_insights"]["items"]["properties"]["model"]["enum"]


def analysis_for(labels: list[str]) -> dict[str, Any]:
    first, last = labels[0], labels[-1]
    return {
        "consensus": ["All answers agree on the core point."],
        "contradictions": [
            {
                "topic": "the best approach",
                "stances": [{"model": lab, "stance": f"{lab} prefers its own"} for lab in labels],
            }
        ],
        "partial_coverage": [{"models": [first, GHOST_LABEL], "point": "edge cases"}],
        "unique_insights": [
            {"model": last, "insight": "a point only the last model made"},
            {"model": GHOST_LABEL, "insight": "an insight from a model that does not exist"},
        ],
        "blind_spots": ["cost over time"],
    }


def _default_content(model: str, body: dict[str, Any]) -> str:
    if isinstance(body.get("response_format"), dict):
        return json.dumps(analysis_for(schema_labels(body)))
    return f"Answer from {model}: the answer is 42."


async def _parts(parts: list[bytes]):
    for part in parts:
        yield part
        await asyncio.sleep(0.005)


async def _sse(reply: Reply, model: str, content: str, abandoned: Callable[[], None]):
    for _ in range(reply.keepalives):
        yield ": OPENROUTER PROCESSING\n\n"

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        data = {
            "id": "gen-sim",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(data)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for i, word in enumerate((reply.reasoning or "").split(" ") if reply.reasoning else []):
        yield chunk({"reasoning": word if i == 0 else " " + word})
    words = content.split(" ")
    for i, word in enumerate(words):
        if reply.chunk_delay:
            await asyncio.sleep(reply.chunk_delay)
        yield chunk({"content": word if i == 0 else " " + word})
        if i % 3 == 2:
            yield ": OPENROUTER PROCESSING\n\n"
    for index, call in enumerate(reply.tool_calls or []):
        fn = call["function"]
        args = fn.get("arguments", "")
        half = len(args) // 2
        yield chunk(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": fn["name"], "arguments": args[:half]},
                    }
                ]
            }
        )
        yield chunk({"tool_calls": [{"index": index, "function": {"arguments": args[half:]}}]})
    if reply.stream_error:
        data = {
            "id": "gen-sim",
            "model": model,
            "error": {"code": 502, "message": reply.stream_error},
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
        }
        yield f"data: {json.dumps(data)}\n\n"
        return
    if reply.annotations:
        yield chunk({"annotations": reply.annotations})
    if reply.linger:
        try:
            await asyncio.sleep(reply.linger)
        except asyncio.CancelledError:  # starlette cancels the stream when the client hangs up
            abandoned()
            raise
    finish = "tool_calls" if reply.tool_calls else reply.finish_reason
    yield chunk({}, finish)
    if reply.usage is not None:
        yield f"data: {json.dumps({'id': 'gen-sim', 'model': model, 'choices': [], 'usage': reply.usage})}\n\n"
    yield "data: [DONE]\n\n"


def main() -> None:
    """Run the simulator as its own process (for benchmarks): print the base URL, serve until stdin closes."""
    import gc
    import sys

    sim = ProviderSim().start()
    # The simulator stands for the outside world: its pauses must not read as the server's latency. What it
    # loaded leaves the collector's sight, and the older generations, whose collections walk everything the
    # simulator keeps (tens of ms under load), run 100 times less often: the middle one once per 700,000
    # allocations instead of 7,000.
    gc.freeze()
    gc.set_threshold(700, 1000, 1000)
    print(sim.base_url, flush=True)
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    sim.stop()


if __name__ == "__main__":
    main()
