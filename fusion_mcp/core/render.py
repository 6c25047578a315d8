"""Markdown rendering of a :class:`FusionResult` for hosts that show text rather than structured content."""

from __future__ import annotations

from .budget import fit
from .models import GUEST_PREFIX, FusionResult, PanelResponse, TokenUsage
from .text import plural


def render(result: FusionResult, max_chars: int | None = None) -> str:
    """Analysis first, then each panel answer, then failures and a one-line cost summary.

    Within ``max_chars`` the answers are trimmed, evenly, each with a pointer to the run resource that
    keeps it whole (see :mod:`~fusion_mcp.core.budget`).
    """
    text = _render(result)
    if max_chars is None or len(text) <= max_chars:
        return text  # whole: rendered once, not once to be measured and again to be sent
    return _render(fit(result, max_chars, lambda r: len(_render(r))))


def _render(result: FusionResult) -> str:
    if result.status == "error":
        lines: list[str] = [f"**Fusion failed** ({result.failure_reason}): {result.error}"]
        if result.responses:  # a run lost midway keeps the answers it had
            lines.append("\n# Answers finished before the run ended")
            lines += _answers(result)
        lines += _failures(result)
        lines.append(f"\n_run {result.run_id}_")
        return "\n".join(lines)

    lines = []
    if result.status == "running":
        lines += _running(result)
    elif result.degraded:
        e = result.analysis_error
        lines.append(f"**Degraded: {e.message if e is not None else 'too few answers'}.** Read the answers below as ")
        lines[-1] += "single opinions, not as a panel's."
        lines.append("")
    if result.status != "running":
        lines.append(f"# Fusion analysis: {plural(len(result.responses), 'answer')}, analyst {result.analyst_model}")
    if result.analysis is not None:
        lines += _analysis(result)
    elif result.analysis_error is not None and not result.degraded:
        e = result.analysis_error
        lines.append(f"\n**No analysis** ({e.reason}): {e.message}. The panel's answers follow unanalysed.")
    if result.final_answer:
        lines.append("\n## Final answer (written by the analyst)\n")
        lines.append(result.final_answer)
    elif result.final_answer_error:
        lines.append(f"\n**No final answer**: {result.final_answer_error}. The analysis above stands.")
    lines.append("\n# Panel answers" if result.status != "running" else "\n# Answers finished so far")
    lines += _answers(result)
    if result.sources:
        lines.append("\n# Sources read by the panel and the analyst")
        lines += [f"- {s.title} <{s.url}>" if s.title else f"- <{s.url}>" for s in result.sources]
    lines += _failures(result)
    if result.status != "running":
        lines.append("\n" + cost_line(result))
    return "\n".join(lines)


def _analysis(result: FusionResult) -> list[str]:
    assert result.analysis is not None
    a = result.analysis
    lines = ["\n## Consensus"]
    lines += [f"- {p}" for p in a.consensus] or ["- (none)"]
    lines.append("\n## Contradictions")
    for c in a.contradictions:
        lines.append(f"- **{c.topic}**")
        lines += [f"  - {s.model}: {s.stance}" for s in c.stances]
    if not a.contradictions:
        lines.append("- (none)")
    lines.append("\n## Partial coverage")
    lines += [f"- {p.point} ({', '.join(p.models)})" for p in a.partial_coverage] or ["- (none)"]
    lines.append("\n## Unique insights")
    lines += [f"- {u.model}: {u.insight}" for u in a.unique_insights] or ["- (none)"]
    lines.append("\n## Blind spots")
    lines += [f"- {b}" for b in a.blind_spots] or ["- (none)"]
    return lines


def _answers(result: FusionResult) -> list[str]:
    lines = []
    for r in result.responses:
        seconds = result.timings.members.get(r.model)
        notes = [f"via {r.provider}"] if r.provider is not None else []
        notes += [f"{seconds:.1f} s"] if seconds is not None else []
        if r.model.startswith(GUEST_PREFIX):
            notes.append("your own answer, compared with the panel's")
        if r.truncated:
            notes.append(f"TRUNCATED: {r.truncated_reason}")
        lines.append(f"\n## {r.model}" + (f" ({', '.join(notes)})" if notes else ""))
        lines.append(r.content + _trim_note(r) + ("\n\n[... answer cut off here]" if r.truncated else ""))
    return lines


def _running(result: FusionResult) -> list[str]:
    finished = len(result.responses) + len(result.failed_models)
    waiting = ", ".join(result.pending or []) or f"the analyst {result.analyst_model}"
    return [
        f"**Fusion still running** (run {result.run_id}, {result.timings.total:.0f} s so far): "
        f"{finished} of {finished + len(result.pending or [])} panel members finished; still working: {waiting}.",
        "",
        result.instructions or "",
    ]


def _trim_note(response: PanelResponse) -> str:
    if not response.trimmed:
        return ""
    more = (response.full_chars or 0) - len(response.content)
    return (
        f"\n\n[... {more:,} more characters trimmed to fit the output budget; the whole answer is in resource "
        f"{response.full_answer_at}]"
    )


def _failures(result: FusionResult) -> list[str]:
    if not result.failed_models:
        return []
    lines = ["\n## Failed models"]
    for f in result.failed_models:
        # The status once: a provider's error already starts with it ("HTTP 404: ...").
        code = f" (HTTP {f.status_code})" if f.status_code and not f.error.startswith(f"HTTP {f.status_code}") else ""
        lines.append(f"- {f.model}{code}: {f.error}")
    return lines


def cost_line(result: FusionResult) -> str:
    total: TokenUsage = result.usage.total
    cost = f"${total.cost:.4f}" if total.cost is not None else "cost not reported"
    if result.cached:
        cost = f"from the cache, no new cost (first run {cost})"
    return (
        f"_{cost} · {total.prompt_tokens} prompt + {total.completion_tokens} completion tokens · "
        f"{result.timings.total:.1f} s · run {result.run_id}_"
    )
