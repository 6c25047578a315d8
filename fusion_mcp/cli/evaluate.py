"""``fusion-mcp eval``: a panel against each of its members on the user's own questions.

Parses and checks everything first (the question file, the model ids against the catalogue, the worst
case), asks before spending (or takes ``--yes``), then runs with a live block of one row per system (plain
lines when stderr is not a terminal), and writes ``results.jsonl``, ``summary.json`` and ``chart.svg``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from ..config import Settings
from ..config.presets import PRESETS
from ..core.lenses import split_entry
from ..engine.admission import FusionRefused
from ..engine.service import FusionService
from ..evals.questions import SAMPLE, QuestionSetError, load
from ..evals.report import chart_svg, summary, table
from ..evals.runner import FUSION, Answered, Eval, EvalPlan, fingerprint, new_eval_id
from ..store import default_home
from .eval_args import DEFAULT_CONCURRENCY

EXIT_FAILED = 1
EXIT_CONFIG = 2
CLEAR_LINE = "\x1b[2K"


def _say(message: str) -> None:
    print(f"fusion-mcp: eval: {message}", file=sys.stderr, flush=True)


def _index(settings: Settings) -> Path:
    """Where each eval's folder is noted, so ``--resume ID`` finds it from anywhere."""
    return (settings.home or default_home()) / "evals"


def _plan(settings: Settings, args: argparse.Namespace) -> tuple[EvalPlan, Path] | None:
    if args.resume is not None:
        noted = _index(settings) / f"{args.resume}.path"
        out = args.out or (Path(noted.read_text(encoding="utf-8").strip()) if noted.is_file() else None)
        if out is None or not (out / "eval.json").is_file():
            _say(f"no eval {args.resume!r} to resume (give its folder with --out)")
            return None
        plan = _read_plan(out)
        if plan is None:
            return None
        if plan.eval_id != args.resume:
            _say(f"{out} holds eval {plan.eval_id}, not {args.resume}")
            return None
        if args.questions not in (None, plan.source):
            _say(f"eval {plan.eval_id} ran {plan.source!r}, not {args.questions!r}; leave QUESTIONS out to resume it")
            return None
        fixed = [flag for flag, value in _FIXED_BY_PLAN.items() if getattr(args, value) is not None]
        if fixed:
            _say(
                f"{', '.join(fixed)}: eval {plan.eval_id} goes on as it began (its panel, analyst, writer, grader and "
                "tool budget); only --max-cost and --concurrency may change on --resume"
            )
            return None
        update: dict[str, object] = {}
        if args.max_cost is not None:
            update["max_cost"] = args.max_cost  # a new cap for the whole eval: what it spent so far counts
        if args.concurrency != DEFAULT_CONCURRENCY:
            update["concurrency"] = args.concurrency
        return plan.model_copy(update=update), out
    if args.questions is None:
        _say(f"give a question file (.jsonl or .csv) or '{SAMPLE}', or --resume RUN")
        return None
    if args.panel is not None and args.preset is not None:
        _say("--panel and --preset both choose the panel: give one")
        return None
    panel, analyst = settings.models_for(args.preset)
    if args.panel is not None:
        panel = tuple(p.strip() for p in args.panel.split(",") if p.strip())
    analyst = args.analyst or analyst
    eval_id = new_eval_id()
    source = args.questions if args.questions == SAMPLE else str(Path(args.questions).resolve())
    plan = EvalPlan(
        eval_id=eval_id,
        source=source,
        panel=panel,
        analyst=analyst,
        writer=args.writer,
        grader=args.grader or _default_grader(panel, analyst, args.writer),
        max_cost=args.max_cost,
        concurrency=args.concurrency,
        created=time.time(),
        max_tool_calls=args.max_tool_calls,
    )
    out = (args.out or Path.cwd() / f"fusion-eval-{eval_id}").resolve()
    if out.exists() and not out.is_dir():
        _say(f"--out {out} is a file, not a folder: choose another --out")
        return None
    if (out / "eval.json").exists():
        held = _read_plan(out)
        if held is not None:
            held_id = held.eval_id
            _say(f"{out} already holds eval {held_id}: go on with it (--resume {held_id}) or choose another --out")
        return None
    return plan, out


_FIXED_BY_PLAN = {
    "--panel": "panel",
    "--preset": "preset",
    "--analyst": "analyst",
    "--writer": "writer",
    "--grader": "grader",
    "--max-tool-calls": "max_tool_calls",
}
"""Flags a resumed eval cannot change: its answers so far were had under them."""


def _read_plan(out: Path) -> EvalPlan | None:
    """``out/eval.json``, or None with the reason said (unreadable, damaged, or not an eval's)."""
    path = out / "eval.json"
    try:
        return EvalPlan.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        _say(f"{path} cannot be read: {exc}")
    except ValidationError:
        _say(
            f"{path} is not an eval's plan (damaged, or written by something else): start a new eval with another --out"
        )
    return None


def _default_grader(panel: tuple[str, ...], analyst: str, writer: str | None) -> str | None:
    """A model of the presets that answers nothing in this eval: a grader grading itself is not a grader."""
    busy = {split_entry(e)[0] for e in panel} | {analyst, writer}
    for models, judge in PRESETS.values():
        for model in (judge, *models):
            if split_entry(model)[0] not in busy:
                return split_entry(model)[0]
    return None


async def run_eval(settings: Settings, args: argparse.Namespace) -> int:
    planned = _plan(settings, args)
    if planned is None:
        return EXIT_CONFIG
    plan, out = planned
    try:
        questions = load(plan.source)
    except QuestionSetError as exc:
        _say(str(exc))
        return EXIT_CONFIG
    digest = fingerprint(questions)
    if args.resume is None:
        plan = plan.model_copy(update={"questions_sha256": digest})
    elif plan.questions_sha256 != digest:
        _say(
            f"the questions of {plan.source} changed since eval {plan.eval_id} began: a resume asks the same "
            "questions in the same order (start a new eval for the new ones)"
        )
        return EXIT_CONFIG
    if plan.grader is None and any(q.graded_by_model for q in questions):
        _say("short and open questions need a grader that is not under test: name one with --grader")
        return EXIT_CONFIG
    ev = Eval(plan, questions, out, settings)
    ev.load_results()
    async with FusionService.open(settings) as service:
        try:
            worst = await ev.worst_case(service)
        except FusionRefused as refused:
            _say(refused.message)
            return EXIT_CONFIG
        todo = sum(1 for q in questions for s in plan.systems if not _settled(ev, q.id, s))
        said = "unknown (the provider lists no prices for a model)" if worst is None else f"${worst:.4f}"
        cap = f"; --max-cost ${plan.max_cost:g} stops it before that" if plan.max_cost is not None else ""
        _say(
            f"{plan.eval_id}: {len(questions)} questions x {len(plan.systems)} systems "
            f"({', '.join(plan.systems)}), {todo} answers to get; worst case {said}{cap}"
        )
        if todo and not args.yes and not _confirmed():
            _say("nothing spent: confirm at the prompt, or pass --yes")
            return EXIT_CONFIG
        try:
            ev.save_plan()
            index = _index(settings)
            index.mkdir(parents=True, exist_ok=True)
            (index / f"{plan.eval_id}.path").write_text(str(out) + "\n", encoding="utf-8")
        except OSError as exc:
            _say(f"cannot write the eval's files: {exc}")
            return EXIT_CONFIG
        _say(f"results in {out} (resume with: fusion-mcp eval --resume {plan.eval_id})")
        display = Display(sys.stderr, ev)
        display.draw()
        await ev.run(service, display.on_row)
        display.close()
    data = summary(ev)
    (out / "summary.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (out / "chart.svg").write_text(chart_svg(data), encoding="utf-8")
    print(table(data), flush=True)
    print(f"\n{out / 'results.jsonl'}\n{out / 'summary.json'}\n{out / 'chart.svg'}", flush=True)
    return EXIT_FAILED if ev.stopped else 0


def _settled(ev: Eval, question_id: str, system: str) -> bool:
    row = ev.rows.get((question_id, system))
    return row is not None and row.settled


def _confirmed() -> bool:
    if not sys.stdin.isatty():
        return False
    print("Go ahead? [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


class Display:
    """One row per system (answers done, correct so far, cost so far), redrawn in place on a terminal; a plain
    line per answer otherwise."""

    def __init__(self, stream: TextIO, ev: Eval) -> None:
        self._stream = stream
        self._ev = ev
        self._live = stream.isatty()
        self._drawn = 0
        self._total = len(ev.questions)

    def rows(self) -> list[str]:
        lines = []
        width = max(len(s) for s in self._ev.plan.systems)
        for name, t in self._ev.tallies().items():
            cost = f"${t.cost:.4f}" + ("" if t.cost_known else "+")
            lines.append(
                f"{name.ljust(width)}  {t.done:>4}/{self._total} answered  {t.correct:>4} correct  "
                f"{t.failed:>3} failed  {cost}"
            )
        return lines

    def draw(self) -> None:
        if not self._live:
            return
        # Cut to the terminal's width less one: a wrapped row would leave its tail behind at the next redraw.
        width = max(shutil.get_terminal_size().columns - 1, 20)
        text = "".join(f"{CLEAR_LINE}{line[:width]}\n" for line in self.rows())
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self._stream.write(up + text)
        self._stream.flush()
        self._drawn = len(self._ev.plan.systems)

    async def on_row(self, row: Answered) -> None:
        if self._live:
            self.draw()
            return
        verdict = row.grade.label if row.grade is not None else (row.grade_error or row.error or "?")
        mark = "fusion" if row.system == FUSION else row.system
        cost = "" if row.cost_usd is None else f" ${row.cost_usd:.4f}"
        print(f"[{row.question_id}] {mark}: {verdict}{cost}", file=self._stream, flush=True)

    def close(self) -> None:
        if self._live:
            self.draw()
