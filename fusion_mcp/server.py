"""The MCP layer: ``create_server()`` registers ``openrouter_fusion`` and turns a call into a run.

This is the only module that imports ``mcp``. It checks arguments and recursion depth, builds a
:class:`FusionRequest` from arguments and settings, forwards pipeline events as progress notifications,
and returns the result both as ``structuredContent`` (validated against the declared output schema) and
as a markdown text block. Error results carry ``isError`` so hosts show them.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from importlib.metadata import version as dist_version
from typing import Annotated, Any, Literal

import anyio
import httpx2
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types import CallToolResult, EmptyResult, SetLevelRequestParams, TextContent, ToolAnnotations
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from .catalogue import CatalogueClient, check_request, mark_tool_support
from .config import MAX_PANEL, MAX_TOOL_CALLS, PRESETS, Settings, check_model_id, check_model_ids
from .errors import redact
from .models import FailureReason, FusionRequest, FusionResult
from .pipeline import ProgressEvent, new_run_id
from .provider import DEPTH_HEADER, Provider, new_http_client
from .render import render
from .service import fuse, open_store
from .store import Store
from .web.fetch import SYSTEM_NETWORK, Network
from .web.tools import open_web_tools

log = logging.getLogger("fusion_mcp")
TOOL_NAME = "openrouter_fusion"
__version__ = dist_version("fusion-mcp")

DESCRIPTION = f"""Ask a panel of {MAX_PANEL} or fewer AI models the same question in parallel and get an \
analyst's structured comparison of their answers: consensus, contradictions, partial coverage, unique \
insights and blind spots, plus every full answer. You then write the final answer from it.

Use it for research questions, expert critique or review, and decisions where being wrong costs more than \
a few extra model calls (architecture choices, security or legal-adjacent questions, fact checks, \
comparing options). Do not use it for short tactical prompts, chit-chat, or anything one model answers \
well: a run costs several completions and takes as long as the slowest model plus the analysis.

The panel does NOT see this conversation: make `prompt` a complete, self-contained question, and put \
code, excerpts, constraints or other material it needs in `context`."""

INSTRUCTIONS = (
    "fusion-mcp offers one tool, openrouter_fusion, that asks several models at once and returns an "
    "analysis of where they agree and disagree. Write the final answer yourself from its result."
)


def _lifespan(settings: Settings, store: Store | None, network: Network) -> Any:
    @asynccontextmanager
    async def lifespan(_: MCPServer[Any]) -> AsyncIterator[dict[str, Any]]:
        # One connection pool and one run limiter for the whole process, whatever the transport. The
        # pool holds a connection for every member and the analyst of every run allowed at once.
        limiter = anyio.CapacityLimiter(settings.max_concurrent)
        try:
            async with (
                new_http_client(max_connections=settings.max_concurrent * (MAX_PANEL + 1)) as http,
                open_web_tools(settings, network) as web,
                anyio.create_task_group() as tg,
            ):
                catalogue = CatalogueClient(http, settings)
                tg.start_soon(_check_configured_models, catalogue, settings)
                try:
                    yield {"http": http, "limiter": limiter, "catalogue": catalogue, "web": web}
                finally:
                    tg.cancel_scope.cancel()
        finally:
            if store is not None:
                store.close()

    return lifespan


def incoming_depth(headers: Mapping[str, str] | None, settings: Settings) -> int:
    """The caller's fusion depth: the HTTP header when there is one, else ``FUSION_DEPTH`` (stdio).

    A header that is not a whole number counts as nested: refusing a confused caller is cheaper than
    letting a loop of servers fan out.
    """
    depth = settings.depth
    raw = headers.get(DEPTH_HEADER) if headers is not None else None
    if raw is not None:
        try:
            depth = max(depth, int(raw.strip()))
        except ValueError:
            depth = max(depth, 1)
    return depth


def error_result(run_id: str, reason: FailureReason, message: str) -> FusionResult:
    return FusionResult(status="error", run_id=run_id, error=message, failure_reason=reason)


def as_tool_result(result: FusionResult, max_chars: int | None = None) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=render(result, max_chars))],
        structured_content=result.to_json(),
        is_error=result.status == "error",
    )


def build_request(
    settings: Settings,
    prompt: str,
    context: str | None,
    analysis_models: list[str] | None,
    model: str | None,
    max_tool_calls: int | None,
    preset: str | None = None,
) -> FusionRequest:
    """Merge arguments over settings; raise :class:`ToolError` naming the argument that breaks a rule."""
    if not prompt.strip():
        raise ToolError("invalid argument prompt: must be a non-empty, self-contained question")
    if preset is not None and preset not in PRESETS:
        raise ToolError(f"invalid argument preset: must be one of {', '.join(PRESETS)}")
    default_panel, default_analyst = settings.models_for(preset)
    try:
        panel = check_model_ids(analysis_models) if analysis_models is not None else default_panel
    except ValueError as exc:
        raise ToolError(
            f"invalid argument analysis_models: must be 1-{MAX_PANEL} unique, non-empty model ids ({exc})"
        ) from None
    try:
        analyst = check_model_id(model) if model is not None else default_analyst
    except ValueError as exc:
        raise ToolError(f"invalid argument model: must be one non-empty model id ({exc})") from None
    return FusionRequest(
        prompt=prompt.strip(),
        context=context if context and context.strip() else None,
        analysis_models=panel,
        model=analyst,
        max_tool_calls=max_tool_calls if max_tool_calls is not None else settings.max_tool_calls,
        max_completion_tokens=settings.max_completion_tokens,
        temperature=settings.temperature,
        stream=settings.stream,
        deadline_s=settings.deadline_s,
        analyst_reserve_s=settings.analyst_reserve_s,
        web_tools=settings.web_mode,  # type: ignore[arg-type]
    )


# logging/setLevel (2025-11-25 era and before) -> the level each session asked for. The capability is
# deprecated as of 2026-07-28, where clients opt in per request instead; older hosts still show these.
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


class _SessionLogLevels:
    """Remembers ``logging/setLevel`` per connection; sends run events as log messages to those that asked.

    A connection is recognised by its ``initialize`` parameters object, the one thing the SDK exposes that
    lives exactly as long as the connection. Holding it keeps its ``id`` from being reused; the table is
    bounded so long-running HTTP servers do not accumulate closed connections.
    """

    MAX_CONNECTIONS = 1024

    def __init__(self) -> None:
        self._levels: dict[int, tuple[object, str]] = {}

    async def set_level(self, ctx: Any, params: SetLevelRequestParams) -> EmptyResult:
        key = ctx.session.client_params
        self._levels.pop(id(key), None)
        self._levels[id(key)] = (key, params.level)
        while len(self._levels) > self.MAX_CONNECTIONS:
            self._levels.pop(next(iter(self._levels)))
        return EmptyResult()

    async def send(self, ctx: Context, level: str, message: str) -> None:
        entry = self._levels.get(id(ctx.request_context.session.client_params))
        if entry is None or LOG_LEVELS.index(level) < LOG_LEVELS.index(entry[1]):
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)  # a deliberate use of the older protocol
            await ctx.request_context.session.send_log_message(
                level=level, data=message, logger="fusion", related_request_id=ctx.request_id
            )


def create_server(settings: Settings, network: Network = SYSTEM_NETWORK) -> MCPServer[Any]:
    """Build the server without running it, so tests and every transport share one construction.

    ``network`` is how web fetches resolve names and connect: the system's unless a test fakes it.
    """
    store = open_store(settings)
    server: MCPServer[Any] = MCPServer(
        "fusion-mcp",
        title="Fusion",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=_lifespan(settings, store, network),
        log_level=settings.log_level,  # type: ignore[arg-type]
    )

    log_levels = _SessionLogLevels()
    server._lowlevel_server.add_request_handler("logging/setLevel", SetLevelRequestParams, log_levels.set_level)

    @server.custom_route("/healthz", methods=["GET"])
    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__})

    @server.resource(
        "fusion://runs",
        name="recent fusion runs",
        description="The 50 most recent runs: time, prompt head, panel, status, cost, seconds.",
        mime_type="application/json",
    )
    async def recent_runs() -> str:
        return json.dumps(await store.recent(50) if store else [], indent=1)

    @server.resource(
        "fusion://runs/{run_id}",
        name="one fusion run",
        description="A run in full: request, result, every model's transcript with its tool calls.",
        mime_type="application/json",
    )
    async def one_run(run_id: str) -> str:
        record = await store.run(run_id) if store else None
        if record is None:
            raise ResourceError(f"no run {run_id!r} in the history (it may have expired)")
        return json.dumps(record, indent=1)

    if not settings.enabled:
        return server

    async def openrouter_fusion(
        prompt: Annotated[
            str,
            Field(
                min_length=1,
                description="A complete, self-contained question or task; the panel does not see your conversation.",
            ),
        ],
        ctx: Context,
        context: Annotated[
            str | None,
            Field(description="Optional material the panel needs: code, excerpts, data, constraints."),
        ] = None,
        analysis_models: Annotated[
            list[str] | None,
            Field(
                min_length=1,
                max_length=MAX_PANEL,
                description=f"Optional panel override: 1-{MAX_PANEL} unique model ids. Default: the configured panel.",
            ),
        ] = None,
        model: Annotated[
            str | None, Field(description="Optional analyst model id. Default: the configured analyst.")
        ] = None,
        max_tool_calls: Annotated[
            int | None,
            Field(ge=1, le=MAX_TOOL_CALLS, description=f"Optional tool-call budget per model, 1-{MAX_TOOL_CALLS}."),
        ] = None,
        preset: Annotated[
            Literal["quality", "budget", "fast"] | None,
            Field(
                description="Optional panel preset: quality (default: frontier models), budget (small models, "
                "strong analyst), fast (two fast models). analysis_models and model override it."
            ),
        ] = None,
    ) -> Annotated[CallToolResult, FusionResult]:
        run_id = new_run_id()
        request = build_request(settings, prompt, context, analysis_models, model, max_tool_calls, preset)
        depth = incoming_depth(ctx.headers, settings)
        if depth >= 1:
            log.info("run %s refused: nested fusion call at depth %d", run_id, depth)
            return as_tool_result(
                error_result(
                    run_id,
                    "fusion_invocation_capped",
                    f"fusion was already invoked upstream (depth {depth}); nested fusion calls are refused",
                )
            )
        if settings.api_key is None and settings.is_openrouter:
            return as_tool_result(
                error_result(
                    run_id,
                    "missing_api_key",
                    "OPENROUTER_API_KEY is not set: add it to this server's environment in the host's MCP config",
                )
            )
        state = ctx.request_context.lifespan_context
        http: httpx2.AsyncClient = state["http"]
        limiter: anyio.CapacityLimiter = state["limiter"]
        provider = Provider(http, settings, depth=depth)

        async def progress(event: ProgressEvent) -> None:
            log.info("run %s: %s", run_id, event.message)
            try:
                await ctx.report_progress(event.progress, event.total, event.message)
                level = "warning" if event.kind in ("member_failed", "member_cut") else "info"
                await log_levels.send(ctx, level, f"run {run_id}: {event.message}")
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:  # a client that went away must not sink the run
                log.debug("progress notification failed: %r", exc)

        refused = await check_request(state["catalogue"], request, settings.max_cost_usd)
        if refused is not None:
            log.info("run %s refused before spending: %s", run_id, refused[1])
            return as_tool_result(error_result(run_id, refused[0], refused[1]))  # type: ignore[arg-type]
        request = await mark_tool_support(state["catalogue"], request)

        queued_at = anyio.current_time()
        if not await _acquire(limiter, settings.queue_timeout_s):
            log.warning("run %s refused: %d runs in progress", run_id, limiter.borrowed_tokens)
            return as_tool_result(
                error_result(
                    run_id,
                    "server_busy",
                    f"server busy: {limiter.borrowed_tokens} fusion runs are in progress (FUSION_MAX_CONCURRENT) "
                    f"and none finished within {settings.queue_timeout_s:g} s; try again shortly",
                )
            )
        try:
            # Time spent queueing counts against the deadline: the host's clock started with the call.
            if request.deadline_s is not None:
                left = max(1.0, request.deadline_s - (anyio.current_time() - queued_at))
                reserve = request.analyst_reserve_s
                request = request.model_copy(
                    update={
                        "deadline_s": left,
                        "analyst_reserve_s": None if reserve is None else min(reserve, left / 2),
                    }
                )
            result = await fuse(request, provider, store, settings, run_id=run_id, on_event=progress, web=state["web"])
        except anyio.get_cancelled_exc_class():
            log.info("run %s cancelled by the client", run_id)
            raise
        except Exception as exc:
            log.exception("run %s failed unexpectedly", run_id)
            message = redact(f"unexpected error: {type(exc).__name__}: {exc}", settings.secrets)
            result = error_result(run_id, "unexpected_error", message)
        finally:
            limiter.release()
        log.info("run %s finished: %s in %.1f s", run_id, result.status, result.timings.total)
        return as_tool_result(result, settings.max_output_chars)

    server.add_tool(
        openrouter_fusion,
        name=TOOL_NAME,
        title="Fusion: ask a panel of models and compare their answers",
        description=DESCRIPTION,
        annotations=ToolAnnotations(
            title="Fusion: ask a panel of models and compare their answers",
            read_only_hint=True,
            open_world_hint=True,
        ),
    )
    return server


async def _check_configured_models(catalogue: CatalogueClient, settings: Settings) -> None:
    """At start, in the background: say in the log which configured model ids the provider does not know."""
    if settings.api_key is None and settings.is_openrouter:
        return
    for model in dict.fromkeys((*settings.analysis_models, settings.model)):
        known, _, found = await catalogue.lookup(model)
        if not known:
            close = found.closest(model)
            log.warning(
                "configured model %r is not in the provider's catalogue%s",
                model,
                f" (closest: {', '.join(close)})" if close else "",
            )


async def _acquire(limiter: anyio.CapacityLimiter, timeout_s: float) -> bool:
    """Take a run slot, waiting up to ``timeout_s``; False when none came free."""
    try:
        limiter.acquire_nowait()
        return True
    except anyio.WouldBlock:
        log.info("queued: %d fusion runs in progress", limiter.borrowed_tokens)
    with anyio.move_on_after(timeout_s):
        await limiter.acquire()
        return True
    return False
