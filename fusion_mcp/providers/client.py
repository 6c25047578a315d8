"""The chat-completions client: one POST, SSE or JSON, retries, typed errors, usage.

Speaks the core of the OpenAI-compatible protocol that OpenRouter, Ollama, vLLM, LM Studio and most
gateways share. Every request carries the explicit ``max_completion_tokens`` the caller put in the body,
the attribution headers and ``x-openrouter-fusion-depth``, so a fusion server reached downstream can
refuse to fuse again.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import aclosing, contextmanager, suppress
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.request import getproxies

import anyio
import httpx2
import pydantic_core

from ..config import Endpoint, Settings
from ..core.callers import DEPTH_HEADER
from ..core.errors import BadResponse, ConnectionFailed, HTTPStatusError, Timeout, UpstreamError, redact
from ..core.limits import MAX_PANEL, MAX_RETRIES
from ..core.model_ids import DEFAULT_PROVIDER
from ..core.models import TokenUsage
from ..core.strict_json import as_object
from ..core.text import one_line
from ..core.tls import default_tls
from .sse import SSEDecoder, TooLong

log = logging.getLogger(__name__)
MAX_RETRY_AFTER_S = 20.0
DRAIN_S = 1.0
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
"""No honest chat completion is this large; past it the answer is cut and the member fails."""


def auth_headers(source: Settings | Endpoint) -> dict[str, str]:
    """What identifies us to a provider on every request, its catalogue's too: its ``Authorization`` header
    (none when it has no key: a local server) and a configured provider's extra headers (a key may travel in
    one, as Azure's ``api-key``: a catalogue read without it would be refused, and ids go unchecked)."""
    found = dict(source.headers) if isinstance(source, Endpoint) else {}
    if source.api_key is not None:
        found["Authorization"] = f"Bearer {source.api_key.get_secret_value()}"
    return found


TextSink = Callable[[str], None]
"""Sees each piece of an answer's text as it streams in."""
RetryListener = Callable[[int, float, str], Awaitable[None]]
"""Told before each retry: its number (1 for the first), the seconds it waits, and what failed."""


def new_http_client(max_connections: int = 64, *, proxied: bool | None = None) -> httpx2.AsyncClient:
    """The process-wide pool for provider requests.

    Long read timeouts because reasoning models think for minutes; ``trust_env`` stays on so a
    corporate proxy set in the environment still applies to the provider (never to web fetches). Without one,
    the connections are made by :class:`FirstUseTransport`: the TLS context is loaded on the first https://
    request, never for a provider reached over http://. (httpx2 reads the environment's proxies only when it
    builds the transport itself, so with a proxy set it does, with the process's context, as before.)
    ``proxied`` says whether the environment sets a proxy, when the caller has already looked (each look
    walks the whole environment).
    """
    limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    if proxied is None:
        proxied = environment_proxied()
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(connect=10.0, read=300.0, write=30.0, pool=30.0),
        limits=limits,
        follow_redirects=False,
        verify=default_tls() if proxied else True,  # True: unused, the transport below verifies
        transport=None if proxied else FirstUseTransport(limits),
    )


def environment_proxied() -> bool:
    """Whether the environment sets a proxy for provider requests (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``)."""
    proxies = getproxies()
    return any(proxies.get(scheme) for scheme in ("http", "https", "all"))


@cache
def _plain_only() -> ssl.SSLContext:
    """The context of the plain-HTTP transport, which is never asked for TLS (https:// goes elsewhere): it
    verifies certificates and host names like any client context and trusts no CA, so it could complete no
    handshake at all. Cheap: no CA bundle is loaded."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class FirstUseTransport(httpx2.AsyncBaseTransport):
    """httpx2's pooled transport, made on the first request of its scheme: http:// through one, https://
    through one with the process's TLS context (:func:`~fusion_mcp.core.tls.default_tls`, loaded then).

    Loading the CA bundle takes ~35 ms of a start-up hosts wait for; a local provider never needs it. A
    provider speaks one scheme, so in practice one of the two pools is ever made (each has ``limits``).
    """

    def __init__(self, limits: httpx2.Limits) -> None:
        self._limits = limits
        self._plain: httpx2.AsyncHTTPTransport | None = None
        self._tls: httpx2.AsyncHTTPTransport | None = None

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.scheme == "https":
            if self._tls is None:
                self._tls = httpx2.AsyncHTTPTransport(verify=default_tls(), limits=self._limits)
            return await self._tls.handle_async_request(request)
        if self._plain is None:
            self._plain = httpx2.AsyncHTTPTransport(verify=_plain_only(), limits=self._limits)
        return await self._plain.handle_async_request(request)

    async def aclose(self) -> None:
        for transport in (self._plain, self._tls):
            if transport is not None:
                await transport.aclose()


RUNS_PER_POOL = 4
"""Runs that share one pool of provider connections (see :class:`ProviderPools`)."""


class ProviderPools:
    """The process's provider connections: one pool per few runs, and one shared by everything else
    (the catalogue, chat writer requests).

    httpcore2 checks every idle connection of a pool (a socket poll each) whenever a request starts or ends,
    so one pool for many concurrent runs spends more CPU on that than on the requests themselves: ~6 ms per
    call at 32 concurrent runs (``docs/benchmarks.md``). A run leases the pool with the fewest runs; each
    pool has room for every member and the analyst of :data:`RUNS_PER_POOL` runs, so a run never waits for
    a connection another run holds.
    """

    def __init__(self, runs: int, shared: int, providers: Iterable[str] = ()) -> None:
        count = max(1, -(-runs // RUNS_PER_POOL))
        # The environment is read once for every pool, and a run pool is made when first leased (a server that
        # never has more than four runs at once makes one): start-up builds two clients, not ten.
        self._proxied = environment_proxied()
        self._pools: list[httpx2.AsyncClient | None] = [None] * count
        self._leases = [0] * count
        self.shared = new_http_client(shared, proxied=self._proxied)
        self.providers = {
            name: new_http_client(min(1024, runs * (MAX_PANEL + 1) + shared), proxied=self._proxied)
            for name in providers
        }
        """One pool per configured provider (by name), for its runs' members, its catalogue and chat writers:
        a slow or failing provider holds only its own connections."""

    @contextmanager
    def lease(self) -> Iterator[httpx2.AsyncClient]:
        """The pool for one run, held until it ends."""
        index = min(range(len(self._leases)), key=self._leases.__getitem__)
        pool = self._pools[index]
        if pool is None:
            pool = self._pools[index] = new_http_client(RUNS_PER_POOL * (MAX_PANEL + 1), proxied=self._proxied)
        self._leases[index] += 1
        try:
            yield pool
        finally:
            self._leases[index] -= 1

    async def aclose(self) -> None:
        for client in (*self._pools, self.shared, *self.providers.values()):
            if client is not None:
                await client.aclose()


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass
class Completion:
    """One assistant turn, whichever way it arrived."""

    model: str
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: TokenUsage = field(default_factory=TokenUsage)
    annotations: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Line:
    """Where one provider's requests go: its URL, headers (key, attribution) and connection pool."""

    endpoint: Endpoint
    url: str
    headers: dict[str, str]
    http: httpx2.AsyncClient
    label: str | None
    """How messages name it (``provider 'local'``); None with no providers configured, as before."""


def endpoint_headers(endpoint: Endpoint, settings: Settings, depth: int) -> dict[str, str]:
    """A provider's request headers: the key, its extra headers, and the attribution and depth headers where
    they apply (the default provider and OpenRouter always; a vendor's API not: ``attribution = false``)."""
    headers = {"Content-Type": "application/json", **endpoint.headers}
    if endpoint.attribution:
        headers.update(
            {
                "HTTP-Referer": settings.app_url,
                "X-OpenRouter-Title": settings.app_title,
                "X-Title": settings.app_title,
                DEPTH_HEADER: str(depth + 1),
            }
        )
    if endpoint.api_key is not None:
        headers["Authorization"] = f"Bearer {endpoint.api_key.get_secret_value()}"
    return headers


class Provider:
    """Chat completions for one fusion run at one recursion depth, each request sent to the provider its
    ``model`` routes to (:meth:`Settings.route`): one base URL, or each configured provider's with its own
    key, headers and connection pool (``pools``, by provider name; ``http`` for those without one)."""

    def __init__(
        self,
        http: httpx2.AsyncClient,
        settings: Settings,
        *,
        depth: int = 0,
        pools: Mapping[str, httpx2.AsyncClient] | None = None,
    ) -> None:
        self._settings = settings
        self._secrets = settings.secrets
        self._routed = routed = bool(settings.providers)
        self._lines = {
            name: Line(
                endpoint,
                f"{endpoint.base_url}/chat/completions",
                endpoint_headers(endpoint, settings, depth),
                (pools or {}).get(name, http),
                f"provider {name!r}" if routed else None,
            )
            for name, endpoint in settings.endpoints.items()
        }

    def line(self, model: str) -> tuple[Line, str]:
        """The provider ``model`` (an id without a lens) goes to, and the id it is sent."""
        if not self._routed:  # one base URL: nothing to route
            return self._lines[DEFAULT_PROVIDER], model
        endpoint, upstream = self._settings.route(model)
        return self._lines[endpoint.name], upstream

    def provider_of(self, model: str) -> str | None:
        """The name of the provider that serves ``model``; None with no providers configured."""
        return self._settings.provider_name(model)

    async def complete(
        self,
        body: dict[str, Any],
        *,
        on_text: TextSink | None = None,
        deadline: float | None = None,
        on_retry: RetryListener | None = None,
        on_reasoning: TextSink | None = None,
    ) -> Completion:
        """Send one chat completion, retrying what is worth retrying; raise :class:`UpstreamError`.

        ``body["stream"]`` picks SSE; ``on_text`` then sees each piece of text as it arrives (``on_reasoning``
        each piece of the model's streamed ``reasoning``, OpenRouter's field). ``deadline``
        (``anyio.current_time()`` scale) stops retrying when the next wait would pass it: the caller gets
        the last error rather than a retry that cannot finish in time. ``on_retry`` hears of each retry (the
        run's progress shows it in the member's row); without one, retries are logged. With providers
        configured, an error names the provider that failed.
        """
        try:
            line, upstream = self.line(str(body.get("model")))
        except ValueError as exc:
            raise UpstreamError(str(exc)) from None
        body = _for_provider(line.endpoint, {**body, "model": upstream} if upstream != body.get("model") else body)
        try:
            completion = await self._retrying(line, body, on_text, deadline, on_retry, on_reasoning)
        except UpstreamError as exc:
            if line.label is not None:
                exc.message = f"{line.label}: {exc.message}"
                exc.args = (exc.message,)
            raise
        price = line.endpoint.price(upstream) if line.endpoint.named else None
        if completion.usage.cost is None and price is not None:
            # A provider that reports no cost (a vendor's API, a local server): the configured price counts it.
            used = completion.usage
            cost = round(used.prompt_tokens * price[0] + used.completion_tokens * price[1], 10)
            completion.usage = used.model_copy(update={"cost": cost})
        return completion

    async def _retrying(
        self,
        line: Line,
        body: dict[str, Any],
        on_text: TextSink | None,
        deadline: float | None,
        on_retry: RetryListener | None,
        on_reasoning: TextSink | None,
    ) -> Completion:
        for attempt in range(MAX_RETRIES + 1):
            try:
                return await self._once(line, body, on_text, on_reasoning)
            except UpstreamError as exc:
                if not exc.retryable or attempt == MAX_RETRIES or exc.partial:
                    raise
                delay = _backoff(attempt, getattr(exc, "retry_after", None))
                if deadline is not None and anyio.current_time() + delay >= deadline:
                    raise
                if on_retry is not None:
                    await on_retry(attempt + 1, delay, exc.message)
                else:
                    log.info("retrying %s in %.1f s after: %s", body.get("model"), delay, exc.message)
                await anyio.sleep(delay)
        raise AssertionError("unreachable")

    async def _once(
        self, line: Line, body: dict[str, Any], on_text: TextSink | None, on_reasoning: TextSink | None = None
    ) -> Completion:
        stream = bool(body.get("stream"))
        try:
            async with line.http.stream("POST", line.url, content=json_body(body), headers=line.headers) as response:
                if response.status_code >= 400:
                    raise self._status_error(response, await _read_capped(response))
                if stream and response.headers.get("content-type", "").startswith("text/event-stream"):
                    return await _parse_sse(response, on_text, self._secrets, on_reasoning)
                return _parse_json(await _read_capped(response), response, self._secrets)
        except httpx2.TimeoutException as exc:
            raise Timeout(f"the provider did not answer in time ({type(exc).__name__})") from None
        except httpx2.ConnectError as exc:
            raise ConnectionFailed(f"could not connect to the provider at {line.url}: {_describe(exc)}") from None
        except httpx2.TransportError as exc:
            raise ConnectionFailed(f"the connection to the provider broke: {_describe(exc)}") from None

    def _status_error(self, response: httpx2.Response, raw: bytes) -> HTTPStatusError:
        status = response.status_code
        message, code = _error_message(raw)
        retry_after = _retry_after(response.headers.get("retry-after"))
        if status == 401:
            message = f"the API key was rejected: {message}"
        elif status == 402:
            message = f"insufficient credits: {message}"
        return HTTPStatusError(
            redact(f"HTTP {status}: {message}", self._secrets),
            status_code=status,
            retry_after=retry_after,
            code=code or ("model_not_found" if status == 404 else None),
        )


def json_body(body: dict[str, Any]) -> bytes:
    """``body`` as the compact UTF-8 JSON httpx2's ``json=`` sends, written by pydantic's encoder (several times
    the standard library's speed on a request of a few kilobytes, nine of them per run); what that encoder
    refuses (a lone surrogate) fails as httpx2's own encoding would."""
    try:
        return pydantic_core.to_json(body)
    except pydantic_core.PydanticSerializationError:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _for_provider(endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` in the provider's dialect: ``reasoning`` (OpenRouter's object) is ``reasoning_effort`` on the
    other OpenAI-compatible APIs (OpenAI, Anthropic's and Gemini's compatibility endpoints, vLLM, Ollama)."""
    reasoning = body.get("reasoning")
    if not isinstance(reasoning, dict) or endpoint.is_openrouter or not endpoint.named:
        return body
    body = {k: v for k, v in body.items() if k != "reasoning"}
    if isinstance(reasoning.get("effort"), str):
        body["reasoning_effort"] = reasoning["effort"]
    return body


def _describe(exc: Exception) -> str:
    detail = str(exc).strip()
    return f"{type(exc).__name__} ({one_line(detail, 200)})" if detail else type(exc).__name__


def _backoff(attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(retry_after, MAX_RETRY_AFTER_S)
    # Full jitter keeps a panel of members that failed together from retrying in lockstep.
    return (0.5 * 2.0**attempt) * (0.5 + random.random())


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # HTTP-date form: rare upstream, the default backoff is fine
    return seconds if seconds is not None and 0 <= seconds < 3600 else None


async def _read_capped(response: httpx2.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async with aclosing(response.aiter_bytes()) as pieces:  # see _sse_events
        async for chunk in pieces:
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise BadResponse(f"the response was larger than {MAX_RESPONSE_BYTES // 2**20} MiB and was cut")
            chunks.append(chunk)
    return b"".join(chunks)


def _error_message(raw: bytes) -> tuple[str, str | None]:
    """Pull ``error.message`` (and a model-not-found code) out of an OpenRouter/OpenAI error body."""
    try:
        data = json.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", "replace").strip()
        return (_clip(text) if text else "no error message"), None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or "no error message")
        blob = json.dumps(error.get("metadata") or {}) + message
        code = "model_not_found" if "model_not_found" in blob or "not a valid model" in blob else None
        return _clip(message), code
    if isinstance(error, str):
        return _clip(error), None
    return _clip(raw.decode("utf-8", "replace")), None


def _clip(text: str, limit: int = 500) -> str:
    return one_line(text, limit)


def _parse_json(raw: bytes, response: httpx2.Response, secrets: tuple[str, ...]) -> Completion:
    try:
        data = json.loads(raw)
    except ValueError:
        kind = response.headers.get("content-type", "").split(";")[0].strip() or "a body"
        raise BadResponse(
            redact(
                f"the provider answered with {kind} that is not JSON: {_clip(raw.decode('utf-8', 'replace'), 120)!r}",
                secrets,
            )
        ) from None
    if not isinstance(data, dict):
        raise BadResponse("the provider answered with JSON that is not an object")
    if "error" in data and not data.get("choices"):
        message, _ = _error_message(raw)
        code = data["error"].get("code") if isinstance(data["error"], dict) else None
        raise UpstreamError(redact(f"provider error: {message}", secrets), status_code=_int_or_none(code))
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BadResponse("the provider's answer has no choices")
    choice = choices[0]
    reply = as_object(choice.get("message"))
    if choice.get("error"):
        err = choice["error"]
        text = err.get("message") if isinstance(err, dict) else str(err)
        raise UpstreamError(redact(f"the model failed: {_clip(str(text))}", secrets))
    calls = []
    for i, call in enumerate(reply.get("tool_calls") or []):
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            calls.append(ToolCall(str(call.get("id") or f"call_{i}"), str(fn.get("name") or ""), _args(fn)))
    return Completion(
        model=str(data.get("model") or ""),
        content=_text(reply.get("content")),
        tool_calls=calls,
        finish_reason=choice.get("finish_reason"),
        usage=parse_usage(data.get("usage")),
        annotations=[a for a in reply.get("annotations") or [] if isinstance(a, dict)],
    )


async def _sse_events(response: httpx2.Response) -> AsyncGenerator[str, None]:
    """The ``data`` of each event of an SSE stream (:class:`~.sse.SSEDecoder`: multi-line ``data:``, comments,
    CRLF and events split across reads), within the size cap.

    Comment lines (``: OPENROUTER PROCESSING``) are keep-alives and never become events; an event with no
    data (a lone ``retry:`` or ``id:``) carries nothing for us and is skipped, as the SSE standard says.
    """
    decoder = SSEDecoder(MAX_RESPONSE_BYTES)
    size = 0
    try:
        # Closed here, not left to the garbage collector: httpx2's byte iterator closes the iterators it
        # nests in a `finally`, and asyncio finalizing those too, at once, raised "async generator already
        # executing" (an unraisable error) whenever a stream was left before its end.
        async with aclosing(response.aiter_bytes()) as pieces:
            async for chunk in pieces:
                # Counted on what arrived and on what it decoded to, so a compressed stream is bounded too.
                size += len(chunk)
                if max(size, response.num_bytes_downloaded) > MAX_RESPONSE_BYTES:
                    raise BadResponse(f"the stream was longer than {MAX_RESPONSE_BYTES // 2**20} MiB and was cut")
                for data in decoder.feed(chunk):
                    yield data
    except TooLong:
        raise BadResponse(f"the stream sent an event longer than {MAX_RESPONSE_BYTES // 2**20} MiB") from None


async def _drain(events: AsyncIterator[str]) -> None:
    """Read what is left of a finished stream (its closing chunk), so the connection goes back to the pool.

    Leaving a response unread closes its connection: every streamed request would then pay a new TCP (and
    TLS) handshake. A server that keeps the stream open after ``[DONE]`` gets a moment, not more.
    """
    with anyio.move_on_after(DRAIN_S):
        async for _ in events:
            pass


async def _parse_sse(
    response: httpx2.Response,
    on_text: TextSink | None,
    secrets: tuple[str, ...],
    on_reasoning: TextSink | None = None,
) -> Completion:
    out = Completion(model="", content="")
    parts: list[str] = []
    calls: dict[int, ToolCall] = {}
    done = False
    events = _sse_events(response)
    try:
        async for data in events:
            if data.strip() == "[DONE]":
                done = True
                await _drain(events)
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                raise BadResponse(f"the stream sent a chunk that is not JSON: {_clip(data, 120)!r}") from None
            if not isinstance(chunk, dict):
                continue
            text = _plain_delta(chunk)
            if text is not None:  # most of a stream: a piece of text and nothing else to read
                if text:
                    parts.append(text)
                    if on_text is not None:
                        on_text(text)
                if not out.model:
                    out.model = str(chunk.get("model") or "")
                continue
            out.model = out.model or str(chunk.get("model") or "")
            if chunk.get("usage"):
                out.usage = parse_usage(chunk["usage"])
            choice = (chunk.get("choices") or [{}])[0]
            if not isinstance(choice, dict):
                continue
            if chunk.get("error") or choice.get("finish_reason") == "error":
                message, _ = _error_message(json.dumps({"error": chunk.get("error") or "the model failed"}).encode())
                status = chunk["error"].get("code") if isinstance(chunk.get("error"), dict) else None
                raise UpstreamError(
                    redact(f"the stream ended with an error: {message}", secrets),
                    status_code=_int_or_none(status),
                )
            delta = choice.get("delta") or {}
            if isinstance(delta, dict):
                text = _text(delta.get("content"))
                if text:
                    parts.append(text)
                    if on_text is not None:
                        on_text(text)
                reasoning = delta.get("reasoning")
                if on_reasoning is not None and isinstance(reasoning, str) and reasoning:
                    on_reasoning(reasoning)
                for call in delta.get("tool_calls") or []:
                    _merge_call(calls, call)
                out.annotations.extend(a for a in delta.get("annotations") or [] if isinstance(a, dict))
            out.finish_reason = choice.get("finish_reason") or out.finish_reason
    except UpstreamError as exc:
        exc.partial = "".join(parts)
        raise
    except (httpx2.TransportError, httpx2.TimeoutException) as exc:
        raise ConnectionFailed(f"the stream broke off: {_describe(exc)}", partial="".join(parts)) from None
    finally:
        with suppress(httpx2.TransportError):  # a stream being let go: an error closing it changes nothing
            await events.aclose()  # left at [DONE] or an error: closed now (see _sse_events)
    if not done and out.finish_reason is None:
        raise ConnectionFailed("the stream ended before the answer was complete", partial="".join(parts))
    out.content = "".join(parts)
    out.tool_calls = [calls[i] for i in sorted(calls)]
    return out


def _plain_delta(chunk: dict[str, Any]) -> str | None:
    """The text of a chunk that is one choice's plain content delta and nothing more (no usage, error, finish,
    reasoning, tool calls or annotations), or None for any other chunk, which the general path reads."""
    choices = chunk.get("choices")
    if type(choices) is not list or len(choices) != 1 or chunk.get("usage") or "error" in chunk:
        return None
    choice = choices[0]
    if type(choice) is not dict or choice.get("finish_reason") is not None:
        return None
    delta = choice.get("delta")
    if type(delta) is not dict or "tool_calls" in delta or "annotations" in delta or delta.get("reasoning"):
        return None
    text = delta.get("content")
    return text if type(text) is str else None


def _merge_call(calls: dict[int, ToolCall], delta: Any) -> None:
    if not isinstance(delta, dict):
        return
    index = delta.get("index")
    if not isinstance(index, int):
        index = len(calls)
    fn = as_object(delta.get("function"))
    call = calls.setdefault(index, ToolCall(id="", name="", arguments=""))
    call.id = call.id or str(delta.get("id") or f"call_{index}")
    call.name += str(fn.get("name") or "")
    arguments = fn.get("arguments")
    call.arguments += arguments if isinstance(arguments, str) else ""


def _args(fn: dict[str, Any]) -> str:
    args = fn.get("arguments")
    if isinstance(args, str):
        return args
    return json.dumps(args) if args is not None else ""


def _text(content: Any) -> str:
    """Message content is a string, null, or (some providers) a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def parse_usage(raw: Any) -> TokenUsage:
    """Read an OpenAI/OpenRouter usage object, tolerating missing or odd fields."""
    if not isinstance(raw, dict):
        return TokenUsage()
    details = as_object(raw.get("completion_tokens_details"))
    cost = raw.get("cost")
    prompt, completion = _count(raw.get("prompt_tokens")), _count(raw.get("completion_tokens"))
    return TokenUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        reasoning_tokens=_count(details.get("reasoning_tokens")),
        total_tokens=_count(raw.get("total_tokens")) or prompt + completion,
        cost=float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
    )
