"""``run_fusion``: the panel in parallel, then the analyst; every failure named in the result.

Each step is a function of the :class:`~fusion_mcp.run.Run` in progress: collect the panel, sort its
outcomes, analyse, assemble the result. Progress goes out as :class:`ProgressEvent` values to a callback,
so nothing here imports ``mcp``.
"""

from __future__ import annotations

from typing import Any, Literal

import anyio

from . import panel
from .analyst import AnalystOutcome, run_analyst
from .member import MemberOutcome
from .models import (
    AnalysisError,
    FailedModel,
    FusionRequest,
    FusionResult,
    ModelUsage,
    PanelResponse,
    Timings,
    TokenUsage,
    Usage,
)
from .progress import EventSink, ProgressEvent
from .provider import Provider
from .run import Clock, Progress, Run, RunTools, merge_sources, new_run_id
from .web.tools import WebTools

__all__ = ["EventSink", "ProgressEvent", "new_run_id", "run_fusion"]


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

    Web tools follow ``request.web_tools`` (see :class:`~fusion_mcp.run.RunTools`). ``transcripts``, when
    given, receives every model's full conversation, tool calls included, for the run history.

    With ``request.deadline_s``, members still running at the deadline minus the analyst's reserve are
    cancelled and keep what they had streamed as a truncated answer; an analyst still running at the
    deadline is cancelled and the answers come back without analysis.
    """
    clock = Clock.start(request)
    run = Run(
        run_id=run_id or new_run_id(),
        request=request,
        provider=provider,
        clock=clock,
        progress=Progress(request, on_event, clock),
        tools=RunTools(request, web),
        transcripts=transcripts if transcripts is not None else {},
    )
    await run.progress.emit("started", model=request.model)
    outcomes = await panel.collect(run)
    responses, failed = await panel.sort(run, outcomes.values())
    if not responses:
        return panel_failed(run, list(outcomes.values()), failed)
    verdict = await analyse(run, responses)
    return assemble(run, list(outcomes.values()), responses, failed, verdict)


async def analyse(run: Run, responses: list[PanelResponse]) -> AnalystOutcome:
    """The analyst's comparison of ``responses``, cut off at the run's deadline if it comes first."""
    request = run.request
    await run.progress.emit("analyst_started", model=request.model, answered=len(responses))
    started = anyio.current_time()
    verdict = AnalystOutcome()
    run.transcripts[f"analyst:{request.model}"] = verdict.transcript
    with anyio.move_on_at(run.clock.deadline) as scope:
        await run_analyst(
            run.provider,
            request,
            responses,
            out=verdict,
            deadline=run.clock.deadline,
            toolbox=run.tools.analyst_box(),
            extra=run.tools.extra(request.model),
            fence_note=run.tools.fence_note(request.model),
            on_tool=run.progress.tool_reporter(request.model),
            on_retry=run.progress.retry_reporter(request.model),
        )
    if scope.cancelled_caught:
        verdict.analysis = None
        verdict.error = AnalysisError(
            reason="deadline", message=f"the analyst did not finish within the {request.deadline_s:g} s deadline"
        )
    verdict.seconds = round(anyio.current_time() - started, 3)
    error = verdict.error.message if verdict.error is not None else None
    await run.progress.emit("analyst_done", model=request.model, error=error, duration=verdict.seconds)
    return verdict


def assemble(
    run: Run,
    outcomes: list[MemberOutcome],
    responses: list[PanelResponse],
    failed: list[FailedModel],
    verdict: AnalystOutcome,
) -> FusionResult:
    """The result of a run that had at least one answer."""
    analyst_read = run.tools.sources(run.tools.analyst, [a for turn in verdict.runs for a in turn.annotations])
    rows = [_usage_row(o.model, "panel", [o]) for o in outcomes]
    return FusionResult(
        status="ok",
        run_id=run.run_id,
        analysis=verdict.analysis,
        analysis_error=verdict.error,
        responses=responses,
        failed_models=failed,
        sources=merge_sources(*(r.sources for r in responses), analyst_read),
        analyst_model=run.request.model,
        final_answer=verdict.final_answer,
        final_answer_error=verdict.final_answer_error,
        usage=_usage([*rows, _usage_row(run.request.model, "analyst", verdict.runs)]),
        timings=Timings(
            members={o.model: o.seconds for o in outcomes}, analyst=verdict.seconds, total=round(run.clock.elapsed(), 3)
        ),
    )


def panel_failed(run: Run, outcomes: list[MemberOutcome], failed: list[FailedModel]) -> FusionResult:
    """The error result of a run where no member answered: the analyst is never asked."""
    reason, message = panel.panel_failure([o.error for o in outcomes])
    return FusionResult(
        status="error",
        run_id=run.run_id,
        error=message,
        failure_reason=reason,
        failed_models=failed,
        usage=_usage([_usage_row(o.model, "panel", [o]) for o in outcomes]),
        timings=Timings(members={o.model: o.seconds for o in outcomes}, total=round(run.clock.elapsed(), 3)),
    )


def _usage_row(model: str, role: Literal["panel", "analyst"], turns: list[MemberOutcome]) -> ModelUsage:
    total = sum((t.usage for t in turns), TokenUsage())
    served = next((t.served_by for t in reversed(turns) if t.served_by), None)
    requests = sum(t.requests for t in turns)
    return ModelUsage(model=model, role=role, requests=requests, served_by=served, **total.model_dump())


def _usage(rows: list[ModelUsage]) -> Usage:
    total = sum((TokenUsage(**r.model_dump(include=set(TokenUsage.model_fields))) for r in rows), TokenUsage())
    return Usage(models=rows, total=total)
