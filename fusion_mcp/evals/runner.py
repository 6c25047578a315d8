"""Running an eval: every question to each panel member alone and to fusion, each answer graded.

Every request goes through the one request path (:meth:`FusionService.run`): a member alone is a solo run
of a panel of one (the same messages and tools it has inside fusion, no analyst); fusion is a run with the
analyst's final answer (as ``fusion-mcp ask``), or the analysis then a ``--writer`` model's answer from it;
a grader's verdict is a solo run of the grader without tools. So every call is admitted, capped, counted in
the usage rows and recorded like any other run, under the eval's own principal (``eval:<id>``).

Spending: ``max_cost`` is a :class:`~fusion_mcp.engine.daily_cap.Budget` over everything the eval's principal
spent since the eval began, reserved before each run exactly as the daily cap is, so concurrent runs cannot
pass it together. Resuming: each run's id is fixed by (eval, question, system, step), the state is kept in
``results.jsonl`` line by line, and a run the store has recorded as done is read back, not paid again.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import BaseModel, Field, ValidationError

from ..config import Settings
from ..core.lenses import split_entry
from ..core.models import FusionArgs, FusionRequest, FusionResult
from ..engine.admission import FusionRefused, prepare
from ..engine.catalogue_check import check_catalogue
from ..engine.daily_cap import Budget
from ..engine.service import FusionService
from ..store import StoreError
from .grading import GRADER_SYSTEM, Grade, exact, grader_prompt, parse_grade
from .questions import Question

FUSION = "fusion"
"""The name of the fused system in results and summaries (members go by their model ids)."""
GRADER_TOKENS = 800
"""The grader's reply is a sentence or three and a label."""
WRITER_SYSTEM = """You write the final answer to a user's question from a panel of models' answers and an
analyst's comparison of them (consensus, contradictions, partial coverage, unique insights, blind spots).
Weigh the analysis, resolve contradictions where the evidence allows, and answer the question directly.
Today's date is {today}."""

StepKind = Literal["answer", "write", "grade"]


class EvalPlan(BaseModel):
    """What an eval runs, kept beside its results so ``--resume`` runs exactly the same thing."""

    eval_id: str
    source: str
    panel: tuple[str, ...]
    analyst: str
    writer: str | None = None
    grader: str | None = None
    max_cost: float | None = None
    concurrency: int = 4
    created: float
    max_tool_calls: int | None = None
    questions_sha256: str = ""
    """The questions it asks (:func:`fingerprint`): a resumed eval must ask the same, in the same order."""

    @property
    def principal(self) -> str:
        return f"eval:{self.eval_id}"

    @property
    def systems(self) -> tuple[str, ...]:
        return (*self.panel, FUSION)


class Answered(BaseModel):
    """One system's answer to one question, with its grade: a line of ``results.jsonl``."""

    question_id: str
    system: str
    run_ids: list[str] = Field(default_factory=list)
    answer: str | None = None
    error: str | None = None
    failure_reason: str | None = None
    cost_usd: float | None = None
    seconds: float | None = None
    grade: Grade | None = None
    grade_error: str | None = None
    grading_cost_usd: float | None = None

    @property
    def settled(self) -> bool:
        """Done: graded, or failed for a reason a resume would not change."""
        return self.grade is not None or (self.error is not None and self.failure_reason != "cost_limit")


class CapReached(Exception):
    """A run was refused by ``--max-cost``: the eval stops starting runs."""


def fingerprint(questions: list[Question]) -> str:
    """A digest of the questions, in order: run ids are fixed by position, so a resume needs the same list."""
    text = "\n".join(q.model_dump_json() for q in questions)
    return hashlib.sha256(text.encode()).hexdigest()


def new_eval_id() -> str:
    return f"ev{secrets.token_hex(5)}"


@dataclass
class Tally:
    """A system's running score, for the live display and the summary."""

    done: int = 0
    correct: int = 0
    failed: int = 0
    ungraded: int = 0
    """Answers the grader could not grade: left out of ``done`` (listed in the summary), their cost counted."""
    cost: float = 0.0
    cost_known: bool = True
    seconds: list[float] = field(default_factory=list)

    def add(self, row: Answered) -> None:
        if row.grade is None and row.error is None:
            self.ungraded += 1
            self.cost += row.cost_usd or 0.0
            return
        self.done += 1
        self.correct += 1 if row.grade is not None and row.grade.correct else 0
        self.failed += 1 if row.error is not None else 0
        if row.cost_usd is None and row.error is None:
            self.cost_known = False
        self.cost += row.cost_usd or 0.0
        if row.seconds is not None and row.error is None:
            self.seconds.append(row.seconds)

    @property
    def median_s(self) -> float | None:
        return round(statistics.median(self.seconds), 3) if self.seconds else None


Listener = Callable[[Answered], Awaitable[None]]


class Eval:
    """One eval's state on disk (``out``: ``eval.json``, ``results.jsonl``) and the runs that fill it."""

    def __init__(self, plan: EvalPlan, questions: list[Question], out: Path, settings: Settings) -> None:
        self.plan = plan
        self.questions = questions
        self.out = out
        self.settings = settings
        self.rows: dict[tuple[str, str], Answered] = {}
        self._index = {q.id: i for i, q in enumerate(questions)}
        self.stopped: str | None = None
        """Why the eval stopped before the end (``--max-cost``), or None."""

    # -- state on disk --------------------------------------------------------------------------------------

    @property
    def results_path(self) -> Path:
        return self.out / "results.jsonl"

    def save_plan(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "eval.json").write_text(self.plan.model_dump_json(indent=2) + "\n", encoding="utf-8")

    def load_results(self) -> None:
        """The lines written so far; the last line of a (question, system) wins (a resumed run rewrites it)."""
        if not self.results_path.exists():
            return
        for line in self.results_path.read_text(encoding="utf-8").splitlines():
            try:
                row = Answered.model_validate_json(line)
            except ValidationError:
                continue  # a line cut by the interruption: that answer is looked up in the store instead
            self.rows[(row.question_id, row.system)] = row

    def _keep(self, row: Answered) -> None:
        self.rows[(row.question_id, row.system)] = row
        self._append(row)

    def _append(self, row: Answered) -> None:
        with self.results_path.open("a", encoding="utf-8") as sink:
            sink.write(row.model_dump_json() + "\n")
            sink.flush()
            os.fsync(sink.fileno())

    # -- requests -------------------------------------------------------------------------------------------

    def run_id(self, question: Question, system: str, step: StepKind) -> str:
        """Fixed by (eval, question, system, step), so a resumed eval finds what it already paid for."""
        qi = self._index[question.id]
        si = self.plan.systems.index(system)
        return f"fus_{self.plan.eval_id}_{qi:05d}_{si}{step[0]}"

    def request(self, question: Question, system: str) -> FusionRequest:
        """The run a system's answer to ``question`` takes (refusals name the argument, as ``ask`` does)."""
        if system == FUSION:
            call = FusionArgs(
                prompt=question.prompt(),
                analysis_models=list(self.plan.panel),
                model=self.plan.analyst,
                max_tool_calls=self.plan.max_tool_calls,
                final_answer=self.plan.writer is None,
            )
            return prepare(call, self.settings, depth=self.settings.depth)
        call = FusionArgs(
            prompt=question.prompt(),
            analysis_models=[system],
            model=split_entry(system)[0],
            max_tool_calls=self.plan.max_tool_calls,
        )
        return prepare(call, self.settings, depth=self.settings.depth).model_copy(update={"solo": True})

    def writer_request(self, question: Question, fused: FusionResult) -> FusionRequest:
        assert self.plan.writer is not None
        analysis = fused.analysis.model_dump_json(indent=1) if fused.analysis is not None else "(no analysis)"
        head = f"{question.prompt()}\n\n<analysis>\n{analysis}\n</analysis>\n\n<panel_answers>\n"
        # The whole must fit FUSION_MAX_PROMPT_CHARS, as any call's: long answers are cut evenly, said in place.
        room = max(self.settings.max_prompt_chars - len(head) - 200 * (len(fused.responses) + 1), 0)
        share = room // max(len(fused.responses), 1)
        answers = "\n\n".join(
            f"<answer model={r.model!r}>\n{_cut(r.content, share)}\n</answer>" for r in fused.responses
        )
        prompt = f"{head}{answers}\n</panel_answers>"
        return self._solo(self.plan.writer, prompt[: self.settings.max_prompt_chars], WRITER_SYSTEM, web=True)

    def grader_request(self, question: Question, answer: str) -> FusionRequest:
        assert self.plan.grader is not None
        return self._solo(self.plan.grader, grader_prompt(question, answer), GRADER_SYSTEM, web=False)

    def _solo(self, model: str, prompt: str, system: str, *, web: bool) -> FusionRequest:
        call = FusionArgs(prompt=prompt, analysis_models=[model], model=model, max_tool_calls=self.plan.max_tool_calls)
        request = prepare(call, self.settings, depth=self.settings.depth)
        update: dict[str, Any] = {"solo": True, "system_prompt": system}
        if not web:
            update |= {"web_tools": "off", "max_completion_tokens": min(GRADER_TOKENS, request.max_completion_tokens)}
        return request.model_copy(update=update)

    # -- the worst case -------------------------------------------------------------------------------------

    async def worst_case(self, service: FusionService) -> float | None:
        """Every run still to make at its catalogue worst case (unknown model ids refused here, before any
        spending); None when the provider lists no prices for one of the models."""
        total: float | None = 0.0
        filler = "x" * int(self.settings.max_completion_tokens * 3.5)  # an answer as long as the cap allows
        # The writer reads at most FUSION_MAX_PROMPT_CHARS (the answers are cut to fit): one worst case for all.
        writer = None
        if self.plan.writer is not None:
            writer = self._solo(self.plan.writer, "x" * self.settings.max_prompt_chars, WRITER_SYSTEM, web=True)
        for question in self.questions:
            for system in self.plan.systems:
                row = self.rows.get((question.id, system))
                if row is not None and row.settled:
                    continue
                requests = [self.request(question, system)]
                if system == FUSION and writer is not None:
                    requests.append(writer)
                if question.graded_by_model:
                    requests.append(self.grader_request(question, filler))
                for request in requests:  # every one checked: an unpriced model must not hide an unknown one
                    checked = await check_catalogue(service.catalogue, request, None)
                    estimate = checked.cost_estimate
                    total = None if total is None or estimate is None else total + estimate
        return total

    # -- running --------------------------------------------------------------------------------------------

    async def run(self, service: FusionService, on_row: Listener | None = None) -> None:
        """Every (question, system) not settled yet, ``concurrency`` at a time; stops starting new ones once
        ``--max-cost`` refuses a run (those in flight finish)."""
        budget = None
        if self.plan.max_cost is not None:
            budget = Budget(usd=self.plan.max_cost, since=self.plan.created, name="--max-cost")
        limiter = anyio.Semaphore(self.plan.concurrency)
        todo = [
            (q, s)
            for q in self.questions
            for s in self.plan.systems
            if not ((row := self.rows.get((q.id, s))) is not None and row.settled)
        ]

        async def one(question: Question, system: str) -> None:
            async with limiter:
                if self.stopped is not None:
                    return
                try:
                    row = await self._answer(service, question, system, budget)
                except CapReached as reached:
                    self.stopped = str(reached)
                    return
                self._keep(row)
                if on_row is not None:
                    await on_row(row)

        async with anyio.create_task_group() as tg:
            for question, system in todo:
                tg.start_soon(one, question, system)

    async def _run(
        self, service: FusionService, request: FusionRequest, run_id: str, budget: Budget | None
    ) -> FusionResult:
        """A run, or its recorded result when an earlier attempt of this eval finished it (paid once)."""
        if service.store is not None:
            try:
                record = await service.store.run(run_id, self.plan.principal)
            except StoreError:
                record = None
            if record is not None:
                try:
                    found = FusionResult.model_validate(record["result"])
                except (ValidationError, KeyError, TypeError):
                    found = None
                if found is not None and found.status == "ok":
                    return found
        result = await service.run(request, run_id=run_id, principal=self.plan.principal, fresh=True, budget=budget)
        if (
            result.status == "error"
            and result.failure_reason == "cost_limit"
            and budget is not None
            and "--max-cost" in (result.error or "")
        ):
            raise CapReached(result.error or "--max-cost reached")
        return result

    async def _answer(self, service: FusionService, question: Question, system: str, budget: Budget | None) -> Answered:
        row = self.rows.get((question.id, system))
        if row is None or row.answer is None:
            row = await self._ask(service, question, system, budget)
            if row.answer is not None and question.graded_by_model:
                self._keep(row)  # paid for: on disk before its grading can be stopped or interrupted
        if row.answer is not None and row.grade is None:
            row = await self._grade(service, question, row, budget)
        return row

    async def _ask(self, service: FusionService, question: Question, system: str, budget: Budget | None) -> Answered:
        run_id = self.run_id(question, system, "answer")
        row = Answered(question_id=question.id, system=system, run_ids=[run_id])
        try:
            result = await self._run(service, self.request(question, system), run_id, budget)
        except FusionRefused as refused:
            return row.model_copy(update={"error": refused.message, "failure_reason": refused.reason})
        cost, seconds = result.usage.total.cost, result.timings.total
        if result.status != "ok":
            return row.model_copy(
                update={
                    "error": result.error,
                    "failure_reason": result.failure_reason,
                    "cost_usd": cost,
                    "seconds": seconds,
                }
            )
        if system != FUSION:
            answer = result.responses[0].content if result.responses else None
            error = None if answer else (result.failed_models[0].error if result.failed_models else "no answer")
        elif self.plan.writer is None:
            answer, error = result.final_answer, None
            if not answer:
                why = result.final_answer_error or (result.analysis_error.message if result.analysis_error else "")
                answer, error = None, f"no final answer: {why or 'the analyst wrote none'}"
        else:
            write_id = self.run_id(question, system, "write")
            written = await self._run(service, self.writer_request(question, result), write_id, budget)
            row.run_ids.append(write_id)
            cost = _add(cost, written.usage.total.cost)
            seconds = (seconds or 0) + (written.timings.total or 0)
            answer = written.responses[0].content if written.status == "ok" and written.responses else None
            error = None if answer else f"the writer failed: {written.error or 'no answer'}"
        return row.model_copy(update={"answer": answer, "error": error, "cost_usd": cost, "seconds": seconds})

    async def _grade(
        self, service: FusionService, question: Question, row: Answered, budget: Budget | None
    ) -> Answered:
        assert row.answer is not None
        if not question.graded_by_model:
            return row.model_copy(update={"grade": exact(question, row.answer)})
        if self.plan.grader is None:
            return row.model_copy(update={"grade_error": "no grader model (--grader)"})
        run_id = self.run_id(question, row.system, "grade")
        try:
            result = await self._run(service, self.grader_request(question, row.answer), run_id, budget)
        except FusionRefused as refused:
            return row.model_copy(update={"grade_error": refused.message})
        update: dict[str, Any] = {"grading_cost_usd": result.usage.total.cost, "run_ids": [*row.run_ids, run_id]}
        reply = result.responses[0].content if result.status == "ok" and result.responses else None
        if reply is None:
            return row.model_copy(update=update | {"grade_error": f"the grader failed: {result.error or 'no reply'}"})
        try:
            return row.model_copy(update=update | {"grade": parse_grade(reply, self.plan.grader)})
        except ValueError as exc:
            return row.model_copy(update=update | {"grade_error": str(exc)})

    # -- the outcome ----------------------------------------------------------------------------------------

    def tallies(self) -> dict[str, Tally]:
        found = {system: Tally() for system in self.plan.systems}
        for (_, system), row in self.rows.items():
            if system in found:
                found[system].add(row)
        return found


def _cut(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and a note that the rest was cut."""
    return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} more characters cut to fit]"


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a + b, 10)
