"""Question sets: the JSONL format, the public sets' CSV files, and the built-in sample.

A line of JSONL is one question: ``question``, ``answer`` (or ``choices`` and ``answer`` as a letter),
optional ``kind`` (``choice``, ``number``, ``short``, ``open``; guessed from the fields when absent), optional
``rubric`` (what an ``open`` answer must do), optional ``id``. The public sets are read from the CSV files
their publishers distribute (GPQA's ``gpqa_diamond.csv``, SimpleQA's ``simple_qa_test_set.csv``): the user
downloads them; nothing is fetched here.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Kind = Literal["choice", "number", "short", "open"]
SAMPLE = "sample"
"""The name that picks the built-in sample set instead of a file."""
LETTERS = "ABCDEFGHIJ"
MAX_QUESTIONS = 10_000


class QuestionSetError(ValueError):
    """A question file that cannot be read: the message names the file, the line and what to fix."""


class Question(BaseModel):
    """One question with a checkable answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = ""
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    kind: Kind | None = None
    choices: tuple[str, ...] = ()
    rubric: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Question:
        kind = self.kind or _guess(self)
        if kind == "choice":
            if not 2 <= len(self.choices) <= len(LETTERS):
                raise ValueError(f"a choice question needs 2 to {len(LETTERS)} choices")
            letter = self.answer.strip().upper()
            if len(letter) != 1 or letter not in LETTERS[: len(self.choices)]:
                raise ValueError(f"answer must be the letter of a choice, A to {LETTERS[len(self.choices) - 1]}")
        elif self.choices:
            raise ValueError(f"choices are for kind 'choice', not {kind!r}")
        if kind == "number":
            try:
                float(self.answer.replace(",", ""))
            except ValueError:
                raise ValueError(f"a number question's answer must be a number (got {self.answer!r})") from None
        if kind == "open" and not self.rubric:
            raise ValueError("an open question needs a rubric: what a correct answer must say or do")
        object.__setattr__(self, "kind", kind)
        return self

    @property
    def graded_by_model(self) -> bool:
        """Short and open answers need a grader model; choices and numbers are matched exactly."""
        return self.kind in ("short", "open")

    def prompt(self) -> str:
        """What every system is asked: the question, its choices, and how to state the answer so it can be checked."""
        if self.kind == "choice":
            listed = "\n".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(self.choices))
            ask = "End your answer with a last line of the form 'Answer: X', X the letter."
            return f"{self.question}\n\n{listed}\n\n{ask}"
        if self.kind == "number":
            return f"{self.question}\n\nEnd your answer with a last line of the form 'Answer: N', N the number alone."
        if self.kind == "short":
            return f"{self.question}\n\nAnswer briefly; end with a last line of the form 'Answer: ...'."
        return self.question


def _guess(q: Question) -> Kind:
    if q.choices:
        return "choice"
    if q.rubric:
        return "open"
    try:
        float(q.answer.replace(",", ""))
    except ValueError:
        return "short"
    return "number"


def load(source: str) -> list[Question]:
    """The questions of ``source``: ``sample``, a ``.jsonl`` file, or a GPQA or SimpleQA ``.csv`` file."""
    if source == SAMPLE:
        text = files("fusion_mcp.evals").joinpath("sample.jsonl").read_text(encoding="utf-8")
        return _jsonl(text, "the built-in sample set")
    path = Path(source).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise QuestionSetError(f"{source}: no such file (give a .jsonl or .csv file, or 'sample')") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise QuestionSetError(f"{source}: cannot be read: {exc}") from None
    if path.suffix.lower() == ".csv":
        questions = _csv(text, source)
    else:
        questions = _jsonl(text, source)
    if not questions:
        raise QuestionSetError(f"{source}: no questions in it")
    return questions


def _jsonl(text: str, where: str) -> list[Question]:
    questions: list[Question] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise QuestionSetError(f"{where}, line {n}: must be a JSON object, not {type(data).__name__}")
            question = Question.model_validate(data)
        except json.JSONDecodeError as exc:
            raise QuestionSetError(f"{where}, line {n}: not JSON ({exc.msg}, column {exc.colno})") from None
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg']}" for e in exc.errors())
            raise QuestionSetError(f"{where}, line {n}: {problems}") from None
        questions.append(question if question.id else question.model_copy(update={"id": f"q{n}"}))
        if len(questions) > MAX_QUESTIONS:
            raise QuestionSetError(f"{where}: more than {MAX_QUESTIONS} questions; split the file")
    _unique(questions, where)
    return questions


def _csv(text: str, where: str) -> list[Question]:
    rows = list(csv.DictReader(text.splitlines()))
    header = set(rows[0]) if rows else set()
    if {"Question", "Correct Answer", "Incorrect Answer 1"} <= header:
        return [_gpqa(row, n) for n, row in enumerate(rows, 2)]
    if {"problem", "answer"} <= header:
        return [
            Question(id=f"simpleqa-{n}", question=row["problem"], answer=row["answer"], kind="short")
            for n, row in enumerate(rows, 2)
        ]
    raise QuestionSetError(
        f"{where}: not a known CSV layout: GPQA has columns 'Question', 'Correct Answer', 'Incorrect Answer 1..3'; "
        "SimpleQA has 'problem' and 'answer'. Other sets: write JSONL (see docs/eval.md)"
    )


def _gpqa(row: dict[str, str], n: int) -> Question:
    """A GPQA row as a choice question, its four options in an order fixed by the question's text (so every
    system, and every re-run, sees the same letters; the right one is not always A)."""
    right = row["Correct Answer"].strip()
    options = [right, *(row.get(f"Incorrect Answer {i}", "").strip() for i in (1, 2, 3))]
    options = [o for o in options if o]
    seed = int.from_bytes(hashlib.sha256(row["Question"].encode()).digest()[:8], "big")
    random.Random(seed).shuffle(options)
    ident = row.get("Record ID") or f"gpqa-{n}"
    return Question(
        id=ident,
        question=row["Question"].strip(),
        choices=tuple(options),
        answer=LETTERS[options.index(right)],
        kind="choice",
    )


def _unique(questions: list[Question], where: str) -> None:
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise QuestionSetError(f"{where}: question id {q.id!r} appears twice; ids must be unique")
        seen.add(q.id)
