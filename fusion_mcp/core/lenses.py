"""Lenses: one model, several ways of looking at a question.

A panel entry ``model#lens`` runs ``model`` with the lens's text added to its system prompt. A lens changes
what the model looks for (risks, practice, evidence...), not who it pretends to be, so one local model
under three lenses gives three answers that differ for a reason (same-model ensembles, as in Self-MoA).
Entries are split at the last ``#``: model ids never contain one. The same model may appear several
times under different lenses; a repeated entry is refused.

Built-in lenses are below; ``FUSION_LENSES`` in the config file adds more (or redefines one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .limits import MAX_PANEL
from .model_ids import check_model_id

SEPARATOR = "#"
LENS_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
MAX_LENS_CHARS = 4000
PANEL_ENTRIES_RULE = f"1-{MAX_PANEL} unique panel entries, each a model id or model#lens (a model under a lens)"
LENSES_RULE = (
    "a table of lens name -> instructions (names of lower-case letters, digits, _ and -, up to 32 characters; "
    f"instructions of 1-{MAX_LENS_CHARS} characters); a JSON object in the environment"
)

BUILTIN: dict[str, str] = {
    "skeptic": (
        "Look hardest for what could be wrong: claims that are widely repeated but false, hidden assumptions, "
        "missing evidence, failure modes, edge cases, and the conditions under which the obvious answer stops "
        "holding. Say how sure you are of each key claim and what would change your mind. Do not soften a "
        "problem to be agreeable."
    ),
    "pragmatist": (
        "Focus on what works in practice for someone who has to act on the answer: the concrete recommendation, "
        "the steps, the costs, and the trade-offs that matter under real constraints (time, money, people, "
        "maintenance). Prefer the simplest option that meets the need, and say when a theoretically better "
        "option is not worth its cost."
    ),
    "researcher": (
        "Focus on evidence: what is established, by whom and how recently; keep measured facts, expert "
        "consensus and opinion apart. Where the answer depends on facts that change or that you are unsure "
        "of, check them (with the web tools when you have them) and name your sources. Say where the evidence "
        "is thin or conflicting."
    ),
    "contrarian": (
        "Make the strongest honest case against the answer most experts would give first: the option usually "
        "dismissed, the overlooked alternative, the reason the consensus may not apply here. Concede where the "
        "mainstream view holds, so the reader sees exactly what the default answer leaves out."
    ),
    "architect": (
        "Look at the structure of the problem: components, interfaces, dependencies, and how each option holds "
        "up as the system grows, changes or fails. Name the long-term consequences (coupling, operability, "
        "migration paths, security boundaries) and which decisions are hard to reverse."
    ),
}
"""What each built-in lens tells the model to look for."""

SELF_LENSES = ("skeptic", "pragmatist", "researcher")
"""The ``self`` preset: the analyst's model under these three lenses (for an endpoint with one model)."""

LENS_NOTE = "Lens for this answer ({name}): {text}"


def split_entry(entry: str) -> tuple[str, str | None]:
    """``("model", "lens")`` for ``model#lens``, ``("model", None)`` for a plain model id."""
    model, sep, lens = entry.rpartition(SEPARATOR)
    return (model, lens) if sep else (entry, None)


def model_of(entry: str) -> str:
    """The model id a panel entry runs (what goes into the request's ``model`` field)."""
    return split_entry(entry)[0]


def check_entry(value: Any, lenses: Mapping[str, str]) -> str:
    """One panel entry, normalised; ``ValueError`` says what is wrong with it."""
    if not isinstance(value, str) or SEPARATOR not in value:
        return check_model_id(value)
    model, lens = split_entry(value.strip())
    if not model.strip():
        raise ValueError(f"{value[:60]!r} has no model id before '#'")
    lens = (lens or "").strip()
    if lens not in lenses:
        raise ValueError(f"unknown lens {lens[:40]!r} in {value[:60]!r} (known lenses: {', '.join(sorted(lenses))})")
    return f"{check_model_id(model)}{SEPARATOR}{lens}"


def check_panel(value: Any, lenses: Mapping[str, str]) -> tuple[str, ...]:
    """A panel: 1-8 unique entries (model ids, or models under known lenses), as a list or comma-separated."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple):
        raise ValueError("not a list of model ids")
    entries = tuple(check_entry(v, lenses) for v in value)
    if not 1 <= len(entries) <= MAX_PANEL:
        raise ValueError(f"{len(entries)} entries given")
    duplicates = sorted({e for e in entries if entries.count(e) > 1})
    if duplicates:
        raise ValueError(f"{', '.join(duplicates)} appears more than once")
    return entries


def check_lenses(value: Any) -> dict[str, str]:
    """``FUSION_LENSES``: a mapping of lens names to instructions (a TOML table, or JSON text from the environment)."""
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError("not a JSON object") from None
    if not isinstance(value, dict):
        raise ValueError("not a table of lenses")
    lenses: dict[str, str] = {}
    for name, text in value.items():
        if not isinstance(name, str) or not LENS_NAME.fullmatch(name):
            raise ValueError(f"bad lens name {str(name)[:40]!r}")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_LENS_CHARS:
            raise ValueError(f"the instructions of lens {name!r} are empty or too long")
        lenses[name] = " ".join(text.split())
    return lenses


def self_panel(analyst: str) -> tuple[str, ...]:
    """The ``self`` preset's panel: the analyst's model under :data:`SELF_LENSES`."""
    return tuple(f"{analyst}{SEPARATOR}{lens}" for lens in SELF_LENSES)
