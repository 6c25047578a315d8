"""``run_fusion``: the panel in parallel, then the analyst; every failure named in the result.

Each step is a function of the :class:`~fusion_mcp.engine.run.Run` in progress: collect the panel, sort its
outcomes, analyse, assemble the result. Progress goes out as :class:`ProgressEvent` values to a callback,
so nothing here imports ``mcp``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import anyio

from ..core.lenses import model_of
from ..core.models import (
    AnalysisError,
    FailedModel,
    FusionRequest,
    FusionResult,
    ModelUsage,
    PanelResponse,
    Timings,
    TokenUsage,
    Usage,
    new_run_id,
)
from ..core.progress import DeltaSink, EventSink, ProgressEvent
from ..providers.client import Provider
from . import panel
from .analyst import AnalystOutcome, run_analyst
from .material import Material
from .member import MemberOutcome
from .run import Clock, Progress, Run, RunTools, merge_sources

if TYPE_CHECKING:  # the web tools are loaded when first used (web.toolbox)
    from ..web.toolbox import WebBox

__all__ = ["EventSink", "ProgressEvent", "new_run_id", "run_fusion"]


async def run_fusion(
    request: FusionRequest,
    provider: Provider,
    *,
    on_event: EventSink | None = None,
    run_id: str | None = None,
    transcripts: dict[str, list[dict[str, Any]]] | None = None,
    web: WebBox | None = None,
    material: Material | None = None,
    outcomes: dict[str, MemberOutcome] | None = None,
    analyst_turns: list[MemberOutcome] | None = None,
    on_delta: DeltaSink | None = None,
) -> FusionResult:
    """Run one fusion. Upstream failures become result fields; only cancellation propagates.

    Web tools follow ``request.web_tools`` (see :class:`~fusion_mcp.engine.run.RunTools`); ``material`` is the call's
    files, read already; ``on_delta`` sees the members' text as it streams. Filled in as the run goes, when given:
    ``transcripts`` (every model's conversation, for the history), ``outcomes`` (each member's: what a run still
    going has finished, :func:`so_far`), ``analyst_turns`` (each analyst request: what a stopped run spent).
    The host's own answers (``request.guests``) join the panel's for the analyst, named ``guest:<label>``. With
    fewer panel answers than the quorum (``min_answers``, at most the panel's size), or a ``solo`` request, the
    analyst is not asked (the former is ``degraded``). ``request.deadline_s`` less the analyst's reserve cuts the
    members still running (each keeps what it streamed, truncated); the deadline cuts the analyst (no analysis).
    """
    clock = Clock.start(request)
    run = Run(
        run_id=run_id or new_run_id(),
        request=request,
        provider=provider,
        clock=clock,
        progress=Progress(request, on_event, clock, on_delta),
        tools=RunTools(request, web),
        transcripts=transcripts if transcripts is not None else {},
        material=material,
        outcomes=outcomes if outcomes is not None else {},
        analyst_turns=analyst_turns if analyst_turns is not None else [],
    )
    await run.progress.emit("started", model=request.model)
    collected = list((await panel.collect(run)).values())
    responses, failed = await panel.sort(run, collected)
    if not responses:
        return panel_failed(run, collected, failed)
    if request.solo:
        return assemble(run, collected, responses, failed, AnalystOutcome())
    answers = [*responses, *(PanelResponse(model=g.name, content=g.content) for g in request.guests)]
    if len(responses) < quorum(request):
        verdict = await skip_analysis(run, len(responses))
        return assemble(run, collected, answers, failed, verdict, degraded=True)
    verdict = await analyse(run, answers)
    return assemble(run, collected, answers, failed, verdict)


def _nowhere(model: str) -> str | None:
    """No provider named (no providers configured, or none known here)."""
    return None


def quorum(request: FusionRequest) -> int:
    """Panel answers needed for an analysis: ``min_answers``, but never more than the panel has members."""
    return min(request.min_answers, len(request.analysis_models))


async def skip_analysis(run: Run, answered: int) -> AnalystOutcome:
    """No analysis of too few answers: a lone survivor compared with nothing is one model dressed up as a panel."""
    size, needed = len(run.request.analysis_models), quorum(run.request)
    message = (
        f"only {answered} of {size} panel models answered and at least {needed} are needed (FUSION_MIN_ANSWERS): "
        "the analyst was not asked to compare them"
    )
    await run.progress.emit("analysis_skipped", model=run.request.model, answered=answered, error=message)
    return AnalystOutcome(error=AnalysisError(reason="too_few_answers", message=message))


async def analyse(run: Run, responses: list[PanelResponse]) -> AnalystOutcome:
    """The analyst's comparison of ``responses``, cut off at the run's deadline if it comes first."""
    request = run.request
    await run.progress.emit("analyst_started", model=request.model, answered=len(responses))
    started = anyio.current_time()
    verdict = AnalystOutcome(runs=run.analyst_turns)
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
            material=run.material.text_block() if run.material is not None else None,
            on_retry=run.progress.retry_reporter(request.model),
        )
    if scope.cancelled_caught:
        verdict.analysis = None
        verdict.error = AnalysisError(
            reason="deadline", message=f"the analyst did not finish within the {request.deadline_s:g} s deadline"
        )
    verdict.seconds = round(anyio.current_time() - started, 3)
    run.transcripts["analyst:labels"] = [{"label": label, "model": model} for label, model in verdict.labels.items()]
    error = verdict.error.message if verdict.error is not None else None
    await run.progress.emit("analyst_done", model=request.model, error=error, duration=verdict.seconds)
    return verdict


def assemble(
    run: Run,
    outcomes: list[MemberOutcome],
    responses: list[PanelResponse],
    failed: list[FailedModel],
    verdict: AnalystOutcome,
    *,
    degraded: bool = False,
) -> FusionResult:
    """The result of a run that had at least one answer (the analyst's row only when it was asked)."""
    analyst_read = run.tools.sources(run.tools.analyst, [a for turn in verdict.runs for a in turn.annotations])
    rows = [_usage_row(o.model, "panel", [o], run.provider.provider_of) for o in outcomes]
    if verdict.runs:
        rows.append(_usage_row(run.request.model, "analyst", verdict.runs, run.provider.provider_of))
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
        usage=_usage(rows),
        timings=Timings(
            members={o.model: o.seconds for o in outcomes},
            analyst=verdict.seconds if verdict.runs else None,
            total=round(run.clock.elapsed(), 3),
        ),
        degraded=degraded,
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
        usage=_usage([_usage_row(o.model, "panel", [o], run.provider.provider_of) for o in outcomes]),
        timings=Timings(members={o.model: o.seconds for o in outcomes}, total=round(run.clock.elapsed(), 3)),
    )


def so_far(
    request: FusionRequest,
    outcomes: dict[str, MemberOutcome],
    run_id: str,
    instructions: str,
    provider: Callable[[str], str | None] = _nowhere,
) -> FusionResult:
    """A run still going: the members that finished (answers whole, failures named), those still working.
    ``provider`` names the provider of a model id (``Settings.provider_name``)."""
    responses: list[PanelResponse] = []
    failed: list[FailedModel] = []
    pending: list[str] = []
    for entry in request.analysis_models:
        outcome = outcomes.get(entry)
        if outcome is None or not outcome.finished:
            pending.append(entry)
        elif outcome.error is None:
            responses.append(PanelResponse(model=entry, content=outcome.content, provider=provider(model_of(entry))))
        elif outcome.content.strip():
            why = outcome.error.message
            responses.append(
                PanelResponse(
                    model=entry,
                    content=outcome.content,
                    truncated=True,
                    truncated_reason=why,
                    provider=provider(model_of(entry)),
                )
            )
        else:
            error = outcome.error
            failed.append(
                FailedModel(
                    model=entry, error=error.message, status_code=error.status_code, provider=provider(model_of(entry))
                )
            )
    return FusionResult(
        status="running",
        run_id=run_id,
        responses=responses,
        failed_models=failed,
        analyst_model=request.model,
        pending=pending,
        instructions=instructions,
        timings=Timings(members={o.model: o.seconds for o in outcomes.values() if o.finished}),
    )


def spent_so_far(
    request: FusionRequest,
    outcomes: dict[str, MemberOutcome],
    analyst: list[MemberOutcome],
    provider: Callable[[str], str | None] = _nowhere,
) -> Usage:
    """What a run that was stopped had used by then: its panel members' and analyst's requests, finished or not."""
    rows = [_usage_row(o.model, "panel", [o], provider) for o in outcomes.values()]
    if analyst:
        rows.append(_usage_row(request.model, "analyst", analyst, provider))
    return _usage(rows)


def _usage_row(
    model: str, role: Literal["panel", "analyst"], turns: list[MemberOutcome], provider: Callable[[str], str | None]
) -> ModelUsage:
    total = TokenUsage.summed(t.usage for t in turns)
    served = next((t.served_by for t in reversed(turns) if t.served_by), None)
    requests = sum(t.requests for t in turns)
    name = provider(model_of(model))
    return ModelUsage(model=model, role=role, requests=requests, served_by=served, provider=name, **total.model_dump())


def _usage(rows: list[ModelUsage]) -> Usage:
    total = TokenUsage.summed(rows)
    return Usage(models=rows, total=total)
