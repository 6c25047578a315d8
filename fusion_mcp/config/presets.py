"""The named panels: ``quality``, ``budget``, ``fast`` (a fixed panel and analyst each) and ``self``."""

from __future__ import annotations

from typing import Literal, get_args

Preset = Literal["quality", "budget", "fast", "self"]
FixedPreset = Literal["quality", "budget", "fast"]
QUALITY_PANEL = ("~anthropic/claude-opus-latest", "~openai/gpt-latest", "~google/gemini-pro-latest")
PRESETS: dict[FixedPreset, tuple[tuple[str, ...], str]] = {
    # OpenRouter's Quality panel: three frontier families, the strongest analyst.
    "quality": (QUALITY_PANEL, "~anthropic/claude-opus-latest"),
    # Small models of the same three families cost a fraction; a frontier analyst still does the comparing,
    # which is where a weak model would miss contradictions.
    "budget": (
        ("~anthropic/claude-haiku-latest", "~openai/gpt-mini-latest", "~google/gemini-flash-latest"),
        "~anthropic/claude-sonnet-latest",
    ),
    # Latency-homogeneous: two fast models (a run waits for its slowest member) and a fast strong analyst.
    "fast": (("~google/gemini-flash-latest", "~anthropic/claude-haiku-latest"), "~anthropic/claude-sonnet-latest"),
}
"""The presets with a fixed panel. ``self`` has none: it is the analyst's model under three lenses, for an
endpoint that serves one model (see :mod:`fusion_mcp.core.lenses`)."""
PRESET_NAMES: tuple[Preset, ...] = get_args(Preset)
assert set(get_args(Preset)) == {*PRESETS, "self"}, "every preset but self needs a panel"
