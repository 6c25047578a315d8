"""MCP tasks (the ``io.modelcontextprotocol/tasks`` extension, SEP-2663): a long fusion served as a task.

A client of the 2026-07-28 protocol that declares the extension in a ``tools/call`` gets, when runs may
outlive calls (``FUSION_RUN_DEADLINE_S`` above ``FUSION_DEADLINE_S``), a task handle at once instead of
waiting: ``{"resultType": "task", "taskId": <run_id>, "status": "working", ...}``. It polls ``tasks/get``
(``working`` with the latest progress line as ``statusMessage``, then ``completed`` with the tool result,
or ``cancelled``) and may send ``tasks/cancel``. A task is a run: the same run id, the same principal
scoping, the same history; a task whose run was lost in a restart completes with the ``run_lost`` error
result. Calls the server refuses (bad arguments, nesting) come back as plain results, not tasks.

Built on the SDK's public extension interface (``MCPServer(extensions=[...])``: added request methods and a
``tools/call`` interceptor). The 2025-11-25 ``tasks`` capability is not served: the SDK leaves the
``tasks/*`` methods and the ``task`` parameter out of that protocol version. Those clients get the
``running`` result and ``openrouter_fusion_result`` instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolRequestParams, CallToolResult, RequestParams
from mcp_types.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from ..core.models import FusionResult
from .handle import ServiceHandle, ServiceUnavailable

if TYPE_CHECKING:
    from ..engine.service import FusionService

EXTENSION = "io.modelcontextprotocol/tasks"
POLL_INTERVAL_MS = 1000


@dataclass
class TaskCall:
    """Set while a ``tools/call`` may become a task: the tool starts its run and says which it is."""

    run_id: str | None = None


task_call: ContextVar[TaskCall | None] = ContextVar("fusion_task_call", default=None)
"""The tool body reads this: when set, it starts the run without waiting and names it here."""


class TaskParams(RequestParams):
    task_id: str


class FusionTasks(Extension):
    """The tasks extension for ``tool`` (only that tool's calls become tasks)."""

    identifier = EXTENSION

    def __init__(
        self,
        tool: str,
        principal_of: Callable[[object | None], str],
        as_tool_result: Callable[[FusionResult], CallToolResult],
        ttl_s: float | None,
    ) -> None:
        self._tool = tool
        self._principal_of = principal_of
        self._as_tool_result = as_tool_result
        self._ttl_ms = int(ttl_s * 1000) if ttl_s is not None else None
        """How long a task's result is kept: the run history's age bound (None: no history, no promise)."""

    def methods(self) -> list[MethodBinding]:
        versions = frozenset(MODERN_PROTOCOL_VERSIONS)
        return [
            MethodBinding("tasks/get", TaskParams, self._get, protocol_versions=versions),
            MethodBinding("tasks/cancel", TaskParams, self._cancel, protocol_versions=versions),
            MethodBinding("tasks/update", TaskParams, self._update, protocol_versions=versions),
        ]

    async def intercept_tool_call(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if params.name != self._tool or not _declared(ctx):
            return await call_next(ctx)
        call = TaskCall()
        token = task_call.set(call)
        try:
            result = await call_next(ctx)
        finally:
            task_call.reset(token)
        if call.run_id is None:  # refused, or asking for the client's roots first: a plain result
            return result
        now = _iso(time.time())
        return {"resultType": "task", **self._task(call.run_id, "working", now, now), "statusMessage": "started"}

    async def _get(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
        service = await self._service(ctx)
        principal = self._principal_of(ctx.request)
        live = service.live(params.task_id, principal)
        now = _iso(time.time())
        created = _iso(live.started) if live is not None else now
        if live is not None and not live.done.is_set():
            message = live.last_event.message if live.last_event is not None else "starting"
            return self._task(params.task_id, "working", created, now) | {"statusMessage": message}
        # Through the service, which redacts every secret (a model may echo the key), live run or recorded.
        result = await service.result(params.task_id, principal, wait_s=0)
        if result.failure_reason == "run_not_found":
            raise MCPError(INVALID_PARAMS, f"no task {params.task_id!r}: {result.error}")
        if result.status == "running":  # another process of this server is running it
            return self._task(params.task_id, "working", created, now) | {"statusMessage": "running"}
        if result.failure_reason == "cancelled":
            return self._task(params.task_id, "cancelled", created, now) | {"statusMessage": result.error or ""}
        wire = self._as_tool_result(result).model_dump(by_alias=True, mode="json", exclude_none=True)
        return self._task(params.task_id, "completed", created, now) | {"result": {"resultType": "complete", **wire}}

    async def _cancel(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
        service = await self._service(ctx)
        principal = self._principal_of(ctx.request)
        if not service.stop(params.task_id, principal, "cancelled by the client (tasks/cancel)"):
            raise MCPError(INVALID_PARAMS, f"task {params.task_id!r} is not running here (finished, or unknown)")
        return {}

    async def _service(self, ctx: ServerRequestContext[Any, Any]) -> FusionService:
        handle: ServiceHandle = ctx.lifespan_context
        try:
            return await handle.get()
        except ServiceUnavailable as exc:
            raise MCPError(INTERNAL_ERROR, str(exc)) from None

    async def _update(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
        raise MCPError(INVALID_PARAMS, f"task {params.task_id!r} never asks for input")

    def _task(self, task_id: str, status: str, created: str, updated: str) -> dict[str, Any]:
        return {
            "taskId": task_id,
            "status": status,
            "createdAt": created,
            "lastUpdatedAt": updated,
            "ttlMs": self._ttl_ms,
            "pollIntervalMs": POLL_INTERVAL_MS,
        }


def _declared(ctx: ServerRequestContext[Any, Any]) -> bool:
    """The client declared the extension on this request (2026-07-28: per request, in its envelope)."""
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        return False
    capabilities = ctx.session.client_capabilities
    return bool(capabilities is not None and capabilities.extensions and EXTENSION in capabilities.extensions)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")
