"""The MCP layer: ``create_server()`` registers ``openrouter_fusion``, the run resources and ``/healthz``.

This module and :mod:`~fusion_mcp.mcp_logging` are the only ones that import ``mcp``. A tool call is
translated into :class:`FusionArgs` and handed to the process's :class:`FusionService`, which applies the
same rules as every other front end; this layer only forwards progress and maps the result to
``structuredContent`` (validated against the declared output schema) plus a markdown text block. Error
results carry ``isError`` so hosts show them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from . import __version__
from .admission import ARGUMENT_RULES, FusionRefused, incoming_depth
from .callers import principal_of
from .config import LOCAL_PRINCIPAL, Preset, Settings
from .limits import MAX_PANEL, MAX_TOOL_CALLS, MIN_TOOL_CALLS
from .mcp_logging import SessionLogLevels
from .models import FusionArgs, FusionResult
from .progress import EventSink, ProgressEvent
from .render import render
from .run import new_run_id
from .service import FusionService
from .tool_text import CONTEXT_HELP, DESCRIPTION, PROMPT_HELP, TOOL_NAME, TOOL_TITLE
from .web.fetch import SYSTEM_NETWORK, Network

log = logging.getLogger("fusion_mcp")
INSTRUCTIONS = (
    "fusion-mcp offers one tool, openrouter_fusion, that asks several models at once and returns an "
    "analysis of where they agree and disagree. Write the final answer yourself from its result."
)


_caller: ContextVar[str] = ContextVar("fusion_caller", default=LOCAL_PRINCIPAL)


async def _remember_caller(ctx: Any, call_next: Any) -> Any:
    """Every MCP request runs knowing its caller, including handlers the SDK gives no Context (static resources)."""
    token = _caller.set(principal_of(ctx.request))
    try:
        return await call_next(ctx)
    finally:
        _caller.reset(token)


class _Running:
    """The service while the server runs; the static resource gets no Context to find it through."""

    service: FusionService | None = None


ServiceSource = Callable[[], AbstractAsyncContextManager[FusionService]]
"""Where the server's lifespan gets the process's :class:`FusionService` from."""


def create_server(
    settings: Settings, network: Network = SYSTEM_NETWORK, *, service: ServiceSource | None = None
) -> MCPServer[FusionService]:
    """Build the server without running it, so tests and every transport share one construction.

    ``network`` is how web fetches resolve names and connect: the system's unless a test fakes it.
    ``service`` lends the server a service someone else opened (the HTTP app shares one between ``/mcp``
    and the chat endpoint); by default the server's lifespan opens its own.
    """
    running = _Running()
    server: MCPServer[FusionService] = MCPServer(
        "fusion-mcp",
        title="Fusion",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=_lifespan(service or (lambda: FusionService.open(settings, network, check_models=True)), running),
        log_level=settings.log_level,
        middleware=[_remember_caller],
    )
    log_levels = SessionLogLevels()
    log_levels.install(server)
    _add_routes(server, running)
    if settings.enabled:
        annotations = ToolAnnotations(title=TOOL_TITLE, read_only_hint=True, open_world_hint=True)
        tool = _fusion_tool(settings, log_levels)
        server.add_tool(tool, name=TOOL_NAME, title=TOOL_TITLE, description=DESCRIPTION, annotations=annotations)
    return server


def _lifespan(source: ServiceSource, running: _Running) -> Any:
    @asynccontextmanager
    async def lifespan(_: MCPServer[FusionService]) -> AsyncIterator[FusionService]:
        # Entered once per process, whatever the transport: one pool, one store, one set of run slots.
        async with source() as service:
            running.service = service
            try:
                yield service
            finally:
                running.service = None

    return lifespan


def _add_routes(server: MCPServer[FusionService], running: _Running) -> None:
    @server.custom_route("/healthz", methods=["GET"])
    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__})

    @server.resource(
        "fusion://runs",
        name="recent fusion runs",
        description="Your 50 most recent runs: time, prompt head, panel, status, cost, seconds.",
        mime_type="application/json",
    )
    async def recent_runs() -> str:
        store = running.service.store if running.service is not None else None
        return json.dumps(await store.recent(50, _caller.get()) if store else [], indent=1)

    @server.resource(
        "fusion://runs/{run_id}",
        name="one fusion run",
        description="One of your runs in full: request, result, every model's transcript with its tool calls.",
        mime_type="application/json",
    )
    async def one_run(run_id: str, ctx: Context[FusionService]) -> str:
        store = ctx.request_context.lifespan_context.store
        record = await store.run(run_id, _caller.get()) if store else None
        if record is None:
            raise ResourceError(f"no run {run_id!r} in the history (it may have expired)")
        return json.dumps(record, indent=1)


def _fusion_tool(settings: Settings, log_levels: SessionLogLevels) -> Any:
    async def openrouter_fusion(
        prompt: Annotated[
            str,
            Field(
                min_length=1,
                description=PROMPT_HELP,
            ),
        ],
        ctx: Context[FusionService],
        context: Annotated[
            str | None,
            Field(description=CONTEXT_HELP),
        ] = None,
        analysis_models: Annotated[
            list[str] | None,
            Field(
                min_length=1,
                max_length=MAX_PANEL,
                description=f"Optional panel override: {ARGUMENT_RULES['analysis_models']}. "
                "Default: the configured panel.",
            ),
        ] = None,
        model: Annotated[
            str | None, Field(description="Optional analyst model id. Default: the configured analyst.")
        ] = None,
        max_tool_calls: Annotated[
            int | None,
            Field(
                ge=MIN_TOOL_CALLS,
                le=MAX_TOOL_CALLS,
                description=f"Optional tool-call budget per model: {ARGUMENT_RULES['max_tool_calls']}.",
            ),
        ] = None,
        preset: Annotated[
            Preset | None,
            Field(
                description="Optional panel preset: quality (default: frontier models), budget (small models, "
                "strong analyst), fast (two fast models). analysis_models and model override it."
            ),
        ] = None,
    ) -> Annotated[CallToolResult, FusionResult]:
        service = ctx.request_context.lifespan_context
        run_id = new_run_id()
        args = FusionArgs(
            prompt=prompt,
            context=context,
            analysis_models=analysis_models,
            model=model,
            max_tool_calls=max_tool_calls,
            preset=preset,
            deadline_s=settings.deadline_s,
        )
        principal = _caller.get()
        try:
            request = service.prepare(args, depth=incoming_depth(ctx.headers, settings))
        except FusionRefused as refused:
            log.info("run %s for %s refused: %s", run_id, principal, refused.message)
            return as_tool_result(refused.result(run_id))
        forward = _progress(ctx, run_id, log_levels)
        result = await service.run(request, run_id=run_id, on_event=forward, principal=principal)
        return as_tool_result(result, settings.max_output_chars)

    return openrouter_fusion


def _progress(ctx: Context[FusionService], run_id: str, log_levels: SessionLogLevels) -> EventSink:
    """Each run event as a progress notification (and a log message for older clients that asked)."""

    async def forward(event: ProgressEvent) -> None:
        log.info("run %s: %s", run_id, event.message)
        try:
            await ctx.report_progress(event.progress, event.total, event.message)
            level = "warning" if event.kind in ("member_failed", "member_cut") else "info"
            await log_levels.send(ctx, level, f"run {run_id}: {event.message}")
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # a client that went away must not sink the run
            log.debug("progress notification failed: %r", exc)

    return forward


def as_tool_result(result: FusionResult, max_chars: int | None = None) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=render(result, max_chars))],
        structured_content=result.to_json(),
        is_error=result.status == "error",
    )
