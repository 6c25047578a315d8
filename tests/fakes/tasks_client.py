"""A requester of the MCP tasks extension (SEP-2663) for the SDK's Python client, which has none of its own.

``TasksClient`` declares ``io.modelcontextprotocol/tasks``, claims the ``resultType: "task"`` shape on
``tools/call`` and settles it by polling ``tasks/get`` as the extension says, recording every snapshot, so
``client.call_tool`` returns the task's final ``CallToolResult``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import anyio
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp_types import CallToolResult, Request, RequestParams, Result
from pydantic import ConfigDict, Field

EXTENSION = "io.modelcontextprotocol/tasks"


class CreatedTask(Result):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    result_type: Literal["task"] = Field(alias="resultType")
    task_id: str = Field(alias="taskId")
    status: str


class TaskState(Result):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    task_id: str = Field(alias="taskId")
    status: str
    status_message: str | None = Field(None, alias="statusMessage")
    poll_interval_ms: int | None = Field(None, alias="pollIntervalMs")
    result: dict[str, Any] | None = None


class TaskIdParams(RequestParams):
    task_id: str = Field(alias="taskId")


class GetTask(Request[TaskIdParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    name_param: ClassVar[str | None] = "taskId"


class CancelTask(Request[TaskIdParams, Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"
    name_param: ClassVar[str | None] = "taskId"


class TasksClient(ClientExtension):
    identifier = EXTENSION

    def __init__(self, cancel_when: Callable[[TaskState], bool] | None = None) -> None:
        self.created: list[CreatedTask] = []
        self.polls: list[TaskState] = []
        self._cancel_when = cancel_when
        """Send ``tasks/cancel`` once, after the first poll this is true of."""

    def claims(self) -> list[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=CreatedTask, resolve=self._settle)]

    async def _settle(self, task: CreatedTask, ctx: ClaimContext) -> CallToolResult:
        self.created.append(task)
        params = TaskIdParams(taskId=task.task_id)
        while True:
            state = await ctx.session.send_request(GetTask(params=params), TaskState)
            self.polls.append(state)
            if state.status == "completed" and state.result is not None:
                return CallToolResult.model_validate(state.result)
            if state.status in ("cancelled", "failed"):
                return CallToolResult(content=[], is_error=True, structured_content={"task": state.status})
            if self._cancel_when is not None and self._cancel_when(state):
                await ctx.session.send_request(CancelTask(params=params), Result)
                self._cancel_when = None
            await anyio.sleep((state.poll_interval_ms or 1000) / 1000 / 10)  # poll faster than asked: a test
