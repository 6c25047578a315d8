"""``run_fusion``: the panel in parallel, then the analyst; every failure named in the result.

Progress goes out as plain :class:`ProgressEvent` values to a callback, so the MCP layer can turn them
into progress notifications and the command line into terminal lines, and nothing here imports ``mcp``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio

from .analyst import run_analyst
from .errors import HTTPStatusError, UpstreamError
from .member import MemberOutcome, run_member
from .models import (
    FailedModel,
    FailureReason,
    FusionRequest,
    FusionResult,
    ModelUsage,
    PanelResponse,
    Timings,
    TokenUsage,
    Usage,
)
from .provider import Provider

PANEL_SYSTEM = """You are one of several expert AI models answering the same question independently; an
analyst will compare the answers. Answer the user's question thoroughly and accurately on your own.
Say where you are uncertain and why, name the assumptions you make, and prefer concrete, checkable
statements. Today's date is {today}."""


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a run. ``progress`` rises by one per step and reaches ``total`` at the end."""

    kind: str  # started | member_answered | member_failed | analyst_started | analyst_done
    message: str
    progress: int
    total: int
    model: str | None = None


EventSink = Callable[[ProgressEvent], Awaitable[None]]


def new_run_id() -> str:
    return f"fus_{uuid.uuid4().hex[:16]}"


def panel_messages(request: FusionRequest) -> list[dict[str, Any]]:
    user = request.prompt
    if request.context:
        user = f"<context>\n{request.context}\n</context>\n\n{request.prompt}"
    today = datetime.now(UTC).date().isoformat()
    return [{"role": "system", "content": PANEL_SYSTEM.format(today=today)}, {"role": "user", "content": user}]


async def run_fusion(
    request: FusionRequest,
    provider: Provider,
    *,
    on_event: EventSink | None = None,
    run_id: str | None = None,
) -> FusionResult:
    """Run one fusion. Upstream failures become result fields; only cancellation propagates."""
    run_id = run_id or new_run_id()
    started = time.monotonic()
    panel = request.analysis_models
    total = len(panel) + 2
    step = 0

    async def emit(kind: str, message: str, model: str | None = None) -> None:
        nonlocal step
        if kind != "started":
            step += 1
        if on_event is not None:
            await on_event(ProgressEvent(kind, message, step, total, model))

    await emit("started", f"fusion started: panel of {len(panel)} ({', '.join(panel)}), analyst {request.model}")
    outcomes: dict[str, MemberOutcome] = {}

    async def member(model: str) -> None:
        outcome = await run_member(
            provider,
            model,
            panel_messages(request),
            max_tool_calls=request.max_tool_calls,
            max_completion_tokens=request.max_completion_tokens,
            temperature=request.temperature,
        )
        outcomes[model] = outcome
        elapsed = time.monotonic() - started
        answered = sum(1 for o in outcomes.values() if o.error is None)
        if outcome.error is None:
            await emit("member_answered", f"{answered}/{len(panel)} answered: {model} in {elapsed:.1f} s", model)
        else:
            await emit("member_failed", f"{model} failed after {elapsed:.1f} s: {outcome.error.message}", model)

    async with anyio.create_task_group() as tg:
        for model in panel:
            tg.start_soon(member, model)

    ordered = [outcomes[m] for m in panel]
    responses = [PanelResponse(model=o.model, content=o.content) for o in ordered if o.error is None]
    failed = [_failed_model(o) for o in ordered if o.error is not None]
    usage_rows = [_usage_row(o.model, "panel", [o]) for o in ordered]
    timings = Timings(members={o.model: o.seconds for o in ordered})

    if not responses:
        timings.total = round(time.monotonic() - started, 3)
        reason, message = _panel_failure([o.error for o in ordered if o.error is not None])
        return FusionResult(
            status="error",
            run_id=run_id,
            error=message,
            failure_reason=reason,
            failed_models=failed,
            usage=_usage(usage_rows),
            timings=timings,
        )

    await emit("analyst_started", f"analyst {request.model} is comparing {len(responses)} answers", request.model)
    analyst_started = time.monotonic()
    verdict = await run_analyst(provider, request, responses)
    timings.analyst = round(time.monotonic() - analyst_started, 3)
    usage_rows.append(_usage_row(request.model, "analyst", verdict.runs))
    done = "analysis ready" if verdict.error is None else f"analysis failed: {verdict.error.message}"
    await emit("analyst_done", f"{done} ({timings.analyst:.1f} s)", request.model)
    timings.total = round(time.monotonic() - started, 3)
    return FusionResult(
        status="ok",
        run_id=run_id,
        analysis=verdict.analysis,
        analysis_error=verdict.error,
        responses=responses,
        failed_models=failed,
        analyst_model=request.model,
        final_answer=verdict.final_answer,
        usage=_usage(usage_rows),
        timings=timings,
    )


def _failed_model(outcome: MemberOutcome) -> FailedModel:
    assert outcome.error is not None
    return FailedModel(model=outcome.model, error=outcome.error.message, status_code=outcome.error.status_code)


def _usage_row(model: str, role: str, runs: list[MemberOutcome]) -> ModelUsage:
    total = sum((r.usage for r in runs), TokenUsage())
    return ModelUsage(model=model, role=role, requests=sum(r.requests for r in runs), **total.model_dump())


def _usage(rows: list[ModelUsage]) -> Usage:
    return Usage(
        models=rows,
        total=sum((TokenUsage(**r.model_dump(include=set(TokenUsage.model_fields))) for r in rows), TokenUsage()),
    )


def _panel_failure(errors: list[UpstreamError]) -> tuple[FailureReason, str]:
    """Name the one cause when the whole panel failed for it; otherwise ``all_panels_failed``."""
    statuses = [e.status_code for e in errors]
    summary = "; ".join(dict.fromkeys(e.message for e in errors))
    if any(s == 402 for s in statuses):
        return "insufficient_credits", f"the provider reports insufficient credits: {summary}"
    if all(s == 429 for s in statuses):
        return "rate_limited", f"every panel model was rate limited: {summary}"
    if all(isinstance(e, HTTPStatusError) and e.code == "model_not_found" for e in errors):
        return "invalid_model", f"no panel model id is known to the provider: {summary}"
    return "all_panels_failed", f"all panel models failed: {summary}"
