"""The MCP layer: ``create_server()`` registers ``openrouter_fusion``, the run resources and ``/healthz``.

This module, :mod:`~fusion_mcp.mcp_server.log_levels` and :mod:`~fusion_mcp.mcp_server.tasks` are the MCP layer (with
:mod:`~fusion_mcp.http.app`, which mounts the SDK's app); nothing below them imports ``mcp``. A tool call is
translated into :class:`FusionArgs` and handed to the process's :class:`FusionService`, which applies the
same rules as every other front end; this layer only forwards progress and maps the result to
``structuredContent`` (validated against the declared output schema) plus a markdown text block. Error
results carry ``isError`` so hosts show them.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import anyio
from mcp.server.elicitation import AcceptedElicitation
from mcp.server.extension import Extension
from mcp.server.mcpserver import Context, ListRoots, MCPServer, Resolve
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.server.mcpserver.tools import Tool
from mcp_types import CallToolRequestParams, CallToolResult, ListRootsResult, LoggingLevel, TextContent, ToolAnnotations
from pydantic import Field, SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..config import Preset, Settings
from ..core.about import VERSION
from ..core.budget import fit_json_data
from ..core.callers import LOCAL_PRINCIPAL, principal_of, upstream_key_of
from ..core.lenses import BUILTIN
from ..core.limits import (
    MAX_COMPLETION_TOKENS,
    MAX_DEADLINE_S,
    MAX_FILES,
    MAX_GUESTS,
    MAX_PANEL,
    MAX_TOOL_CALLS,
    MIN_TOOL_CALLS,
)
from ..core.models import FusionArgs, FusionResult, GuestAnswer, new_run_id
from ..core.render import render
from ..core.tool_text import CONTEXT_HELP, DESCRIPTION, PROMPT_HELP, TOOL_NAME, TOOL_TITLE
from ..engine.admission import ARGUMENT_RULES, FusionRefused, incoming_depth, parse_arguments
from .handle import OPEN_AFTER_S, ServiceHandle, ServiceSource, ServiceUnavailable
from .host_limits import output_budget
from .log_levels import SessionLogLevels
from .tasks import FusionTasks, task_call

if TYPE_CHECKING:
    from ..core.progress import EventSink, ProgressEvent
    from ..web.network import Network

log = logging.getLogger("fusion_mcp")
RESULT_TOOL_NAME = "openrouter_fusion_result"
RESULT_TOOL_TITLE = "Fusion: the result of a run still going"

MCP_EXTRAS = f"""

Instead of pasting material, you may pass file paths in `files` (text and images, read by the server \
inside the allowed roots). To have your own draft (or another agent's) compared with the panel's, pass it \
in `answers` as {{label, content}}: it costs nothing and is never shown to the panel. A panel entry \
`model#lens` ({", ".join(BUILTIN)}) runs a model with that lens; preset `self` runs the analyst's model \
under three lenses."""
"""What the MCP tool takes beyond the arguments every front end shares (``tool_text``)."""

LONG_RUNS = """

A run may take longer than this call: then the result has `status: "running"`, a `run_id` and the answers \
finished so far; call `openrouter_fusion_result` with that run_id to wait for the rest."""

RESULT_DESCRIPTION = """Get the result of an openrouter_fusion run that was still going when its call \
returned (`status: "running"`). Waits up to `wait_s` seconds (default: as long as a call may) and returns \
the finished result, or `running` again with the answers finished so far: then call it again."""

INSTRUCTIONS = (
    "fusion-mcp offers one tool, openrouter_fusion, that asks several models at once and returns an "
    "analysis of where they agree and disagree. Write the final answer yourself from its result."
)


_caller: ContextVar[str] = ContextVar("fusion_caller", default=LOCAL_PRINCIPAL)
_lent_key: ContextVar[SecretStr | None] = ContextVar("fusion_lent_key", default=None)
"""The caller's own provider key (``FUSION_PASS_THROUGH_KEY``), when it pays for its runs itself."""


async def _remember_caller(ctx: Any, call_next: Any) -> Any:
    """Every MCP request runs knowing its caller (and the key it lends, if any), including handlers the SDK
    gives no Context (static resources)."""
    token = _caller.set(principal_of(ctx.request))
    lent = _lent_key.set(upstream_key_of(ctx.request))
    try:
        result = await call_next(ctx)
    finally:
        _lent_key.reset(lent)
        _caller.reset(token)
    if ctx.method == "tools/list" and isinstance(result, dict):
        # The SDK lets unknown arguments through silently; ours are refused, and the schema says so.
        for tool in result.get("tools", ()):
            if tool.get("name") == TOOL_NAME:
                tool.get("inputSchema", {})["additionalProperties"] = False
    return result


class StrictArguments(Extension):
    """Checks ``openrouter_fusion``'s arguments before the SDK does, so a wrong one gets the same error result
    as every other refusal (``invalid_arguments``, naming the argument and its rule) rather than the SDK's
    validation text, and an unknown one is refused instead of silently dropped."""

    identifier = "io.github.fusion-mcp/strict-arguments"

    async def intercept_tool_call(self, params: CallToolRequestParams, ctx: Any, call_next: Any) -> Any:
        if params.name == TOOL_NAME:
            try:
                parse_arguments(params.arguments)
            except FusionRefused as refused:
                run_id = new_run_id()
                log.info("run %s for %s refused: %s", run_id, _caller.get(), refused.message)
                return as_tool_result(refused.result(run_id))
        return await call_next(ctx)


def create_server(
    settings: Settings,
    network: Network | None = None,
    *,
    service: ServiceSource | None = None,
    on_stopped: Callable[[], None] | None = None,
    health: Mapping[str, object] | None = None,
    open_after_s: float = OPEN_AFTER_S,
) -> MCPServer[ServiceHandle]:
    """Build the server without running it, so tests and every transport share one construction.

    ``network`` is how web fetches resolve names and connect: the system's unless a test fakes it.
    ``service`` lends the server a service someone else opened (the HTTP app shares one between ``/mcp``
    and the chat endpoint); else it opens its own when first needed or ``open_after_s`` after start.
    ``on_stopped`` is called once the service has closed (its runs cancelled, its connections and store
    closed): then a process stopping on a signal may exit. ``health`` adds to ``/healthz`` which process
    answered (its replica, its worker), never anything about runs or callers.
    """
    running, source = _Running(), service or _own_service(settings, network)
    # Long runs may be served as MCP tasks to clients that declare the extension (see mcp_tasks).
    tasks = [_tasks(settings)] if settings.enabled and settings.long_runs else []
    log_levels = SessionLogLevels()
    server: MCPServer[ServiceHandle] = MCPServer(
        "fusion-mcp",
        title="Fusion",
        instructions=INSTRUCTIONS,
        version=VERSION,
        lifespan=_lifespan(running, source, open_after_s if service is None else 0, on_stopped),
        log_level=settings.log_level,
        middleware=[_remember_caller],
        extensions=[StrictArguments(), *tasks],
        tools=_tools(settings, log_levels) if settings.enabled else None,
    )
    log_levels.install(server)
    _add_routes(server, running, health)
    return server


def _tools(settings: Settings, log_levels: SessionLogLevels) -> list[Tool]:
    description = DESCRIPTION + MCP_EXTRAS + (LONG_RUNS if settings.long_runs else "")
    tools = [_result_tool_of(_fusion_tool(settings, log_levels), TOOL_NAME, TOOL_TITLE, description, open_world=True)]
    if settings.long_runs:
        result_tool = _result_tool(settings, log_levels)
        tools.append(
            _result_tool_of(result_tool, RESULT_TOOL_NAME, RESULT_TOOL_TITLE, RESULT_DESCRIPTION, open_world=False)
        )
    return tools


RESULT_SCHEMA = Path(__file__).with_name("result_schema.json")
"""The ``outputSchema`` both tools publish: :class:`FusionResult`'s, as the SDK derives it (checked by a test)."""


def _result_tool_of(fn: Callable[..., Any], name: str, title: str, description: str, *, open_world: bool) -> Tool:
    """A tool returning a :class:`FusionResult` as its structured content, which the SDK validates.

    The SDK would derive the output schema from ``-> Annotated[CallToolResult, FusionResult]``, but pydantic
    takes ~5 ms per tool to write it, at every start a host waits on, for a schema that changes only with
    the model. So it is read from :data:`RESULT_SCHEMA`, which ``tests/mcp_server/test_result_schema.py``
    holds equal to the SDK's own derivation (and rewrites on request after the model changes).
    """
    annotations = ToolAnnotations(title=title, read_only_hint=True, open_world_hint=open_world)
    tool = Tool.from_function(fn, name=name, title=title, description=description, annotations=annotations)
    tool.fn_metadata.output_model = FusionResult  # the SDK reads both fields live, at every call and listing
    tool.fn_metadata.output_schema = json.loads(RESULT_SCHEMA.read_bytes())
    return tool


def _tasks(settings: Settings) -> FusionTasks:
    ttl_s = settings.history_max_days * 86400  # a task's result lives as long as its run in the history
    return FusionTasks(TOOL_NAME, principal_of, lambda r: as_tool_result(r, settings.max_output_chars), ttl_s)


def _own_service(settings: Settings, network: Network | None) -> ServiceSource:
    def source() -> Any:
        from ..engine.service import FusionService  # the run machinery: loaded when the service opens

        if network is None:
            return FusionService.open(settings, check_models=True)
        return FusionService.open(settings, network, check_models=True)

    return source


class _Running:
    """The handle of the lifespan going on; the static resource gets no Context to find it through."""

    handle: ServiceHandle | None = None


def _lifespan(
    running: _Running, source: ServiceSource, open_after_s: float, on_stopped: Callable[[], None] | None
) -> Any:
    @asynccontextmanager
    async def lifespan(_: MCPServer[ServiceHandle]) -> AsyncIterator[ServiceHandle]:
        # Entered once per process, whatever the transport: one pool, one store, one set of run slots. A
        # lent service is open already; the server's own opens when first needed.
        try:
            async with ServiceHandle().kept(source, open_after_s=open_after_s) as handle:
                running.handle = handle
                try:
                    yield handle
                finally:
                    running.handle = None
        finally:
            if on_stopped is not None:
                on_stopped()

    return lifespan


def _add_routes(server: MCPServer[ServiceHandle], running: _Running, health: Mapping[str, object] | None) -> None:
    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "version": VERSION, **(health or {})})

    # Called, not applied as a decorator: the SDK's custom_route is unannotated, and would untype healthz.
    server.custom_route("/healthz", methods=["GET"])(healthz)

    @server.resource(
        "fusion://runs",
        name="recent fusion runs",
        description="Your 50 most recent runs: time, prompt head, panel, status, cost, seconds.",
        mime_type="application/json",
    )
    async def recent_runs() -> str:
        from ..store import StoreError

        if running.handle is None:
            return "[]"
        try:
            service = await running.handle.get()
        except ServiceUnavailable as exc:
            raise ResourceError(str(exc)) from None
        await service.records_written(_caller.get())  # the runs just answered, as they ended
        try:
            return json.dumps(await service.store.recent(50, _caller.get()) if service.store else [], indent=1)
        except StoreError as exc:
            raise ResourceError(f"the run history cannot be read right now: {exc}") from None

    @server.resource(
        "fusion://runs/{run_id}",
        name="one fusion run",
        description="One of your runs in full: request, result, every model's transcript with its tool calls.",
        mime_type="application/json",
    )
    async def one_run(run_id: str, ctx: Context[ServiceHandle]) -> str:
        from ..store import StoreError

        try:
            service = await ctx.request_context.lifespan_context.get()
        except ServiceUnavailable as exc:
            raise ResourceError(str(exc)) from None
        store = service.store
        await service.record_written(run_id, _caller.get())  # answered before recorded
        try:
            record = await store.run(run_id, _caller.get()) if store else None
        except StoreError as exc:
            raise ResourceError(f"the run history cannot be read right now: {exc}") from None
        if record is None:
            raise ResourceError(f"no run {run_id!r} in the history (it may have expired)")
        return json.dumps(record, indent=1)


async def _client_roots(files: list[str] | None, ctx: Context[ServiceHandle]) -> ListRoots | None:
    """Ask for the client's MCP roots when the call has files, the client declared roots, and it runs here.

    A client on this machine (stdio, in memory) names directories of this machine. Over HTTP (a request
    with headers) the client's directories are its own, not ours: only ``FUSION_FILES_ROOTS`` apply.
    """
    _accepted_class()
    capabilities = ctx.client_capabilities
    if not files or ctx.headers is not None or capabilities is None or capabilities.roots is None:
        return None
    return ListRoots()


@functools.cache
def _accepted_class() -> type:
    """The SDK wraps what a resolver returns in ``AcceptedElicitation[Any]``, a class pydantic builds once and
    caches weakly: a full garbage collection drops it and the next call builds it again (~0.4 ms, and its
    schema). Held for the process's life from the first call on."""
    return AcceptedElicitation[Any]


CLIENT_ROOTS = Resolve(_client_roots)


def root_paths(roots: ListRootsResult | None) -> list[str] | None:
    """The local directories of a client's ``file://`` roots; None when it declared none."""
    paths = []
    for root in roots.roots if roots is not None else []:
        uri = urlparse(str(root.uri))
        if uri.scheme == "file" and uri.netloc in ("", "localhost"):
            paths.append(url2pathname(unquote(uri.path)))
    return paths or None


# The tool's arguments as the host model sees them: each one's type, bounds and the sentence describing it.
PromptArg = Annotated[
    str,
    Field(
        min_length=1,
        description=PROMPT_HELP,
    ),
]
ContextArg = Annotated[str | None, Field(description=CONTEXT_HELP)]
PanelArg = Annotated[
    list[str] | None,
    Field(
        min_length=1,
        max_length=MAX_PANEL,
        description=f"Optional panel override: {ARGUMENT_RULES['analysis_models']}. Default: the configured panel.",
    ),
]
AnalystArg = Annotated[str | None, Field(description="Optional analyst model id. Default: the configured analyst.")]
ToolCallsArg = Annotated[
    int | None,
    Field(
        ge=MIN_TOOL_CALLS,
        le=MAX_TOOL_CALLS,
        description=f"Optional tool-call budget per model: {ARGUMENT_RULES['max_tool_calls']}.",
    ),
]
PresetArg = Annotated[
    Preset | None,
    Field(
        description="Optional panel preset: quality (default: frontier models), budget (small models, strong "
        "analyst), fast (two fast models), self (the analyst's model under three lenses, for an endpoint with one "
        "model). analysis_models and model override it."
    ),
]
AnswersArg = Annotated[
    list[GuestAnswer] | None,
    Field(
        max_length=MAX_GUESTS,
        description="Optional answers you already have (your own draft, another agent's), compared with the "
        f"panel's under the same anonymous labels and named guest:<label> in the result: {ARGUMENT_RULES['answers']}. "
        "Never sent to the panel; no cost.",
    ),
]
FilesArg = Annotated[
    list[str] | None,
    Field(
        max_length=MAX_FILES,
        description=f"Optional files the panel reads as material: {ARGUMENT_RULES['files']}. Relative paths start "
        "at the first root.",
    ),
]
TemperatureArg = Annotated[
    float | None, Field(ge=0, le=2, description=f"Optional: {ARGUMENT_RULES['temperature']}. Default: the server's.")
]
ReasoningArg = Annotated[
    dict[str, Any] | None,
    Field(description=f"Optional reasoning for the panel, OpenRouter's object: {ARGUMENT_RULES['reasoning']}."),
]
WebToolsArg = Annotated[list[Any] | None, Field(description=f"Optional: {ARGUMENT_RULES['tools']}.")]
TokensArg = Annotated[
    int | None,
    Field(ge=1, le=MAX_COMPLETION_TOKENS, description=f"Optional: {ARGUMENT_RULES['max_completion_tokens']}."),
]
RootsArg = Annotated[ListRootsResult | None, CLIENT_ROOTS]
"""Filled by the server (the client's MCP roots), never by the host model: not in the input schema."""


def _fusion_tool(settings: Settings, log_levels: SessionLogLevels) -> Any:
    async def openrouter_fusion(
        prompt: PromptArg,
        ctx: Context[ServiceHandle],
        context: ContextArg = None,
        analysis_models: PanelArg = None,
        model: AnalystArg = None,
        max_tool_calls: ToolCallsArg = None,
        preset: PresetArg = None,
        answers: AnswersArg = None,
        files: FilesArg = None,
        temperature: TemperatureArg = None,
        reasoning: ReasoningArg = None,
        tools: WebToolsArg = None,
        max_completion_tokens: TokensArg = None,
        roots: RootsArg = None,
    ) -> CallToolResult:  # structured content: a FusionResult (_result_tool_of)
        run_id = new_run_id()
        try:
            service = await ctx.request_context.lifespan_context.get()
        except ServiceUnavailable as exc:
            return as_tool_result(exc.result(run_id))
        args = FusionArgs(
            prompt=prompt,
            context=context,
            analysis_models=analysis_models,
            model=model,
            max_tool_calls=max_tool_calls,
            preset=preset,
            deadline_s=settings.run_deadline,
            answers=answers,
            files=files,
            file_roots=root_paths(roots),
            temperature=temperature,
            reasoning=reasoning,
            tools=tools,
            max_completion_tokens=max_completion_tokens,
        )
        principal, api_key = _caller.get(), _lent_key.get()
        try:
            request = service.prepare(args, depth=incoming_depth(ctx.headers, settings), api_key=api_key)
        except FusionRefused as refused:
            log.info("run %s for %s refused: %s", run_id, principal, refused.message)
            return as_tool_result(refused.result(run_id))
        task = task_call.get()
        if task is not None:  # served as an MCP task: the client polls tasks/get
            service.start(request, run_id=run_id, principal=principal, api_key=api_key)
            task.run_id = run_id
            return as_tool_result(FusionResult(status="running", run_id=run_id))
        forward = _progress(ctx, run_id, log_levels)
        # A run that may outlive its call is waited on for the call's deadline, then goes on in the background.
        wait_s = settings.deadline_s if settings.long_runs else None
        result = await service.run(
            request, run_id=run_id, on_event=forward, principal=principal, wait_s=wait_s, api_key=api_key
        )
        return as_tool_result(result, output_budget(settings, client_name(ctx)))

    return openrouter_fusion


def _result_tool(settings: Settings, log_levels: SessionLogLevels) -> Any:
    async def openrouter_fusion_result(
        run_id: Annotated[
            str,
            Field(min_length=1, max_length=64, description="The run_id of a result whose status was running."),
        ],
        ctx: Context[ServiceHandle],
        wait_s: Annotated[
            float | None,
            Field(
                ge=0,
                le=MAX_DEADLINE_S,
                description="Seconds to wait for the run to finish (default, and at most: as long as one call may "
                "take, FUSION_DEADLINE_S).",
            ),
        ] = None,
    ) -> CallToolResult:  # structured content: a FusionResult (_result_tool_of)
        run_id = run_id.strip()
        try:
            service = await ctx.request_context.lifespan_context.get()
        except ServiceUnavailable as exc:
            return as_tool_result(exc.result(run_id))
        wait = settings.deadline_s if wait_s is None else min(wait_s, settings.deadline_s)
        forward = _progress(ctx, run_id, log_levels)
        result = await service.result(run_id, _caller.get(), wait_s=wait, on_event=forward)
        return as_tool_result(result, output_budget(settings, client_name(ctx)))

    return openrouter_fusion_result


def client_name(ctx: Context[ServiceHandle]) -> str | None:
    """The name the calling host gave itself (``clientInfo.name``), on either protocol era; None without one."""
    params = ctx.request_context.session.client_params
    return params.client_info.name if params is not None else None


def _progress(ctx: Context[ServiceHandle], run_id: str, log_levels: SessionLogLevels) -> EventSink:
    """Each run event as a progress notification (and a log message for older clients that asked)."""
    # The call's session, looked up once: a run sends eleven events with eight members, and each lookup
    # (and a log message's coroutine for a client that asked for none) was paid per event.
    session = ctx.request_context.session
    connection = session.client_params

    async def forward(event: ProgressEvent) -> None:
        message = event.message
        log.info("run %s: %s", run_id, message)
        try:
            await session.report_progress(event.progress, event.total, message)
            level: LoggingLevel = "warning" if event.kind in ("member_failed", "member_cut") else "info"
            if log_levels.connection_wants(connection, level):
                await log_levels.send(ctx, level, f"run {run_id}: {message}")
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # a client that went away must not sink the run
            log.debug("progress notification failed: %r", exc)

    return forward


def as_tool_result(result: FusionResult, max_chars: int | None = None) -> CallToolResult:
    """Both blocks within ``max_chars`` (``FUSION_MAX_OUTPUT_CHARS``): hosts pass one or the other to their model."""
    return CallToolResult(
        content=[TextContent(type="text", text=render(result, max_chars))],
        structured_content=fit_json_data(result, max_chars),
        is_error=result.status == "error",
    )
