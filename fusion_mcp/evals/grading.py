"""Scoring answers: exact match for choices and numbers, a grader model for short and open answers.

The grader reads the question, the reference answer (or rubric) and the answer to grade — never which
system wrote it — and replies in SimpleQA's three labels (correct / incorrect / not attempted) with a
reason. Every grade keeps its reason: the text matched, or what the grader said.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Literal

from pydantic import BaseModel

from .questions import LETTERS, Question

Label = Literal["correct", "incorrect", "not_attempted"]

GRADER_SYSTEM = """You grade answers to questions against a reference. You are impartial and strict about
facts, lenient about wording. Today's date is {today}."""

SHORT_TEMPLATE = """Grade the predicted answer to a question against the gold target.

- CORRECT: the predicted answer contains the gold target's meaning and contradicts nothing in it
  (wording, spelling variants, extra non-contradicting detail and hedging that still commits are fine).
- INCORRECT: it states something that contradicts the gold target, or commits to a wrong answer, even
  if hedged ("I think it is X", X wrong).
- NOT_ATTEMPTED: it does not commit to an answer (declines, says it does not know, asks for more
  information) and contradicts nothing.

<question>
{question}
</question>
<gold_target>
{target}
</gold_target>
<predicted_answer>
{answer}
</predicted_answer>

Say in one or two sentences why, then end with a last line exactly 'GRADE: A' (CORRECT), 'GRADE: B'
(INCORRECT) or 'GRADE: C' (NOT_ATTEMPTED)."""

RUBRIC_TEMPLATE = """Grade the answer to an open question against a rubric.

- CORRECT: it does what the rubric asks.
- INCORRECT: it misses what the rubric requires, or says something the rubric rules out.
- NOT_ATTEMPTED: it does not really answer (declines, or only asks for more information).

<question>
{question}
</question>
<rubric>
{rubric}
</rubric>
<answer>
{answer}
</answer>

Say in one to three sentences why, then end with a last line exactly 'GRADE: A' (CORRECT), 'GRADE: B'
(INCORRECT) or 'GRADE: C' (NOT_ATTEMPTED)."""

_GRADE = re.compile(r"GRADE:\s*\**\s*([ABC])\b", re.IGNORECASE)
_FINAL = re.compile(r"^\W*(?:final\s+)?answer\s*(?:is)?\s*[:：]\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_NUMBER = re.compile(r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
LABELS: dict[str, Label] = {"A": "correct", "B": "incorrect", "C": "not_attempted"}
REL_TOL = 1e-3
"""Numbers match within 0.1 % (or 1e-9 absolute): a rounding in the last digit of a stated result passes."""


class Grade(BaseModel):
    """How one answer was scored."""

    label: Label
    reason: str
    grader: str | None = None
    """The model that graded it; None for an exact match."""

    @property
    def correct(self) -> bool:
        return self.label == "correct"


def final_line(answer: str) -> str | None:
    """What follows the last ``Answer:`` in ``answer`` (markdown emphasis stripped), or None."""
    found = _FINAL.findall(answer.replace("**", "").replace("__", ""))
    return found[-1].strip() if found else None


def exact(question: Question, answer: str) -> Grade:
    """A choice or number question's grade, by matching the answer's stated final answer."""
    if not answer.strip():
        return Grade(label="not_attempted", reason="no answer")
    stated = final_line(answer)
    if question.kind == "choice":
        return _choice(question, answer, stated)
    return _number(question, answer, stated)


def _choice(question: Question, answer: str, stated: str | None) -> Grade:
    letters = LETTERS[: len(question.choices)]
    picked = None
    if stated is not None:
        match = re.match(rf"\(?([{letters}])\)?(?:\W|$)", stated.strip().upper())
        picked = match.group(1) if match else None
    if picked is None:  # no 'Answer: X' line: a lone letter at the very end ("... so (C)")
        match = re.search(rf"\(?\b([{letters}])\b\)?\W*$", answer.strip())
        picked = match.group(1) if match else None
    if picked is None:
        return Grade(label="not_attempted", reason="no choice letter found ('Answer: X' missing)")
    right = question.answer.strip().upper()
    label: Label = "correct" if picked == right else "incorrect"
    return Grade(label=label, reason=f"chose {picked}, the answer is {right}")


def _number(question: Question, answer: str, stated: str | None) -> Grade:
    where = stated if stated is not None else answer
    numbers = _NUMBER.findall(where)
    if not numbers:
        return Grade(label="not_attempted", reason="no number found ('Answer: N' missing)")
    text = numbers[0] if stated is not None else numbers[-1]
    value = float(text.replace(",", "").replace("−", "-"))
    target = float(question.answer.replace(",", ""))
    close = math.isclose(value, target, rel_tol=REL_TOL, abs_tol=1e-9)
    return Grade(label="correct" if close else "incorrect", reason=f"stated {text}, the answer is {question.answer}")


def grader_prompt(question: Question, answer: str) -> str:
    """What the grader is asked: the question, the reference and the answer, and nothing of who wrote it."""
    if question.kind == "open":
        return RUBRIC_TEMPLATE.format(question=question.question, rubric=question.rubric, answer=answer)
    return SHORT_TEMPLATE.format(question=question.question, target=question.answer, answer=answer)


def parse_grade(text: str, grader: str) -> Grade:
    """The grader's reply as a grade; a reply with no ``GRADE:`` line is a grading failure (ValueError)."""
    found = _GRADE.findall(text)
    if not found:
        raise ValueError("the grader's reply has no 'GRADE: A|B|C' line")
    reason = _GRADE.sub("", text).strip() or "(no reason given)"
    return Grade(label=LABELS[found[-1].upper()], reason=_squash(reason), grader=grader)


def _squash(text: str, limit: int = 600) -> str:
    flat = " ".join(unicodedata.normalize("NFC", text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
