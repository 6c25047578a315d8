"""The Responses API (``POST /v1/responses``) on the chat endpoint's writer loop: the conversion, both ways.

The writer still speaks chat completions to the provider (most providers have no Responses API), so this
module is all the Responses API there is here:

- :func:`read_request` turns a Responses request into a chat-completions body and reads it with
  :func:`~fusion_mcp.openai_api.request.plan_turn`, so the entry points (``openrouter/fusion``, the ``fusion``
  plugin, an ``openrouter:fusion`` tool), the writer, the caps and every 400 are the chat endpoint's own;
- :class:`ResponseStream` turns what a turn tells its front end as it goes (:data:`Signal`: the writer's
  text, the fusion call's start and end, the run's progress, the panel's streamed text) into output items
  and, when streamed, into the Responses event sequence with OpenRouter's ``response.fusion_call.*`` events.

The server is stateless: ``previous_response_id`` (and ``conversation``, ``background``) is refused with a
400 that says so, and ``store`` is accepted either way and nothing is stored (the response says
``"store": false``). Nothing here knows HTTP; :mod:`~fusion_mcp.openai_api.routes` serves it.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from ..config import Settings
from ..core.errors import Redactor, StreamRedactor
from ..core.models import FusionResult, TokenUsage
from ..core.progress import ProgressEvent
from .request import ChatError, Open, Plan, plan_turn, validated
from .writer import SEPARATOR, WRITER_FIELDS, TurnOutcome

Signal = tuple[Literal["text", "end", "progress", "delta", "fusion"], Any]
"""What a turn tells its front end, in order: ``("text", piece)``, ``("end", None)`` (a writer request's text is
complete), ``("progress", ProgressEvent)``, ``("delta", (panel entry, piece, is reasoning))`` and ``("fusion",
(run id, None))`` when the fusion call starts, ``("fusion", (run id, FusionResult))`` when it ends."""
Emit = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Sends one event: its type and its fields (the sequence number is added here)."""

STATELESS = (
    "this server is stateless and keeps no responses: send the whole conversation in input (earlier output "
    "items included) instead"
)
DROPPED = frozenset(
    {
        "include",
        "store",
        "prompt_cache_key",
        "prompt_cache_retention",
        "truncation",
        "service_tier",
        "safety_identifier",
        "stream_options",
        "top_logprobs",
        "max_tool_calls",
        "metadata",
        "client_metadata",
    }
)
"""Responses fields with no chat-completions counterpart: accepted, not sent to the writer."""
CONVERTED = frozenset(
    {"input", "instructions", "tools", "tool_choice", "max_output_tokens", "reasoning", "text", "stream"}
    | {"previous_response_id", "conversation", "background", "prompt"}
)
SKIPPED_ITEMS = frozenset({"reasoning", "openrouter:fusion"})
"""Input items read past: this server makes no reasoning items, and a fusion call's result already shaped the
answer that followed it (a client sending the whole conversation back sends both)."""
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
ITEM_TYPES = "message, function_call or function_call_output"
TOOL_TYPES = "function, namespace, openrouter:fusion, or one of OpenRouter's server tools (openrouter:...)"
HOSTED_TOOLS = frozenset(
    {"web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11"}
    | {"file_search", "code_interpreter", "image_generation", "computer_use_preview", "computer", "mcp"}
    | {"local_shell", "shell", "apply_patch", "tool_search"}
)
"""Tools OpenAI's own servers run (or that need their hosted state): not offered to the writer, which could not
run them; the panel has its own web tools. Left out rather than refused, as agent hosts (Codex) send some of
them with every request."""
EVENT_PREFIX = "response.fusion_call."
ITEM_FIELDS = WRITER_FIELDS | {"analyst_model"}
ITEMS_HEADER = "x-fusion-items"
"""``X-Fusion-Items: standard`` leaves the ``openrouter:fusion`` item out of ``output`` (its events still stream):
for clients that validate every item's type against OpenAI's list (the Vercel AI SDK's ``generateText``)."""
RENAMED = (("max_completion_tokens", "max_output_tokens"), (".function.name", ".name"))
"""Chat field names in :func:`plan_turn`'s 400s, and what the caller called them."""
TOOL_PLACE = re.compile(r"tools\[(\d+)\]")


class ResponsesBody(Open):
    """The fields read here; any other field goes to the writer as the chat endpoint sends it (temperature,
    top_p, parallel_tool_calls, user, provider, ...), but for :data:`DROPPED`."""

    model: str
    input: str | list[Any]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: int | None = Field(None, ge=1, strict=True)
    stream: bool = False
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    previous_response_id: str | None = None
    conversation: Any = None
    background: bool | None = None
    prompt: Any = None


@dataclass
class ResponsesTurn:
    """A Responses request, read: the chat plan the writer runs, and what the response object echoes."""

    plan: Plan
    echo: dict[str, Any]
    namespaces: dict[str, str] = field(default_factory=dict)
    """Functions offered inside a ``namespace`` tool, and its name: their calls say it (``namespace``)."""
    standard_items: bool = False
    """Only OpenAI's item types in ``output``: no ``openrouter:fusion`` item (:data:`ITEMS_HEADER`)."""


def read_request(
    raw: Any, settings: Settings, *, depth: int, items: str | None = None, lent: bool = False
) -> ResponsesTurn:
    """Read a Responses request; raise :class:`ChatError` (400, naming the field in the caller's terms). ``lent``:
    the caller pays with its own key (the writer may not be on a provider the server pays for).

    ``items`` is the :data:`ITEMS_HEADER` header's value: ``standard``, or None.
    """
    if items is not None and items.strip().lower() != "standard":
        raise ChatError(400, f"{ITEMS_HEADER}: must be standard (or left out)", code="invalid_request")
    if not isinstance(raw, dict):
        raise ChatError(400, "the request body must be a JSON object", code="invalid_request")
    body: ResponsesBody = validated(ResponsesBody, raw, "")
    for name in ("previous_response_id", "conversation", "prompt"):
        if getattr(body, name) is not None:
            raise ChatError.bad_field(name, f"not supported: {STATELESS}")
    if body.background:
        raise ChatError.bad_field("background", f"not supported: {STATELESS}")
    chat: dict[str, Any] = {k: v for k, v in raw.items() if k not in DROPPED | CONVERTED}
    chat["messages"] = _messages(body)
    chat["stream"] = body.stream
    if body.tools is not None:
        chat["tools"], places, namespaces = _tools(body.tools)
    if body.tool_choice is not None:
        chat["tool_choice"] = _tool_choice(body.tool_choice)
    if body.max_output_tokens is not None:
        chat["max_completion_tokens"] = body.max_output_tokens
    if body.reasoning:
        reasoning = {k: v for k, v in body.reasoning.items() if k not in ("summary", "generate_summary")}
        if reasoning:
            chat["reasoning"] = reasoning
    text_format = _text_format(body.text)
    if text_format is not None:
        chat["response_format"] = text_format
    try:
        plan = plan_turn(chat, settings, depth=depth, lent=lent)
    except ChatError as error:
        raise _renamed(error, places if body.tools is not None else []) from None
    turn = ResponsesTurn(plan, _echo(body, raw), standard_items=items is not None)
    if body.tools is not None:
        turn.namespaces = namespaces
    return turn


def _renamed(error: ChatError, places: list[str]) -> ChatError:
    """``error`` in the caller's terms: its field names, and where each chat tool was in the caller's ``tools``."""

    def ours(text: str) -> str:
        for chat_name, name in RENAMED:
            text = text.replace(chat_name, name)
        return TOOL_PLACE.sub(lambda m: places[int(m[1])] if int(m[1]) < len(places) else m[0], text)

    error.message = ours(error.message)
    error.param = ours(error.param) if error.param else error.param
    return error


def _echo(body: ResponsesBody, raw: dict[str, Any]) -> dict[str, Any]:
    """The request's settings as the response object repeats them."""
    reasoning = body.reasoning or {}
    return {
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "metadata": body.metadata or {},
        "parallel_tool_calls": raw.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": None},
        "store": False,
        "temperature": raw.get("temperature"),
        "text": body.text or {"format": {"type": "text"}},
        "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
        "tools": body.tools or [],
        "top_p": raw.get("top_p"),
        "truncation": "disabled",
        "user": raw.get("user"),
    }


# -- input -> messages ---------------------------------------------------------------------------------------


def _messages(body: ResponsesBody) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        return [*messages, {"role": "user", "content": body.input}]
    if not body.input:
        raise ChatError.bad_field("input", "must hold at least one item")
    for i, item in enumerate(body.input):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise ChatError.bad_field(where, "must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            _add_call(messages, item, where)
        elif kind == "function_call_output":
            call_id = _string(item, "call_id", where)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": _output(item.get("output"), where)})
        elif kind not in SKIPPED_ITEMS:
            detail = f"{kind!r} is not an input item this server reads; send {ITEM_TYPES} items"
            if kind == "item_reference":
                detail = f"item references are not supported: {STATELESS}"
            raise ChatError.bad_field(f"{where}.type", detail)
    return messages


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ROLES:
        raise ChatError.bad_field(f"{where}.role", f"must be one of {', '.join(ROLES)}")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": ROLES[role], "content": content}
    if not isinstance(content, list):
        raise ChatError.bad_field(f"{where}.content", "must be a string or a list of content parts")
    parts = [_part(part, f"{where}.content[{j}]") for j, part in enumerate(content)]
    if role != "user" or all(p["type"] == "text" for p in parts):
        # Assistant and system turns are text in chat completions; text parts in a row are one text.
        if any(p["type"] != "text" for p in parts):
            raise ChatError.bad_field(f"{where}.content", f"a {role} message may hold text parts only")
        return {"role": ROLES[role], "content": "".join(p["text"] for p in parts)}
    return {"role": "user", "content": parts}


def _part(part: Any, where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text") and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return {"type": "text", "text": part["refusal"]}
    if kind == "input_image" and isinstance(part.get("image_url"), str):
        image = {"url": part["image_url"]} | ({"detail": part["detail"]} if part.get("detail") else {})
        return {"type": "image_url", "image_url": image}
    if kind == "input_file" and isinstance(part.get("file_data"), str):
        return {"type": "file", "file": {"filename": part.get("filename") or "file", "file_data": part["file_data"]}}
    raise ChatError.bad_field(
        where,
        "must be an input_text, output_text, refusal, input_image (with image_url) or input_file (with file_data) "
        f"part: uploaded files (file_id) are not supported: {STATELESS}",
    )


def _add_call(messages: list[dict[str, Any]], item: dict[str, Any], where: str) -> None:
    """A function call joins the assistant turn before it, as a chat assistant message holds its tool calls."""
    call = {
        "id": _string(item, "call_id", where),
        "type": "function",
        "function": {"name": _string(item, "name", where), "arguments": _string(item, "arguments", where)},
    }
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
        last["content"] = last["content"] or None
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _output(output: Any, where: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in output):
        return "".join(p["text"] for p in output)
    raise ChatError.bad_field(f"{where}.output", "must be a string or a list of text parts")


def _string(item: dict[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise ChatError.bad_field(f"{where}.{name}", "field required" if value is None else "must be a string")
    return value


def _tools(tools: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str], dict[str, str]]:
    """(the chat tools, where each one was in the caller's list, which function is in which namespace)."""
    chat: list[dict[str, Any]] = []
    places: list[str] = []
    namespaces: dict[str, str] = {}
    for i, tool in enumerate(tools):
        if tool.get("type") in HOSTED_TOOLS:
            continue
        if tool.get("type") == "namespace":
            name = _string(tool, "name", f"tools[{i}]")
            inner = tool.get("tools")
            if not isinstance(inner, list):
                raise ChatError.bad_field(f"tools[{i}].tools", "must be a list of function tools")
            for j, function in enumerate(inner):
                chat.append(_tool(f"tools[{i}].tools[{j}]", function, ("function",)))
                places.append(f"tools[{i}].tools[{j}]")
                namespaces[chat[-1]["function"]["name"]] = name
            continue
        chat.append(_tool(f"tools[{i}]", tool))
        places.append(f"tools[{i}]")
    return chat, places, namespaces


def _tool(where: str, tool: Any, kinds: tuple[str, ...] = ("function", "openrouter:")) -> dict[str, Any]:
    """A Responses tool as chat completions spells it (a function's fields nest under ``function``)."""
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind == "function":
        name = _string(tool, "name", where)
        function: dict[str, Any] = {"name": name}
        function.update((k, tool[k]) for k in ("description", "parameters", "strict") if k in tool)
        return {"type": "function", "function": function}
    if isinstance(kind, str) and kind.startswith("openrouter:") and "openrouter:" in kinds:
        return dict(tool)  # fusion's entry point, or one of OpenRouter's server tools: as on the chat endpoint
    raise ChatError.bad_field(f"{where}.type", f"{kind!r} is not served here; use {TOOL_TYPES}")


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise ChatError.bad_field("tool_choice", "must be none, auto, required or a function")
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise ChatError.bad_field("tool_choice", 'must be none, auto, required or {"type": "function", "name": ...}')


def _text_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """``text.format`` as chat's ``response_format`` (None: plain text)."""
    spec = (text or {}).get("format")
    if spec is None or (isinstance(spec, dict) and spec.get("type") == "text"):
        return None
    if isinstance(spec, dict) and spec.get("type") == "json_object":
        return {"type": "json_object"}
    if isinstance(spec, dict) and spec.get("type") == "json_schema" and isinstance(spec.get("schema"), dict):
        schema = {k: spec[k] for k in ("name", "schema", "strict", "description") if k in spec}
        return {"type": "json_schema", "json_schema": schema}
    raise ChatError.bad_field("text.format", "must be text, json_object, or json_schema with a schema")


# -- the turn -> output items and events ---------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def usage(total: TokenUsage) -> dict[str, Any]:
    """The Responses usage object, with OpenRouter's ``cost`` (USD) when the provider reported it."""
    data: dict[str, Any] = {
        "input_tokens": total.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": total.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": total.reasoning_tokens},
        "total_tokens": total.total_tokens,
    }
    if total.cost is not None:
        data["cost"] = total.cost
    return data


def fusion_item(run_id: str, result: FusionResult | None) -> dict[str, Any]:
    """The ``openrouter:fusion`` output item: in progress, or carrying the result in OpenRouter's shape.

    It also says ``role: assistant`` with no ``content``: the ``openai`` package builds an item of a type it does
    not know as a message, and the Agents SDK then reads that message's content; an empty list reads as nothing.
    """
    item: dict[str, Any] = {"type": "openrouter:fusion", "id": run_id, "role": "assistant", "content": []}
    if result is None:
        return item | {"status": "in_progress"}
    return item | {k: v for k, v in result.to_json().items() if k in ITEM_FIELDS}


@dataclass
class _Member:
    """One panel entry's events so far: its streamed text, redacted on the way (text and reasoning apart)."""

    text: StreamRedactor
    reasoning: StreamRedactor
    done: bool = False


@dataclass
class _Item:
    """The output item being written, and where it is."""

    item: dict[str, Any]
    index: int
    text: StreamRedactor | None = None
    parts: list[str] = field(default_factory=list)


class ResponseStream:
    """Builds one response's output items from a turn's :data:`Signal` s; with ``emit``, streams their events.

    Every piece of text goes through a :class:`StreamRedactor` (one for the writer's message, one per panel
    member), so a secret split across pieces is caught as on the chat endpoint; the events themselves are
    redacted as values by whoever sends them.
    """

    def __init__(self, turn: ResponsesTurn | None, head: dict[str, Any], redactor: Redactor, emit: Emit | None) -> None:
        self.turn = turn
        self.head = head
        """``id``, ``created_at`` and ``model``."""
        self.redactor = redactor
        self._emit = emit
        self.items: list[dict[str, Any]] = []
        self.sequence = 0
        self.started = False
        self._message: _Item | None = None
        self._fusion: _Item | None = None
        self._members: dict[str, _Member] = {}
        self._analysing = False
        self.only_fusion = False
        """Send the ``response.fusion_call.*`` events and nothing else (a chat stream's comments)."""

    @classmethod
    def fusion_only(cls, redactor: Redactor, emit: Emit) -> ResponseStream:
        """A stream of the fusion call's events alone, for a chat reply that asked for them."""
        stream = cls(None, {}, redactor, emit)
        stream.only_fusion = True
        return stream

    def response(
        self, status: str, outcome: TurnOutcome | None = None, error: ChatError | None = None
    ) -> dict[str, Any]:
        """The response object as it stands (``status``: in_progress, completed, incomplete or failed)."""
        incomplete = None
        if outcome is not None and status == "incomplete":
            reason = "content_filter" if outcome.finish_reason == "content_filter" else "max_output_tokens"
            incomplete = {"reason": reason}
        return {
            "id": self.head["id"],
            "object": "response",
            "created_at": self.head["created_at"],
            "status": status,
            "error": {"code": error.code, "message": error.message} if error is not None else None,
            "incomplete_details": incomplete,
            "model": self.head["model"],
            "output": list(self.items),
            **(self.turn.echo if self.turn is not None else {}),
            "usage": usage(outcome.usage) if outcome is not None else None,
        }

    async def feed(self, batch: list[Signal]) -> None:
        for kind, value in batch:
            if kind == "text":
                await self._text(value)
            elif kind == "end":
                await self._flush_text()
            elif kind == "fusion":
                await (self._fusion_started(value[0]) if value[1] is None else self._fusion_ended(*value))
            elif kind == "progress":
                await self._progress(value)
            elif kind == "delta":
                await self._delta(*value)

    async def finish(self, outcome: TurnOutcome) -> dict[str, Any]:
        """Close the output with the caller's tool calls; the finished response (sent as the last event)."""
        await self._close_message()
        for call in outcome.tool_calls:
            item = {
                "type": "function_call",
                "id": new_id("fc"),
                "call_id": call.id,
                "name": call.name,
                "arguments": call.arguments,
                "status": "completed",
            }
            if self.turn is not None and call.name in self.turn.namespaces:
                item["namespace"] = self.turn.namespaces[call.name]
            where = {"item_id": item["id"], "output_index": len(self.items)}
            self.items.append(item)
            await self.send("response.output_item.added", output_index=where["output_index"], item=item | {
                "arguments": "", "status": "in_progress"
            })  # fmt: skip
            await self.send("response.function_call_arguments.delta", **where, delta=call.arguments)
            await self.send("response.function_call_arguments.done", **where, name=call.name, arguments=call.arguments)
            await self.send("response.output_item.done", output_index=where["output_index"], item=item)
        status = "incomplete" if outcome.finish_reason in ("length", "content_filter") else "completed"
        response = self.response(status, outcome)
        await self.send(f"response.{status}", response=response)
        return response

    async def fail(self, error: ChatError) -> None:
        """The turn failed after its stream began: what was held back of the text goes out, then the last event,
        ``response.failed``."""
        await self._flush_text()
        await self.send("response.failed", response=self.response("failed", error=error))

    async def send(self, kind: str, **fields: Any) -> None:
        if self._emit is None or (self.only_fusion and not kind.startswith(EVENT_PREFIX)):
            return
        if not self.started and not self.only_fusion:
            self.started = True
            opened = self.response("in_progress") | {"output": []}  # nothing had gone out before these two
            for opening in ("response.created", "response.in_progress"):
                await self._emit(opening, {"sequence_number": self._next(), "response": opened})
        await self._emit(kind, {"sequence_number": self._next(), **fields})

    def _next(self) -> int:
        self.sequence += 1
        return self.sequence - 1

    # the writer's message

    async def _text(self, piece: str) -> None:
        if self._message is None:
            if piece == SEPARATOR and self.items:
                return  # between the text before a fusion call and the answer: each is an item of its own
            item = {"id": new_id("msg"), "type": "message", "status": "in_progress", "role": "assistant", "content": []}
            self._message = _Item(item, len(self.items), self.redactor.stream())
            self.items.append(item)
            await self.send("response.output_item.added", output_index=self._message.index, item=dict(item))
            await self.send("response.content_part.added", **self._where(self._message), part=_output_text(""))
        assert self._message.text is not None
        await self._out(self._message.text.feed(piece))

    async def _out(self, ready: str) -> None:
        message = self._message
        if ready and message is not None:
            message.parts.append(ready)
            await self.send("response.output_text.delta", **self._where(message), delta=ready, logprobs=[])

    async def _flush_text(self) -> None:
        if self._message is not None and self._message.text is not None:
            await self._out(self._message.text.flush())

    async def _close_message(self) -> None:
        message = self._message
        if message is None:
            return
        await self._flush_text()
        text = "".join(message.parts)
        await self.send("response.output_text.done", **self._where(message), text=text, logprobs=[])
        await self.send("response.content_part.done", **self._where(message), part=_output_text(text))
        message.item.update(status="completed", content=[_output_text(text)])
        await self.send("response.output_item.done", output_index=message.index, item=message.item)
        self._message = None

    @staticmethod
    def _where(opened: _Item) -> dict[str, Any]:
        return {"item_id": opened.item["id"], "output_index": opened.index, "content_index": 0}

    # the fusion call

    async def _fusion_started(self, run_id: str) -> None:
        await self._close_message()
        self._members.clear()
        self._analysing = False
        if self.turn is not None and self.turn.standard_items:
            self._fusion = _Item(fusion_item(run_id, None), -1)  # its events only: no item in the output
        else:
            self._fusion = _Item(fusion_item(run_id, None), len(self.items))
            self.items.append(self._fusion.item)
            await self.send("response.output_item.added", output_index=self._fusion.index, item=self._fusion.item)
        await self._fusion_event("in_progress")

    async def _fusion_event(self, name: str, **fields: Any) -> None:
        assert self._fusion is not None
        where = {"item_id": self._fusion.item["id"]}
        if self._fusion.index >= 0:
            where["output_index"] = self._fusion.index
        await self.send(f"{EVENT_PREFIX}{name}", **where, **fields)

    async def _progress(self, event: ProgressEvent) -> None:
        if self._fusion is None:
            return
        if event.kind == "started":
            for model in event.panel:
                await self._member(model)
        elif event.kind == "member_answered" and event.model is not None:
            await self._member_done(event.model, content=event.content)
        elif event.kind == "member_failed" and event.model is not None:
            await self._member_done(event.model, error=event.error or "failed", status_code=event.status_code)
        elif event.kind == "analyst_started":
            self._analysing = True
            await self._fusion_event("analysis.in_progress", analyst_model=event.model)

    async def _member(self, model: str) -> _Member:
        member = self._members.get(model)
        if member is None:
            member = self._members[model] = _Member(self.redactor.stream(), self.redactor.stream())
            await self._fusion_event("panel.added", model=model)
        return member

    async def _delta(self, model: str, piece: str, reasoning: bool) -> None:
        if self._fusion is None:
            return
        member = await self._member(model)
        if member.done:
            return
        if not reasoning:  # the reasoning has ended where the text begins: what it held back goes first
            await self._member_delta(model, member.reasoning.flush(), True)
        await self._member_delta(model, (member.reasoning if reasoning else member.text).feed(piece), reasoning)

    async def _member_delta(self, model: str, ready: str, reasoning: bool) -> None:
        if ready:
            await self._fusion_event("panel.reasoning.delta" if reasoning else "panel.delta", model=model, delta=ready)

    async def _member_done(
        self, model: str, *, content: str | None = None, error: str = "", status_code: int | None = None
    ) -> None:
        """``panel.completed`` with the answer, or ``panel.failed``: the member's error is ``message`` there,
        because clients (the ``openai`` package among them) end a stream at any event with a top-level ``error``."""
        member = await self._member(model)
        if member.done:
            return
        member.done = True
        await self._member_delta(model, member.reasoning.flush(), True)
        await self._member_delta(model, member.text.flush(), False)
        if content is not None:
            await self._fusion_event("panel.completed", model=model, content=content)
        else:
            await self._fusion_event("panel.failed", model=model, message=error, status_code=status_code)

    async def _fusion_ended(self, run_id: str, result: FusionResult) -> None:
        """The run's end: what its events did not tell yet (a cached or refused run tells nothing), then the item."""
        if self._fusion is None:  # a stream that missed the start: the item opens now
            await self._fusion_started(run_id)
        assert self._fusion is not None
        for response in result.responses:
            await self._member_done(response.model, content=response.content)
        for failed in result.failed_models:
            await self._member_done(failed.model, error=failed.error, status_code=failed.status_code)
        if self._analysing or result.analysis is not None:
            if not self._analysing:
                await self._fusion_event("analysis.in_progress", analyst_model=result.analyst_model)
            analysis = result.analysis.model_dump(mode="json") if result.analysis is not None else None
            await self._fusion_event("analysis.completed", analysis=analysis)
        await self._fusion_event("completed")
        if self._fusion.index >= 0:
            item = fusion_item(run_id, result)
            self.items[self._fusion.index] = item
            await self.send("response.output_item.done", output_index=self._fusion.index, item=item)
        self._fusion = None


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def head(model: str) -> dict[str, Any]:
    return {"id": new_id("resp"), "created_at": int(time.time()), "model": model}
