"""The writer loop: one chat-completions request, answered by a writer model that may call fusion once.

The writer gets the caller's messages and tools plus one function tool, ``openrouter_fusion``, and decides:

- it answers: that is the response, and no panel request is made at all;
- it calls one of the caller's tools: the call goes back to the caller (``finish_reason: "tool_calls"``),
  who runs it and sends the next request, as with any model;
- it calls fusion: the run takes the one request path every front end takes (``service.prepare``, then
  ``service.run``: arguments, depth, key, a run slot, the catalogue, the cache, the run history). Its
  result, or the refusal or failure, is the tool result the writer reads; the writer then goes on.

Fusion runs at most once per request. Afterwards the tool stays listed (some providers refuse a
conversation holding tool calls without the tools' definitions) but is not offered again: ``tool_choice``
becomes ``none`` when the caller has no tools, and a second call is answered "not run". Nothing here
knows HTTP: the front end passes sinks for text and progress and translates the outcome.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import anyio
from pydantic import SecretStr

from ..core.budget import MIN_SHARE, shares
from ..core.callers import LOCAL_PRINCIPAL
from ..core.errors import BadResponse
from ..core.models import FusionResult, TokenUsage, new_run_id
from ..core.progress import DeltaSink, EventSink
from ..core.tool_text import CONTEXT_HELP, DESCRIPTION, PROMPT_HELP, TOOL_NAME
from ..engine.admission import FusionRefused
from ..engine.member import assistant_turn
from ..engine.service import FusionService
from ..providers.catalogue import request_cost
from ..providers.client import Completion, Provider, TextSink, ToolCall
from .request import ChatError, FusionSetup, Plan

log = logging.getLogger(__name__)

MAX_WRITER_REQUESTS = 4
"""The writer decides, then answers after fusion; two spare requests cover a writer that calls it again."""
SEPARATOR = "\n\n"
"""Between the text of two writer requests (a word before calling fusion, then the answer)."""
ALREADY_RAN = f"not run: {TOOL_NAME} already ran for this request (once per request); answer from its result above"
NOT_RUN_YET = "not run: {name} was called together with {fusion}, which ran first; call {name} again if you need it"
WRITER_FIELDS = frozenset(
    {"status", "analysis", "analysis_error", "responses", "failed_models", "sources", "error", "failure_reason"}
)
"""What the writer reads of a result: OpenRouter's ``FusionAnalysisResult`` (usage and timings are the caller's)."""

FUSION_FUNCTION: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": DESCRIPTION,
        "parameters": {
            "type": "object",
            "properties": {
                "prompt": {"type": "string", "description": PROMPT_HELP},
                "context": {"type": "string", "description": CONTEXT_HELP},
            },
            "required": ["prompt"],
        },
    },
}
"""The fusion tool as the writer sees it: the MCP tool's name and words, with the two arguments a model fills."""


@dataclass
class TurnOutcome:
    """How a request ended: the writer's text (every request's, in order), the caller's tool calls, usage."""

    content: str
    tool_calls: list[ToolCall]
    finish_reason: str
    usage: TokenUsage
    """Summed over every writer request and the fusion run."""
    fusion: FusionResult | None
    """The run's result (or its refusal), when the writer called fusion."""


class Writer:
    """One request's writer loop; :meth:`run` returns its outcome or raises the writer's ``UpstreamError``.

    ``on_text`` sees each piece of text as the writer produces it (for a streaming response),
    ``on_event`` the fusion run's progress, ``on_delta`` the panel's streamed text and ``on_fusion`` the run's
    start and end. ``phase`` says what the request is waiting for right now.
    """

    def __init__(
        self,
        plan: Plan,
        service: FusionService,
        *,
        depth: int,
        principal: str = LOCAL_PRINCIPAL,
        api_key: SecretStr | None = None,
        on_text: TextSink | None = None,
        on_event: EventSink | None = None,
        turn_id: str = "",
    ) -> None:
        self.plan = plan
        self.service = service
        self.depth = depth
        self.principal = principal
        self.turn_id = turn_id or f"chat-{new_run_id()}"
        """Names the writer's usage rows (the response's id)."""
        self.api_key = api_key
        self.on_text = on_text
        self.on_text_end: Callable[[], None] | None = None
        """Told when a writer request's text is complete (no secret spans two requests' texts)."""
        self.on_event = on_event
        self.on_delta: DeltaSink | None = None
        self.on_fusion: Callable[[str, FusionResult | None], None] | None = None
        """Told when the fusion call starts (its run id, None) and when it ends (its id and result, a refusal too)."""
        self.provider = Provider(
            service.http, service.settings_for(api_key), depth=depth, pools=service.pools.providers
        )
        self.spent = 0.0
        """USD the writer's requests have spent so far (their worst cases where none was reported)."""
        self.run_spent = 0.0
        """USD the turn's run spent (its own reservation covers it under the daily cap)."""
        self._reserved = False
        self.phase: Literal["writer", "fusion"] = "writer"
        self.phase_since = anyio.current_time()
        self.fusion: FusionResult | None = None
        self.requests = 0
        self._usage = TokenUsage()
        self._texts: list[str] = []
        # A provider without streaming (FUSION_STREAM=false) still serves a streaming client, a turn at a time.
        self._stream = plan.stream and service.settings.stream

    async def run(self) -> TurnOutcome:
        try:
            return await self._turn()
        finally:
            # Whatever ended the turn (an answer, an upstream error, a client that hung up), what the writer's
            # requests cost counts towards the principal's usage and daily cap, in place of its reservation.
            await self.service.writer_spent(
                self.principal, self.turn_id, self.plan.writer, self.requests, self._usage, reserved=self._reserved
            )

    async def _turn(self) -> TurnOutcome:
        messages = list(self.plan.messages)
        for _ in range(MAX_WRITER_REQUESTS):
            completion = await self._ask(messages)
            calls = completion.tool_calls
            setup = self.plan.fusion
            if setup is None or not any(c.name == TOOL_NAME for c in calls):
                return self._outcome(completion, calls)
            if self.fusion is not None:
                # Fusion has run: a call to it again is dropped when there is anything else to return.
                others = [c for c in calls if c.name != TOOL_NAME]
                if others or completion.content.strip():
                    return self._outcome(completion, others)
            messages.append(assistant_turn(completion))
            messages.extend([await self._answer(call, setup, messages) for call in calls])
        raise BadResponse(f"the writer {self.plan.writer} kept calling {TOOL_NAME} after it had run")

    async def _ask(self, messages: list[dict[str, Any]]) -> Completion:
        body: dict[str, Any] = {**self.plan.fields, "model": self.plan.writer, "messages": messages}
        tools = [*self.plan.tools, FUSION_FUNCTION] if self.plan.fusion is not None else self.plan.tools
        if tools:
            body["tools"] = tools
        choice = self._tool_choice()
        if choice is not None:
            body["tool_choice"] = choice
        if self._stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        streamed: list[str] = []

        def sink(piece: str) -> None:
            if not streamed and self._texts:
                self._emit(SEPARATOR)
            streamed.append(piece)
            self._emit(piece)

        worst = await self._admit(body)
        async with self._writer_slot():
            self.requests += 1  # counted once it goes out: a request refused a slot was never sent
            completion = await self.provider.complete(body, on_text=sink if self._stream else None)
        self._usage = self._usage + completion.usage
        self.spent += completion.usage.cost if completion.usage.cost is not None else (worst or 0.0)
        if completion.content:
            if not streamed:
                sink(completion.content)
            self._texts.append(completion.content)
        if self.on_text_end is not None:
            self.on_text_end()
        return completion

    async def _worst_case(self, body: dict[str, Any], extra_chars: int = 0) -> float | None:
        """A writer request's worst-case cost (None without catalogue prices)."""
        _, info, _ = await self.service.catalogue.lookup(self.plan.writer)
        return request_cost(info, body, self.plan.max_tokens, extra_chars)

    async def _admit(self, body: dict[str, Any]) -> float | None:
        """Pass the writer request ``body`` through the spending gate, or raise :class:`ChatError` (402): the turn's
        ``FUSION_MAX_COST_USD``, then the principal's daily cap, whose reservation grows to cover it."""
        settings = self.service.settings
        if settings.max_cost_usd is None and (settings.principal_max_cost_usd_per_day is None or self.api_key):
            return None
        worst = await self._worst_case(body)
        spent = self.spent + self.run_spent
        if settings.max_cost_usd is not None and worst is not None and spent + worst > settings.max_cost_usd:
            raise ChatError(
                402,
                f"cost limit: this chat turn has spent ${spent:.4f} and its next writer request may cost up to "
                f"${worst:.4f} ({self.plan.max_tokens} tokens of answer at most), past FUSION_MAX_COST_USD="
                f"${settings.max_cost_usd:g}; lower max_tokens, use a cheaper model, or raise the cap",
                code="cost_limit",
            )
        if self.api_key is None:
            try:
                self._reserved |= await self.service.reserve_turn(
                    self.principal, self.turn_id, self.spent + (worst or 0)
                )
            except FusionRefused as refused:
                raise ChatError(402, refused.message, code=refused.reason) from None
        return worst

    async def _fusion_cap(self, messages: list[dict[str, Any]]) -> float | None:
        """What a run may cost within the turn's ``FUSION_MAX_COST_USD``: what is left once the turn's spend and
        the writer's answer after the run (its prompt grown by the tool result) are counted."""
        cap = self.service.settings.max_cost_usd
        if cap is None:
            return None
        body = {"messages": messages, "tools": [*self.plan.tools, FUSION_FUNCTION]}
        after = await self._worst_case(body, self.service.settings.max_output_chars) or 0.0
        return cap - self.spent - self.run_spent - after

    @asynccontextmanager
    async def _writer_slot(self) -> AsyncIterator[None]:
        """One of ``FUSION_MAX_CHAT_REQUESTS`` slots for a writer request, waiting up to ``FUSION_QUEUE_TIMEOUT_S``.

        Held only while the request is out, never while fusion runs, so a turn cannot hold a slot that its
        own run waits for.
        """
        slots = self.service.slots(self.api_key)[1]
        waited = anyio.move_on_after(self.service.settings.queue_timeout_s)
        with waited:
            await slots.acquire()
        if waited.cancelled_caught:
            raise ChatError(
                503,
                f"server busy: {slots.borrowed_tokens} chat requests are waiting on the provider "
                f"(FUSION_MAX_CHAT_REQUESTS) and none finished within {self.service.settings.queue_timeout_s:g} s; "
                "try again shortly",
                code="server_busy",
                headers={"Retry-After": "1"},
            )
        try:
            yield
        finally:
            slots.release()

    def _emit(self, piece: str) -> None:
        if self.on_text is not None:
            self.on_text(piece)

    def _tool_choice(self) -> str | dict[str, Any] | None:
        """The caller's ``tool_choice``, until fusion has run; then fusion is no longer on offer."""
        choice = self.plan.tool_choice
        if self.fusion is None:
            return choice
        if not self.plan.tools:
            return "none"
        named = choice.get("function") if isinstance(choice, dict) else None
        if choice == "required" or (isinstance(named, dict) and named.get("name") == TOOL_NAME):
            return "auto"  # the requirement was met by the fusion call
        return choice

    async def _answer(self, call: ToolCall, setup: FusionSetup, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The tool message that answers one of the writer's calls in a turn that called fusion."""
        if call.name != TOOL_NAME:
            content = NOT_RUN_YET.format(name=call.name, fusion=TOOL_NAME)
        elif self.fusion is not None:
            content = ALREADY_RAN
        else:
            run_id = new_run_id()
            if self.on_fusion is not None:
                self.on_fusion(run_id, None)
            self.fusion = await self._fuse(call, setup, await self._fusion_cap(messages), run_id)
            if self.on_fusion is not None:
                self.on_fusion(run_id, self.fusion)
            self.run_spent += self.fusion.usage.total.cost or 0.0
            content = tool_result(self.fusion, self.service.settings.max_output_chars)
        return {"role": "tool", "tool_call_id": call.id, "content": content}

    async def _fuse(self, call: ToolCall, setup: FusionSetup, max_cost: float | None, run_id: str) -> FusionResult:
        """Run fusion for the writer's call through the shared request path; every outcome is a result.

        ``max_cost`` is what the turn's ``FUSION_MAX_COST_USD`` leaves for the run (None: no cap)."""
        try:
            prompt, context = fusion_arguments(call.arguments)
            args = setup.args(prompt, context, self.service.settings.deadline_s)
            request = self.service.prepare(args, depth=self.depth, api_key=self.api_key)
        except FusionRefused as refused:
            log.info("run %s for %s refused: %s", run_id, self.principal, refused.message)
            return refused.result(run_id)
        self._enter("fusion")
        try:
            return await self.service.run(
                request,
                run_id=run_id,
                on_event=self.on_event,
                principal=self.principal,
                api_key=self.api_key,
                max_cost_usd=max_cost,
                on_delta=self.on_delta,
            )
        finally:
            self._enter("writer")

    def _enter(self, phase: Literal["writer", "fusion"]) -> None:
        self.phase, self.phase_since = phase, anyio.current_time()

    def _outcome(self, completion: Completion, calls: list[ToolCall]) -> TurnOutcome:
        finish = completion.finish_reason if completion.finish_reason not in (None, "tool_calls") else "stop"
        spent = self.fusion.usage.total if self.fusion is not None else TokenUsage()
        return TurnOutcome(
            content=SEPARATOR.join(self._texts),
            tool_calls=calls,
            finish_reason="tool_calls" if calls else str(finish),
            usage=self._usage + spent,
            fusion=self.fusion,
        )


def fusion_arguments(raw: str) -> tuple[str, str | None]:
    """(prompt, context) from the writer's call; :class:`FusionRefused` naming ``prompt`` when unusable.

    Other arguments are ignored: the entry point, not the writer, chooses the panel.
    """
    try:
        data = json.loads(raw or "{}")
    except ValueError:
        raise FusionRefused.bad_argument("prompt", "the tool call's arguments are not JSON") from None
    if not isinstance(data, dict):
        raise FusionRefused.bad_argument("prompt", "the tool call's arguments are not a JSON object")
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        raise FusionRefused.bad_argument("prompt", "missing" if prompt is None else "not a string")
    context = data.get("context")
    if context is not None and not isinstance(context, str):
        context = json.dumps(context, ensure_ascii=False)
    return prompt, context


TRIM_NOTE = " [... {:,} more characters trimmed to fit; the caller has the whole answer]"


def tool_result(result: FusionResult, max_chars: int) -> str:
    """The result as the writer reads it: OpenRouter's shape without empty lists, answers trimmed evenly to
    fit ``max_chars``.

    The caller gets every answer whole in the response's ``fusion`` field.
    """
    data = {k: v for k, v in result.to_json().items() if k in WRITER_FIELDS and v != []}
    text = json.dumps(data, ensure_ascii=False)
    responses = data.get("responses") or []
    if len(text) <= max_chars or not responses:
        return text
    fixed = len(text) - sum(len(json.dumps(r["content"], ensure_ascii=False)) for r in responses)
    # Room for the answers, less a worst-case trim note on each (answers are trimmed as in budget.py).
    room = max_chars - fixed - len(responses) * (len(TRIM_NOTE) + 16)
    allowed = shares([len(r["content"]) for r in responses], room, MIN_SHARE)
    for response, share in zip(responses, allowed, strict=True):
        content = response["content"]
        if len(content) > share:
            response["content"] = content[:share] + TRIM_NOTE.format(len(content) - share)
    return json.dumps(data, ensure_ascii=False)
