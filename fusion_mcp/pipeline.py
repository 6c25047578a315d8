"""``run_fusion``: the panel in parallel, then the analyst; every failure named in the result.

Progress goes out as plain :class:`ProgressEvent` values to a callback, so the MCP layer can turn them
into progress notifications and the command line into terminal lines, and nothing here imports ``mcp``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio

from .analyst import AnalystOutcome, run_analyst
from .errors import HTTPStatusError, UpstreamError
from .member import MemberOutcome, run_member
from .models import (
    AnalysisError,
    FailedModel,
    FailureReason,
    FusionRequest,
    FusionResult,
    ModelUsage,
    PanelResponse,
    Source,
    Timings,
    TokenUsage,
    Usage,
    analyst_reserve,
)
from .provider import Provider
from .web.server_tools import cited_sources, server_tools
from .web.tools import MemberWeb, WebTools

PANEL_SYSTEM = """You are one of several expert AI models answering the same question independently; an
analyst will compare the answers. Answer the user's question thoroughly and accurately on your own.
Say where you are uncertain and why, name the assumptions you make, and prefer concrete, checkable
statements. Today's date is {today}."""


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a run. ``progress`` rises by one per step and reaches ``total`` at the end."""

    kind: str  # started | tool | member_answered | member_failed | member_cut | analyst_started | analyst_done
    message: str
    progress: float
    """Whole steps, plus a fraction for each tool call so far (MCP wants every notification to rise)."""
    total: int
    model: str | None = None


EventSink = Callable[[ProgressEvent], Awaitable[None]]


def new_run_id() -> str:
    return f"fus_{uuid.uuid4().hex[:16]}"


WEB_NOTE = """You can search the web and read pages: do so when the question depends on facts you are
not sure of, recent events, or documents you have not seen, and name the pages you relied on."""


def panel_messages(request: FusionRequest, fence_note: str | None = None, web: bool = False) -> list[dict[str, Any]]:
    user = request.prompt
    if request.context:
        user = f"<context>\n{request.context}\n</context>\n\n{request.prompt}"
    today = datetime.now(UTC).date().isoformat()
    system = PANEL_SYSTEM.format(today=today)
    if web:
        system += "\n" + WEB_NOTE
    if fence_note:
        system += "\n" + fence_note
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def seed_text(request: FusionRequest) -> str:
    """Where a run's fetchable URLs start: the question and its context."""
    return f"{request.prompt}\n{request.context or ''}"


def merge_sources(*groups: list[Source]) -> list[Source]:
    """One source per URL, first title kept (a later title fills a missing one)."""
    merged: dict[str, Source] = {}
    for group in groups:
        for source in group:
            known = merged.get(source.url)
            if known is None:
                merged[source.url] = source
            elif known.title is None and source.title:
                merged[source.url] = source
    return list(merged.values())


async def run_fusion(
    request: FusionRequest,
    provider: Provider,
    *,
    on_event: EventSink | None = None,
    run_id: str | None = None,
    transcripts: dict[str, list[dict[str, Any]]] | None = None,
    web: WebTools | None = None,
) -> FusionResult:
    """Run one fusion. Upstream failures become result fields; only cancellation propagates.

    Web tools follow ``request.web_tools``: ``local`` runs ``web`` (our search and guarded fetch) for every
    member and the analyst, ``openrouter`` sends OpenRouter's server tools, ``off`` neither.

    ``transcripts``, when given, receives every model's full conversation (the analyst's under
    ``analyst:<id>``), tool calls included, for the run history.

    With ``request.deadline_s``, members still running at the deadline minus the analyst's reserve are
    cancelled and keep what they had streamed as a truncated answer; an analyst still running at the
    deadline is cancelled and the answers come back without analysis.
    """
    run_id = run_id or new_run_id()
    started = anyio.current_time()
    panel = request.analysis_models
    deadline = math.inf
    cutoff = math.inf
    if request.deadline_s is not None:
        deadline = started + request.deadline_s
        reserve = request.analyst_reserve_s
        cutoff = deadline - (analyst_reserve(request.deadline_s) if reserve is None else reserve)
    total = len(panel) + 2
    step = 0
    tools_used = 0
    # Each tool call moves progress by a fraction small enough that all of them stay below one step.
    tool_step = 1 / ((len(panel) + 1) * request.max_tool_calls + 1)
    run_web = web.run() if web is not None and request.web_tools == "local" else None
    fence_note = run_web.fence.note if run_web is not None else None
    extra = {"tools": server_tools(request.max_tool_calls)} if request.web_tools == "openrouter" else None
    toolboxes: dict[str, MemberWeb] = {}

    def elapsed() -> float:
        return anyio.current_time() - started

    async def emit(kind: str, message: str, model: str | None = None) -> None:
        nonlocal step, tools_used
        if kind == "tool":
            tools_used += 1
        elif kind != "started":
            step += 1
        progress = total if kind == "analyst_done" else round(step + tools_used * tool_step, 6)
        if on_event is not None:
            await on_event(ProgressEvent(kind, message, progress, total, model))

    def on_tool(model: str) -> Callable[[str, int, int], Awaitable[None]]:
        async def report(name: str, used: int, budget: int) -> None:
            await emit("tool", f"{model}: {name} {used}/{budget}", model)

        return report

    await emit("started", f"fusion started: panel of {len(panel)} ({', '.join(panel)}), analyst {request.model}")
    outcomes = {model: MemberOutcome(model=model) for model in panel}

    trace = transcripts if transcripts is not None else {}

    async def member(model: str) -> None:
        outcome = outcomes[model]
        web_ok = model not in request.no_tools and (run_web is not None or extra is not None)
        trace[model] = panel_messages(request, fence_note if web_ok else None, web_ok)
        if run_web is not None and web_ok:
            toolboxes[model] = run_web.toolbox(seed_text(request))
        await run_member(
            provider,
            model,
            trace[model],
            max_tool_calls=request.max_tool_calls,
            max_completion_tokens=request.max_completion_tokens,
            temperature=request.temperature,
            toolbox=toolboxes.get(model),
            stream=request.stream,
            extra=extra if web_ok else None,
            on_tool=on_tool(model),
            outcome=outcome,
            deadline=cutoff,
        )
        answered = sum(1 for o in outcomes.values() if o.finished and o.error is None)
        if outcome.error is None:
            await emit("member_answered", f"{answered}/{len(panel)} answered: {model} in {elapsed():.1f} s", model)
        else:
            await emit("member_failed", f"{model} failed after {elapsed():.1f} s: {outcome.error.message}", model)

    with anyio.move_on_at(cutoff):
        async with anyio.create_task_group() as tg:
            for model in panel:
                tg.start_soon(member, model)

    responses: list[PanelResponse] = []
    failed: list[FailedModel] = []

    def read_by(outcome: MemberOutcome) -> list[Source]:
        box = toolboxes.get(outcome.model)
        return merge_sources(box.sources if box is not None else [], cited_sources(outcome.annotations))

    for outcome in outcomes.values():
        if not outcome.finished:
            # Cut off by the deadline: keep what it streamed so far.
            outcome.content = outcome.partial
            outcome.seconds = round(elapsed(), 3)
            kept = f"kept {len(outcome.content)} characters" if outcome.content.strip() else "nothing to keep"
            await emit(
                "member_cut", f"{outcome.model} cut off at the deadline after {elapsed():.1f} s ({kept})", outcome.model
            )
            if outcome.content.strip():
                reason = f"cut off at the deadline after {outcome.seconds:.1f} s"
                responses.append(_truncated(outcome, reason, read_by(outcome)))
            else:
                message = f"no answer within the deadline ({outcome.seconds:.1f} s into a {request.deadline_s:g} s run)"
                failed.append(FailedModel(model=outcome.model, error=message, status_code=None))
        elif outcome.error is None:
            responses.append(PanelResponse(model=outcome.model, content=outcome.content, sources=read_by(outcome)))
        elif outcome.content.strip():
            responses.append(_truncated(outcome, outcome.error.message, read_by(outcome)))
        else:
            failed.append(_failed_model(outcome))
    usage_rows = [_usage_row(o.model, "panel", [o]) for o in outcomes.values()]
    timings = Timings(members={o.model: o.seconds for o in outcomes.values()})

    if not responses:
        timings.total = round(elapsed(), 3)
        reason, message = _panel_failure([o.error for o in outcomes.values()])
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
    analyst_started = anyio.current_time()
    verdict = AnalystOutcome()
    trace[f"analyst:{request.model}"] = verdict.transcript
    analyst_box = None
    analyst_web = request.model not in request.no_tools
    if run_web is not None and analyst_web:
        # The analyst checks contradictions against what the panel saw: it may fetch any URL a member could.
        analyst_box = run_web.toolbox(seed_text(request), set().union(*(b.known for b in toolboxes.values())))
    with anyio.move_on_at(deadline) as scope:
        await run_analyst(
            provider,
            request,
            responses,
            out=verdict,
            deadline=deadline,
            toolbox=analyst_box,
            extra=extra if analyst_web else None,
            fence_note=fence_note if analyst_web else None,
            on_tool=on_tool(request.model),
        )
    if scope.cancelled_caught:
        verdict.analysis = None
        verdict.error = AnalysisError(
            reason="deadline", message=f"the analyst did not finish within the {request.deadline_s:g} s deadline"
        )
    timings.analyst = round(anyio.current_time() - analyst_started, 3)
    usage_rows.append(_usage_row(request.model, "analyst", verdict.runs))
    done = "analysis ready" if verdict.error is None else f"analysis failed: {verdict.error.message}"
    await emit("analyst_done", f"{done} ({timings.analyst:.1f} s)", request.model)
    timings.total = round(elapsed(), 3)
    analyst_read = merge_sources(
        analyst_box.sources if analyst_box is not None else [],
        cited_sources([a for run in verdict.runs for a in run.annotations]),
    )
    return FusionResult(
        status="ok",
        sources=merge_sources(*(r.sources for r in responses), analyst_read),
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


def _truncated(outcome: MemberOutcome, reason: str, sources: list[Source]) -> PanelResponse:
    return PanelResponse(
        model=outcome.model, content=outcome.content, truncated=True, truncated_reason=reason, sources=sources
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


def _panel_failure(found: list[UpstreamError | None]) -> tuple[FailureReason, str]:
    """Name the one cause when the whole panel failed for it; otherwise ``all_panels_failed``."""
    errors = [e for e in found if e is not None]
    if len(errors) < len(found):
        return "all_panels_failed", "no panel model answered within the deadline"
    statuses = [e.status_code for e in errors]
    summary = "; ".join(dict.fromkeys(e.message for e in errors))
    if any(s == 402 for s in statuses):
        return "insufficient_credits", f"the provider reports insufficient credits: {summary}"
    if all(s == 429 for s in statuses):
        return "rate_limited", f"every panel model was rate limited: {summary}"
    if all(isinstance(e, HTTPStatusError) and e.code == "model_not_found" for e in errors):
        return "invalid_model", f"no panel model id is known to the provider: {summary}"
    return "all_panels_failed", f"all panel models failed: {summary}"
