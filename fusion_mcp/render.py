"""Markdown rendering of a :class:`FusionResult` for hosts that show text rather than structured content."""

from __future__ import annotations

from .models import GUEST_PREFIX, FusionResult, TokenUsage
from .text import plural

MIN_SHARE = 400
"""Characters every answer keeps however tight the budget: enough to tell what it says."""


def render(result: FusionResult, max_chars: int | None = None) -> str:
    """Analysis first, then each panel answer, then failures and a one-line cost summary.

    Within ``max_chars`` the answers are trimmed, evenly, with a pointer to the whole text (structured
    content keeps every answer whole; the run resource keeps the transcripts).
    """
    text = _render(result, None)
    if max_chars is None or len(text) <= max_chars or not result.responses:
        return text
    fixed = len(_render(result, 0)) + len(_trim_note(10**9, result.run_id)) * len(result.responses)
    share = max(MIN_SHARE, (max_chars - fixed) // len(result.responses))
    return _render(result, share)


def _render(result: FusionResult, share: int | None) -> str:
    if result.status == "error":
        lines = [f"**Fusion failed** ({result.failure_reason}): {result.error}"]
        if result.responses:  # a run lost midway keeps the answers it had
            lines.append("\n# Answers finished before the run ended")
            lines += _answers(result, share)
        lines += _failures(result)
        lines.append(f"\n_run {result.run_id}_")
        return "\n".join(lines)

    lines: list[str] = []
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
        a = result.analysis
        lines.append("\n## Consensus")
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
    elif result.analysis_error is not None and not result.degraded:
        e = result.analysis_error
        lines.append(f"\n**No analysis** ({e.reason}): {e.message}. The panel's answers follow unanalysed.")
    if result.final_answer:
        lines.append("\n## Final answer (written by the analyst)\n")
        lines.append(result.final_answer)
    elif result.final_answer_error:
        lines.append(f"\n**No final answer**: {result.final_answer_error}. The analysis above stands.")
    lines.append("\n# Panel answers" if result.status != "running" else "\n# Answers finished so far")
    lines += _answers(result, share)
    if result.sources:
        lines.append("\n# Sources read by the panel and the analyst")
        lines += [f"- {s.title} <{s.url}>" if s.title else f"- <{s.url}>" for s in result.sources]
    lines += _failures(result)
    if result.status != "running":
        lines.append("\n" + cost_line(result))
    return "\n".join(lines)


def _answers(result: FusionResult, share: int | None) -> list[str]:
    lines = []
    for r in result.responses:
        seconds = result.timings.members.get(r.model)
        notes = [f"{seconds:.1f} s"] if seconds is not None else []
        if r.model.startswith(GUEST_PREFIX):
            notes.append("your own answer, compared with the panel's")
        if r.truncated:
            notes.append(f"TRUNCATED: {r.truncated_reason}")
        lines.append(f"\n## {r.model}" + (f" ({', '.join(notes)})" if notes else ""))
        lines.append(
            _answer(r.content, share, result.run_id) + ("\n\n[... answer cut off here]" if r.truncated else "")
        )
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


def _answer(content: str, share: int | None, run_id: str) -> str:
    if share is None or len(content) <= share:
        return content
    if share == 0:
        return ""
    kept = content[:share].rsplit(" ", 1)[0] if " " in content[:share] else content[:share]
    return kept + _trim_note(len(content) - len(kept), run_id)


def _trim_note(trimmed: int, run_id: str) -> str:
    return (
        f"\n\n[... {trimmed:,} more characters trimmed to fit the output budget; the whole answer is in the "
        f"structured result and in resource fusion://runs/{run_id}]"
    )


def _failures(result: FusionResult) -> list[str]:
    if not result.failed_models:
        return []
    lines = ["\n## Failed models"]
    for f in result.failed_models:
        code = f" (HTTP {f.status_code})" if f.status_code else ""
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
