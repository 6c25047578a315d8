"""What an eval says: the terminal table, ``summary.json`` and the accuracy-against-cost chart (SVG).

Accuracy comes with a 95 % Wilson score interval: with tens of questions it is wide, and the table says so
rather than ranking systems on a difference the sample cannot support.
"""

from __future__ import annotations

import math
from typing import Any
from xml.sax.saxutils import escape

from .runner import FUSION, Eval, Tally

Z95 = 1.959964


def wilson(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The 95 % Wilson score interval of ``correct`` out of ``total`` (0-1); (0, 1) with nothing to go on."""
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def summary(ev: Eval) -> dict[str, Any]:
    """``summary.json``: one entry per system (``name``, ``accuracy`` 0-1, ``correct``, ``total``, ``cost_usd``,
    ``median_s``, the interval), the grading's cost, where fusion beat or lost to its best member."""
    tallies = ev.tallies()
    systems = [_system(name, tally) for name, tally in tallies.items()]
    grading = [r.grading_cost_usd for r in ev.rows.values() if r.grading_cost_usd is not None]
    ungraded = sorted({f"{r.question_id} ({r.system}): {r.grade_error}" for r in ev.rows.values() if r.grade_error})
    return {
        "run_id": ev.plan.eval_id,
        "questions": len(ev.questions),
        "systems": systems,
        "grading_cost_usd": round(sum(grading), 10),
        "grader": ev.plan.grader,
        "versus_best_member": versus_best(ev),
        "ungraded": ungraded,
        "stopped": ev.stopped,
    }


def _system(name: str, tally: Tally) -> dict[str, Any]:
    low, high = wilson(tally.correct, tally.done)
    return {
        "name": name,
        "accuracy": round(tally.correct / tally.done, 4) if tally.done else None,
        "correct": tally.correct,
        "total": tally.done,
        "failed": tally.failed,
        "ungraded": tally.ungraded,
        "interval_95": [round(low, 4), round(high, 4)],
        "cost_usd": round(tally.cost, 10) if tally.cost_known else None,
        "median_s": tally.median_s,
    }


def versus_best(ev: Eval) -> dict[str, Any] | None:
    """The questions where fusion was right and the best member wrong, and the other way round."""
    tallies = ev.tallies()
    members = [(t.correct, name) for name, t in tallies.items() if name != FUSION and t.done]
    if not members or not tallies[FUSION].done:
        return None
    best = max(members)[1]
    won, lost = [], []
    for q in ev.questions:
        ours, theirs = ev.rows.get((q.id, FUSION)), ev.rows.get((q.id, best))
        if ours is None or theirs is None or ours.grade is None or theirs.grade is None:
            continue
        if ours.grade.correct and not theirs.grade.correct:
            won.append(q.id)
        elif theirs.grade.correct and not ours.grade.correct:
            lost.append(q.id)
    return {"best_member": best, "fusion_right_member_wrong": won, "member_right_fusion_wrong": lost}


def table(data: dict[str, Any]) -> str:
    """The terminal table of a summary."""
    rows = [("system", "accuracy", "95% interval", "correct", "cost", "median")]
    for s in data["systems"]:
        acc = "-" if s["accuracy"] is None else f"{100 * s['accuracy']:.1f}%"
        low, high = s["interval_95"]
        cost = "unknown" if s["cost_usd"] is None else f"${s['cost_usd']:.4f}"
        median = "-" if s["median_s"] is None else f"{s['median_s']:.1f} s"
        failed = f" ({s['failed']} failed)" if s["failed"] else ""
        rows.append(
            (s["name"], acc, f"{100 * low:.0f}-{100 * high:.0f}%", f"{s['correct']}/{s['total']}{failed}", cost, median)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    out = ["\n".join(lines)]
    vs = data.get("versus_best_member")
    if vs:
        out.append(
            f"fusion against its best member ({vs['best_member']}): right where it was wrong on "
            f"{_named(vs['fusion_right_member_wrong'])}; "
            f"wrong where it was right on {_named(vs['member_right_fusion_wrong'])}"
        )
    out.append(
        f"grading cost ${data['grading_cost_usd']:.4f}" + (f" (grader {data['grader']})" if data["grader"] else "")
    )
    if data["ungraded"]:
        out.append(f"not graded ({len(data['ungraded'])}): " + "; ".join(data["ungraded"][:5]))
    if data["stopped"]:
        out.append(f"stopped early: {data['stopped']}")
    return "\n".join(out)


def _named(ids: list[str]) -> str:
    if not ids:
        return "none"
    shown = ", ".join(ids[:8])
    return f"{len(ids)} ({shown}{', ...' if len(ids) > 8 else ''})"


def chart_svg(data: dict[str, Any], width: int = 720, height: int = 440) -> str:
    """Accuracy (with its interval) against cost per system, as a self-contained SVG image."""
    systems = [s for s in data["systems"] if s["accuracy"] is not None]
    left, right, top, bottom = 70, 30, 40, 60
    plot_w, plot_h = width - left - right, height - top - bottom
    costs = [s["cost_usd"] for s in systems if s["cost_usd"] is not None]
    top_cost = max(costs) * 1.15 if costs and max(costs) > 0 else 1.0

    def x(cost: float | None) -> float:
        return left + (0 if cost is None else cost / top_cost) * plot_w

    def y(acc: float) -> float:
        return top + (1 - acc) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15">'
        f"Accuracy against cost, eval {escape(str(data['run_id']))}</text>",
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="black"/>',
    ]
    for tick in range(0, 11, 2):
        acc = tick / 10
        parts.append(f'<line x1="{left - 4}" y1="{y(acc):.1f}" x2="{left + plot_w}" y2="{y(acc):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 8}" y="{y(acc) + 4:.1f}" text-anchor="end">{tick * 10}%</text>')
    for i in range(5):
        cost = top_cost * i / 4
        parts.append(f'<text x="{x(cost):.1f}" y="{top + plot_h + 18}" text-anchor="middle">${cost:.4g}</text>')
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 15}" text-anchor="middle">cost (USD, answers only)</text>'
    )
    parts.append(
        f'<text x="18" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 18 {top + plot_h / 2})">accuracy</text>'
    )
    for s in systems:
        cx = x(s["cost_usd"])
        low, high = s["interval_95"]
        colour = "#c0392b" if s["name"] == FUSION else "#2c6fbb"
        parts.append(
            f'<line x1="{cx:.1f}" y1="{y(low):.1f}" x2="{cx:.1f}" y2="{y(high):.1f}" '
            f'stroke="{colour}" stroke-width="2"/>'
        )
        parts.append(f'<circle cx="{cx:.1f}" cy="{y(s["accuracy"]):.1f}" r="6" fill="{colour}"/>')
        label = escape(s["name"]) + ("" if s["cost_usd"] is not None else " (cost unknown)")
        parts.append(f'<text x="{cx + 9:.1f}" y="{y(s["accuracy"]) - 8:.1f}">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
