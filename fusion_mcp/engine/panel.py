"""The panel step: every member at once until the cut-off, then their outcomes sorted into answers and failures."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import anyio

from ..core.errors import HTTPStatusError, UpstreamError
from ..core.lenses import LENS_NOTE, split_entry
from ..core.models import FailedModel, FailureReason, FusionRequest, PanelResponse
from .material import Material
from .member import MemberOutcome, run_member
from .run import Run

PANEL_SYSTEM = """You are one of several expert AI models answering the same question independently; an
analyst will compare the answers. Answer the user's question thoroughly and accurately on your own.
Say where you are uncertain and why, name the assumptions you make, and prefer concrete, checkable
statements. Today's date is {today}."""

WEB_NOTE = """You can search the web and read pages: do so when the question depends on facts you are
not sure of, recent events, or documents you have not seen, and name the pages you relied on."""


def panel_messages(
    request: FusionRequest,
    fence_note: str | None = None,
    web: bool = False,
    *,
    entry: str | None = None,
    material: Material | None = None,
    images: bool = False,
) -> list[dict[str, Any]]:
    """A member's opening messages. ``entry`` (``model#lens``) adds its lens to the system prompt; ``material``
    comes first in the user message, the same for every member (see :mod:`fusion_mcp.engine.material`)."""
    question = request.prompt
    if request.context:
        question = f"<context>\n{request.context}\n</context>\n\n{request.prompt}"
    today = datetime.now(UTC).date().isoformat()
    system = (request.system_prompt or PANEL_SYSTEM).format(today=today)
    lens = split_entry(entry)[1] if entry is not None else None
    if lens is not None:
        system += "\n" + LENS_NOTE.format(name=lens, text=request.lenses[lens])
    if web:
        system += "\n" + WEB_NOTE
    if fence_note:
        system += "\n" + fence_note
    user: str | list[dict[str, Any]] = question
    if material is not None and material.files:
        user = [*material.parts(images), {"type": "text", "text": question}]
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


async def collect(run: Run) -> dict[str, MemberOutcome]:
    """Run every member concurrently until it answers, fails, or the cut-off ends it.

    A member cut off keeps, in its outcome, the text it had streamed (``finished`` stays False).
    """
    request = run.request
    outcomes = run.outcomes
    outcomes.update({model: MemberOutcome(model=model) for model in request.analysis_models})

    async def member(model: str) -> None:
        outcome = outcomes[model]
        run.transcripts[model] = panel_messages(
            request,
            run.tools.fence_note(model),
            run.tools.offered(model),
            entry=model,
            material=run.material,
            images=split_entry(model)[0] in request.image_models,
        )
        await run_member(
            run.provider,
            split_entry(model)[0],
            run.transcripts[model],
            max_tool_calls=request.max_tool_calls,
            max_completion_tokens=request.max_completion_tokens,
            temperature=request.temperature,
            toolbox=run.tools.member_box(model),
            stream=request.stream,
            extra=_with_reasoning(run.tools.extra(model), request.reasoning),
            on_tool=run.progress.tool_reporter(model),
            outcome=outcome,
            deadline=run.clock.cutoff,
            on_retry=run.progress.retry_reporter(model),
            on_delta=run.progress.delta_reporter(model),
        )
        if outcome.error is None:
            answered = sum(1 for o in outcomes.values() if o.finished and o.error is None)
            await run.progress.emit("member_answered", model=model, answered=answered, content=outcome.content)
        else:
            error = outcome.error
            await run.progress.emit("member_failed", model=model, error=error.message, status_code=error.status_code)

    with anyio.move_on_at(run.clock.cutoff):
        async with anyio.create_task_group() as tg:
            for model in outcomes:
                tg.start_soon(member, model)
    return outcomes


def _with_reasoning(extra: dict[str, Any] | None, reasoning: dict[str, Any] | None) -> dict[str, Any] | None:
    """A member's extra request fields, with the call's ``reasoning`` when it has one."""
    return {**(extra or {}), "reasoning": reasoning} if reasoning else extra


async def sort(run: Run, outcomes: Iterable[MemberOutcome]) -> tuple[list[PanelResponse], list[FailedModel]]:
    """Answers (whole, or truncated with what was written) and failures (nothing usable), in panel order."""
    responses: list[PanelResponse] = []
    failed: list[FailedModel] = []
    for outcome in outcomes:
        model, error = outcome.model, outcome.error
        sources = run.tools.sources(run.tools.boxes.get(model), outcome.annotations)
        provider = run.provider.provider_of(split_entry(model)[0])
        cut = not outcome.finished
        if cut:
            await _cut_off(run, outcome)
        if error is None and not cut:
            responses.append(PanelResponse(model=model, content=outcome.content, sources=sources, provider=provider))
        elif outcome.content.strip():
            why = error.message if error is not None else f"cut off at the deadline after {outcome.seconds:.1f} s"
            responses.append(
                PanelResponse(
                    model=model,
                    content=outcome.content,
                    truncated=True,
                    truncated_reason=why,
                    sources=sources,
                    provider=provider,
                )
            )
        elif error is not None:
            failed.append(
                FailedModel(model=model, error=error.message, status_code=error.status_code, provider=provider)
            )
        else:
            length = f"{round(run.request.deadline_s, 1):g} s run" if run.request.deadline_s is not None else "run"
            why = f"no answer within the deadline ({outcome.seconds:.1f} s into a {length})"
            failed.append(FailedModel(model=model, error=why, status_code=None, provider=provider))
    return responses, failed


async def _cut_off(run: Run, outcome: MemberOutcome) -> None:
    """A member still working at the cut-off keeps what it had streamed so far."""
    outcome.content = outcome.partial
    outcome.seconds = round(run.clock.elapsed(), 3)
    kept = len(outcome.content) if outcome.content.strip() else 0
    await run.progress.emit("member_cut", model=outcome.model, kept=kept)


def panel_failure(errors: list[UpstreamError | None]) -> tuple[FailureReason, str]:
    """Why no member answered: the one cause they all share when there is one, else ``all_panels_failed``.

    ``errors`` has one entry per member, None for a member the deadline cut off with nothing written.
    """
    found = [e for e in errors if e is not None]
    if len(found) < len(errors):
        return "all_panels_failed", "no panel model answered within the deadline"
    statuses = [e.status_code for e in found]
    summary = "; ".join(dict.fromkeys(e.message for e in found))
    if any(s == 402 for s in statuses):
        return "insufficient_credits", f"the provider reports insufficient credits: {summary}"
    if all(s == 429 for s in statuses):
        return "rate_limited", f"every panel model was rate limited: {summary}"
    if all(isinstance(e, HTTPStatusError) and e.code == "model_not_found" for e in found):
        return "invalid_model", f"no panel model id is known to the provider: {summary}"
    return "all_panels_failed", f"all panel models failed: {summary}"
