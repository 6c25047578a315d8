"""The OpenAI-compatible front end: ``POST /v1/chat/completions`` and ``GET /v1/models``.

``fusion-mcp serve --transport http`` serves them beside ``/mcp`` (and under ``/api/v1/...``, so a client
set up with an OpenRouter-style base URL works), behind the same guard (``http_app``): token or
principal, body cap, Host/Origin checks. A request is read by :mod:`~fusion_mcp.openai_api.request`, answered by
the writer loop of :mod:`~fusion_mcp.openai_api.writer` on the process's one :class:`FusionService`, and translated:

- a ``chat.completion``, or with ``stream: true`` SSE ``chat.completion.chunk``s of the writer's text as it
  comes, comments (``: fusion running ...``) at least every ``FUSION_KEEPALIVE_S`` while nothing else
  goes out, the usage chunk when ``stream_options.include_usage`` asks for it, and ``data: [DONE]``;
  ``usage`` sums every request of the turn, and a ``fusion`` field carries the run's result when it ran;
- errors in OpenAI's shape with their status. A response starts with its first byte, so an error before it
  (the writer refused, an unknown model) still gets its own status; after it, an error is a last chunk
  with ``error`` and ``finish_reason: "error"``, as OpenRouter sends.

A client that disconnects cancels the writer, the fusion run and every upstream request at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from ..config import Settings
from ..core import strict_json
from ..core.callers import BODY_KEY, principal_of, upstream_key_of
from ..core.errors import HTTPStatusError, Redactor, UpstreamError
from ..core.models import TokenUsage
from ..core.progress import ProgressEvent
from ..core.strict_json import JSONValueError
from ..core.text import one_line
from ..engine.admission import incoming_depth
from ..engine.service import FusionService
from ..providers.client import MAX_RESPONSE_BYTES, ToolCall
from .request import ALIASES, ChatError, Plan, plan_turn
from .responses import ITEMS_HEADER, ResponseStream, ResponsesTurn, Signal, read_request
from .responses import head as response_head
from .writer import TurnOutcome, Writer

log = logging.getLogger(__name__)
T = TypeVar("T")

CHAT_PATHS = frozenset({"/v1/chat/completions", "/api/v1/chat/completions"})
MODELS_PATHS = frozenset({"/v1/models", "/api/v1/models"})
RESPONSES_PATHS = frozenset({"/v1/responses", "/api/v1/responses"})
API_PATHS = CHAT_PATHS | MODELS_PATHS | RESPONSES_PATHS
API_PREFIXES = ("/v1", "/api/v1")
SERVED = "POST /v1/chat/completions, POST /v1/responses, GET /v1/models (and the same under /api/v1)"
OWNER = "fusion-mcp"
MAX_UNSENT_CHARS = MAX_RESPONSE_BYTES
"""Streamed text that may wait for a client that reads slower than the writer writes: as much as one writer
response may hold at most, so a turn of several writer requests cannot pile up more for a client that does not
read (``FUSION_SEND_TIMEOUT_S`` ends the wait itself)."""
SEND_GRACE_S = 5.0
"""How long the last words of a stream that failed may wait for the client to take them."""
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # nginx buffers responses unless told not to; SSE must flow as it happens.
    (b"x-accel-buffering", b"no"),
]


def is_api_path(path: str) -> bool:
    """Whether ``path`` is this front end's: a route it serves, or any other path under ``/v1`` or ``/api/v1``
    (answered with an OpenAI-shaped 404 naming the routes served)."""
    return path in API_PATHS or any(path == p or path.startswith(f"{p}/") for p in API_PREFIXES)


def error_body(status: int, message: str, *, code: str, param: str | None = None) -> bytes:
    """A refusal's body in OpenAI's shape, for the guard's own refusals (401, 413, 421, 403) on these routes."""
    return json.dumps(ChatError(status, message, code=code, param=param).body()).encode()


class Reply:
    """The response to one request, started by its first byte: until then an error keeps its own status.

    Every byte goes out through here, redacted: each payload as a value (so JSON escaping cannot hide a secret),
    and the streamed text through a :class:`StreamRedactor`, so a key a writer echoes split across two chunks
    is caught too (the last few characters wait for the next chunk, or for :meth:`end_text`).
    """

    def __init__(self, send: Send, redactor: Redactor | None = None) -> None:
        self._send = send
        self.redactor = redactor or Redactor(())
        self._text = self.redactor.stream()
        self._lock = anyio.Lock()
        self.started = False
        self.streaming = False
        self.last = anyio.current_time()
        """When the last byte went out (the keep-alive's clock)."""
        self.base: dict[str, Any] = {}
        """``id``, ``created`` and ``model`` of every chunk, once the request is read."""
        self._role_sent = False
        self.failing: Callable[[ChatError], Awaitable[None]] | None = None
        """Sends a stream's last words when it fails after it began (the Responses API's ``response.failed``);
        None: a chat stream's last chunk with ``error``, then ``[DONE]``."""

    async def json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = self.redactor.dumps(payload, ensure_ascii=False).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        async with self._lock:
            self.started = True
            await self._send({"type": "http.response.start", "status": status, "headers": raw})
            await self._send({"type": "http.response.body", "body": body})

    async def error(self, error: ChatError) -> None:
        if not self.started:
            await self.json(error.status, error.body(), error.headers)
        elif self.streaming:
            # A client that stopped reading must not keep the request: the last words wait a little, not forever.
            with anyio.move_on_after(SEND_GRACE_S):
                if self.failing is not None:
                    await self.failing(error)
                    await self.close()
                    return
                await self.end_text()
                await self.event(self.chunk({}, "error") | error.body())
                await self.done()

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        if not self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent = True
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {**self.head("chat.completion.chunk"), "choices": [choice]}

    def head(self, kind: str) -> dict[str, Any]:
        """The fields every response and chunk starts with, in OpenAI's order."""
        return {"id": self.base.get("id"), "object": kind, **{k: v for k, v in self.base.items() if k != "id"}}

    async def text(self, piece: str, *, end: bool = False) -> None:
        """Stream a piece of the writer's text (what may go out yet: see :class:`StreamRedactor`); ``end``: the
        writer request's text is complete, and nothing needs holding back."""
        ready = self._text.feed(piece) + (self._text.flush() if end else "")
        if ready or not self._role_sent:
            # The first piece starts the stream (with the role, as OpenAI's first chunk does) even while its text
            # is held back: from here on, an error is a last chunk, not a status.
            await self.event(self.chunk({"content": ready}))

    async def end_text(self) -> None:
        """The writer's text has ended: send what was held back."""
        rest = self._text.flush()
        if rest:
            await self.event(self.chunk({"content": rest}))

    async def event(self, payload: dict[str, Any], name: str | None = None) -> None:
        """One SSE event, with an ``event:`` line when ``name`` is given (the Responses API names each one)."""
        data = self.redactor.dumps(payload, ensure_ascii=False).encode()
        await self._write((f"event: {name}\n".encode() if name else b"") + b"data: " + data + b"\n\n")

    async def comment(self, text: str) -> None:
        # One line: a line break inside a comment would start a field of the next event.
        await self._write(f": {one_line(self.redactor.text(text), 300)}\n\n".encode())

    async def json_comment(self, label: str, payload: dict[str, Any]) -> None:
        """A comment carrying a JSON value whole (compact JSON is one line), redacted as a value."""
        data = self.redactor.dumps(payload, ensure_ascii=False)
        await self._write(f": {label} {data}\n\n".encode())

    async def done(self) -> None:
        await self._write(b"data: [DONE]\n\n")
        await self.close()

    async def close(self) -> None:
        async with self._lock:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _write(self, data: bytes) -> None:
        async with self._lock:
            if not self.started:
                self.started = self.streaming = True
                await self._send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
            self.last = anyio.current_time()


class ChatApp:
    """The OpenAI-compatible routes as one ASGI app; ``service`` is lent by the HTTP app's lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service: FusionService | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reply = Reply(send, Redactor(self._secrets(scope)))
        try:
            path = scope["path"]
            if path in MODELS_PATHS:
                await self._models(scope, reply)
            elif path in CHAT_PATHS:
                await self._chat(scope, receive, reply)
            elif path in RESPONSES_PATHS:
                await self._responses(scope, receive, reply)
            else:
                raise ChatError(404, f"no route {path}: this server serves {SERVED}", code="unknown_route")
        except ChatError as error:
            await reply.error(error)
        except Exception as exc:  # a bug: still an answer in the API's shape, never a dropped connection
            log.exception("chat request failed unexpectedly")
            await reply.error(ChatError(500, f"unexpected error: {type(exc).__name__}: {exc}", code="unexpected_error"))

    def _running(self) -> FusionService:
        if self.service is None:
            raise ChatError(503, "the server is starting or stopping; try again", code="not_ready")
        return self.service

    def _secrets(self, scope: Scope) -> tuple[str, ...]:
        key = upstream_key_of(scope)
        return (*self.settings.secrets, *((key.get_secret_value(),) if key is not None else ()))

    async def _models(self, scope: Scope, reply: Reply) -> None:
        if scope["method"] != "GET":
            raise ChatError(405, "use GET to list models", code="method_not_allowed", headers={"Allow": "GET"})
        service = self._running()
        catalogue = await service.catalogue.get()
        known = [m for m in sorted(catalogue.models or ()) if m not in ALIASES]
        data = [_model(m, OWNER) for m in ALIASES] + [_model(m, m.split("/")[0] if "/" in m else OWNER) for m in known]
        for name in service.settings.providers:  # each configured provider's models, as a call names them
            listed = (await service.catalogue.source(name).get()).models or ()
            data += [_model(f"{name}:{m}", name) for m in sorted(listed)]
        await reply.json(200, {"object": "list", "data": data})

    async def _begin(self, scope: Scope, receive: Receive, what: str) -> tuple[FusionService, Any, int]:
        """What every turn starts with: POST, a service, the body, a key to pay with, the caller's depth."""
        if scope["method"] != "POST":
            raise ChatError(405, f"use POST for {what}", code="method_not_allowed", headers={"Allow": "POST"})
        service = self._running()
        raw = scope[BODY_KEY] if BODY_KEY in scope else await _read_json(receive)
        self._need_a_key(upstream_key_of(scope) is not None)
        return service, raw, incoming_depth(Headers(scope=scope), self.settings)

    async def _chat(self, scope: Scope, receive: Receive, reply: Reply) -> None:
        service, raw, depth = await self._begin(scope, receive, "chat completions")
        plan = plan_turn(raw, self.settings, depth=depth, lent=upstream_key_of(scope) is not None)
        reply.base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": plan.writer}
        writer = self._writer(scope, service, plan, depth, reply.base["id"])
        outlet = _ChatOutlet(reply, plan.fusion_events)
        work = (lambda: self._streamed(writer, reply, outlet, plan.fusion_events)) if plan.stream else writer.run
        outcome = await self._turn(writer, receive, work, reply.base["id"])
        if outcome is None:
            return
        if plan.stream:
            await self._finish_stream(reply, plan, outcome)
        else:
            await reply.json(200, completion(reply.head("chat.completion"), outcome))

    async def _responses(self, scope: Scope, receive: Receive, reply: Reply) -> None:
        """``POST /v1/responses``: the same turn as a chat request, read and answered by :mod:`.responses`."""
        service, raw, depth = await self._begin(scope, receive, "responses")
        items = Headers(scope=scope).get(ITEMS_HEADER)
        lent = upstream_key_of(scope) is not None
        turn: ResponsesTurn = read_request(raw, self.settings, depth=depth, items=items, lent=lent)
        plan = turn.plan
        base = response_head(plan.writer)
        reply.base = {"id": base["id"]}

        async def emit(kind: str, payload: dict[str, Any]) -> None:
            await reply.event({"type": kind, **payload}, name=kind)

        builder = ResponseStream(turn, base, reply.redactor, emit if plan.stream else None)
        reply.failing = builder.fail
        writer = self._writer(scope, service, plan, depth, base["id"])
        if plan.stream:
            streamed = lambda: self._streamed(writer, reply, builder.feed, True)  # noqa: E731
            outcome = await self._turn(writer, receive, streamed, base["id"])
        else:
            signals = _collected(writer)
            outcome = await self._turn(writer, receive, writer.run, base["id"])
            await builder.feed(signals)
        if outcome is None:
            return
        response = await builder.finish(outcome)
        if plan.stream:
            await reply.close()
        else:
            await reply.json(200, response)

    def _writer(self, scope: Scope, service: FusionService, plan: Plan, depth: int, turn_id: str) -> Writer:
        api_key = upstream_key_of(scope)
        return Writer(plan, service, depth=depth, principal=principal_of(scope), api_key=api_key, turn_id=turn_id)

    async def _turn(
        self, writer: Writer, receive: Receive, work: Callable[[], Awaitable[TurnOutcome]], turn_id: str
    ) -> TurnOutcome | None:
        """Run a turn while the client is connected (None once it hung up: all it started is cancelled)."""
        started = anyio.current_time()
        try:
            outcome = await _while_connected(receive, work)
        except UpstreamError as exc:
            raise upstream_error(exc, writer.plan.writer, own_key=writer.api_key is not None) from None
        seconds = anyio.current_time() - started
        if outcome is None:
            log.info("chat %s for %s: the client hung up after %.1f s; cancelled", turn_id, writer.principal, seconds)
            return None
        ran = f"fusion {outcome.fusion.run_id} {outcome.fusion.status}" if outcome.fusion else "no fusion"
        log.info(
            "chat %s for %s: writer %s (%d requests), %s, %s in %.1f s",
            turn_id, writer.principal, writer.plan.writer, writer.requests, ran, outcome.finish_reason, seconds,
        )  # fmt: skip
        return outcome

    def _need_a_key(self, lent: bool) -> None:
        """OpenRouter needs a key: the server's, or with ``FUSION_PASS_THROUGH_KEY`` the caller's own."""
        if lent or self.settings.api_key is not None or not self.settings.is_openrouter:
            return
        if self.settings.lent_key_prefix is not None:
            raise ChatError(
                401,
                f"send your OpenRouter key as 'Authorization: Bearer {self.settings.lent_key_prefix}...': this server "
                "has no key of its own",
                code="missing_api_key",
            )
        raise ChatError(503, "OPENROUTER_API_KEY is not set on this server", code="missing_api_key")

    async def _streamed(
        self, writer: Writer, reply: Reply, outlet: Callable[[list[Signal]], Awaitable[None]], panel_text: bool
    ) -> TurnOutcome:
        """Run the writer, handing what it tells (text, progress, with ``panel_text`` the panel's streamed text)
        to ``outlet`` as it comes, and keep-alive comments while nothing else goes out."""
        signals_in, signals_out = anyio.create_memory_object_stream[Signal](math.inf)
        unsent = 0
        ended = _Ended()

        def signal(kind: Any, value: Any, size: int = 0) -> None:
            nonlocal unsent
            unsent += size
            if unsent > MAX_UNSENT_CHARS and ended.error is None:
                # The text waits for a client that does not read: stop the turn rather than hold it all.
                ended.error = ChatError(
                    408,
                    f"the client read the stream too slowly: {MAX_UNSENT_CHARS:,} characters of the answer were "
                    "waiting to be sent; the request was stopped",
                    code="slow_reader",
                )
                log.warning("chat %s: %s", reply.base.get("id"), ended.error.message)
                inner.cancel_scope.cancel()
            signals_in.send_nowait((kind, value))

        async def on_event(event: ProgressEvent) -> None:
            signal("progress", event)

        writer.on_text = lambda piece: signal("text", piece, len(piece))
        writer.on_text_end = lambda: signal("end", None)
        writer.on_event = on_event
        writer.on_fusion = lambda run_id, result: signal("fusion", (run_id, result))
        if panel_text:
            writer.on_delta = lambda model, piece, reasoning: signal("delta", (model, piece, reasoning), len(piece))

        async def turn() -> None:
            try:
                ended.outcome = await writer.run()
            except (UpstreamError, ChatError) as exc:
                ended.error = exc
            finally:
                signals_in.close()

        async def pump() -> None:
            async with signals_out:
                async for first in signals_out:
                    # Whatever else has arrived meanwhile goes out together: one write, not one per word.
                    batch = [first]
                    with contextlib.suppress(anyio.WouldBlock, anyio.EndOfStream):
                        while True:
                            batch.append(signals_out.receive_nowait())
                    await outlet(batch)
                    nonlocal unsent
                    unsent -= sum(len(v) for k, v in batch if k == "text") + sum(
                        len(v[1]) for k, v in batch if k == "delta"
                    )

        async with anyio.create_task_group() as tg:
            tg.start_soon(self._keepalive, writer, reply)
            async with anyio.create_task_group() as inner:
                inner.start_soon(pump)
                inner.start_soon(turn)
            tg.cancel_scope.cancel()
        if ended.error is not None:
            raise ended.error
        assert ended.outcome is not None  # turn() set one or the other
        return ended.outcome

    async def _keepalive(self, writer: Writer, reply: Reply) -> None:
        """A comment whenever nothing went out for ``FUSION_KEEPALIVE_S``, so proxies and clients wait on."""
        interval = self.settings.keepalive_s
        while True:
            await anyio.sleep(max(0.0, reply.last + interval - anyio.current_time()))
            if anyio.current_time() - reply.last >= interval:
                since = anyio.current_time() - writer.phase_since
                waiting = "fusion running" if writer.phase == "fusion" else f"waiting for {writer.plan.writer}"
                await reply.comment(f"{waiting} ({since:.0f} s)")

    async def _finish_stream(self, reply: Reply, plan: Plan, outcome: TurnOutcome) -> None:
        await reply.end_text()
        if outcome.tool_calls:
            calls = [_tool_call(call) | {"index": i} for i, call in enumerate(outcome.tool_calls)]
            await reply.event(reply.chunk({"tool_calls": calls}))
        last = reply.chunk({}, outcome.finish_reason)
        if outcome.fusion is not None:
            last["fusion"] = outcome.fusion.to_json()
        await reply.event(last)
        if plan.include_usage:
            await reply.event({**reply.head("chat.completion.chunk"), "choices": [], "usage": usage(outcome.usage)})
        await reply.done()


class _ChatOutlet:
    """A chat stream's signals as chunks: the writer's text as content, progress as comments, and with
    ``stream_options.include_fusion_events`` the fusion events as ``: fusion {json}`` comments."""

    def __init__(self, reply: Reply, fusion_events: bool) -> None:
        self.reply = reply
        self.events: ResponseStream | None = None
        if fusion_events:

            async def comment(kind: str, payload: dict[str, Any]) -> None:
                await reply.json_comment("fusion", {"type": kind, **payload})

            self.events = ResponseStream.fusion_only(reply.redactor, comment)

    async def __call__(self, batch: list[Signal]) -> None:
        text: list[str] = []
        for kind, value in batch:
            if kind == "text":
                text.append(value)
                continue
            if text or kind == "end":
                await self.reply.text("".join(text), end=kind == "end")
                text = []
            if kind == "progress":
                await self.reply.comment(f"fusion running: {value.message}")
            if kind != "end" and self.events is not None:
                await self.events.feed([(kind, value)])
        if text:
            await self.reply.text("".join(text))


def _collected(writer: Writer) -> list[Signal]:
    """A non-streamed turn's text and fusion call, in order, for :class:`ResponseStream` to build items from."""
    signals: list[Signal] = []
    writer.on_text = lambda piece: signals.append(("text", piece))
    writer.on_text_end = lambda: signals.append(("end", None))
    writer.on_fusion = lambda run_id, result: signals.append(("fusion", (run_id, result)))
    return signals


@dataclass
class _Ended:
    outcome: TurnOutcome | None = None
    error: UpstreamError | ChatError | None = None


async def _while_connected(receive: Receive, work: Callable[[], Awaitable[T]]) -> T | None:
    """``work()``'s value, or None when the client hung up first: all it started is then cancelled.

    ``work``'s ``UpstreamError`` or ``ChatError`` propagates as itself.
    """
    done: list[T] = []
    failed: list[UpstreamError | ChatError] = []
    async with anyio.create_task_group() as tg:

        async def attend() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        async def run() -> None:
            try:
                done.append(await work())
            except (UpstreamError, ChatError) as exc:
                failed.append(exc)
            tg.cancel_scope.cancel()

        tg.start_soon(attend)
        tg.start_soon(run)
    if failed:
        raise failed[0]
    return done[0] if done else None


async def _read_json(receive: Receive) -> Any:
    """The request body as JSON, when the guard has not parsed it (an empty body; the guard bounded its size)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ChatError(400, "the request ended before its body", code="invalid_request")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    try:
        return strict_json.loads(b"".join(chunks))
    except JSONValueError as exc:
        raise ChatError(400, str(exc), code="invalid_value", param=exc.field) from None
    except ValueError:
        raise ChatError(400, "the request body is not JSON", code="invalid_json") from None


def upstream_error(exc: UpstreamError, writer: str, *, own_key: bool) -> ChatError:
    """The writer's failed request as the caller's error: its status where it is the caller's to act on."""
    message = f"{writer}: {exc.message}"
    status = exc.status_code if isinstance(exc, HTTPStatusError) else None
    if isinstance(exc, HTTPStatusError) and (exc.code == "model_not_found" or status == 404):
        return ChatError(404, message, code="model_not_found", param="model")
    if status == 401:
        if own_key:
            return ChatError(401, message, code="invalid_api_key")
        return ChatError(502, f"{writer}: the provider rejected this server's API key", code="upstream_error")
    retry = getattr(exc, "retry_after", None)
    headers = {"Retry-After": f"{math.ceil(retry)}"} if retry is not None else None
    known = {400: "upstream_bad_request", 402: "insufficient_credits", 403: "forbidden", 429: "rate_limited"}
    if status in known:
        return ChatError(status, message, code=known[status], headers=headers)
    if status in (503, 529):
        return ChatError(503, message, code="provider_unavailable", headers=headers)
    return ChatError(502, message, code="upstream_error")


def completion(head: dict[str, Any], outcome: TurnOutcome) -> dict[str, Any]:
    """The non-streaming response, after ``head`` (id, object, created, model)."""
    message: dict[str, Any] = {"role": "assistant", "content": outcome.content or (None if outcome.tool_calls else "")}
    if outcome.tool_calls:
        message["tool_calls"] = [_tool_call(call) for call in outcome.tool_calls]
    data = {
        **head,
        "choices": [{"index": 0, "message": message, "finish_reason": outcome.finish_reason}],
        "usage": usage(outcome.usage),
    }
    if outcome.fusion is not None:
        data["fusion"] = outcome.fusion.to_json()
    return data


def usage(total: TokenUsage) -> dict[str, Any]:
    """OpenAI's usage object, with OpenRouter's ``cost`` (USD) when the provider reported it."""
    data: dict[str, Any] = {
        "prompt_tokens": total.prompt_tokens,
        "completion_tokens": total.completion_tokens,
        "total_tokens": total.total_tokens,
        "completion_tokens_details": {"reasoning_tokens": total.reasoning_tokens},
    }
    if total.cost is not None:
        data["cost"] = total.cost
    return data


def _tool_call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _model(model_id: str, owner: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}
