"""The analyst's reply, parsed and validated without a run: JSON forms, schema errors, labels mapped back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fusion_mcp.engine.analyst import AnalysisInvalid, analysis_schema, labels, parse_analysis

PANEL = {"Model A": "a/x", "Model B": "b/y", "Model C": "c/z"}


def reply(**fields: Any) -> str:
    empty: dict[str, Any] = {
        "consensus": [],
        "contradictions": [],
        "partial_coverage": [],
        "unique_insights": [],
        "blind_spots": [],
    }
    return json.dumps(empty | fields)


def test_labels_and_the_schema_allow_only_the_panel() -> None:
    assert labels(3) == ["Model A", "Model B", "Model C"]
    schema = analysis_schema(labels(2))
    assert schema["required"] == ["consensus", "contradictions", "partial_coverage", "unique_insights", "blind_spots"]
    assert schema["properties"]["unique_insights"]["items"]["properties"]["model"]["enum"] == ["Model A", "Model B"]
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("wrap", ["{}", "```json\n{}\n```", "```\n{}\n```", "  \n{}\n  "])
def test_plain_and_fenced_json_are_read(wrap: str) -> None:
    analysis = parse_analysis(wrap.replace("{}", reply(consensus=["x"])), PANEL)
    assert analysis.consensus == ["x"]


def test_labels_map_back_to_model_ids_in_every_spelling_and_unknown_ones_are_dropped() -> None:
    text = reply(
        contradictions=[
            {"topic": "t", "stances": [{"model": "Model A", "stance": "yes"}, {"model": "model b", "stance": "no"}]},
            {"topic": "ghosts only", "stances": [{"model": "Model Z", "stance": "?"}]},
        ],
        partial_coverage=[{"models": ["C", "c/z", "Model Z"], "point": "p"}, {"models": ["Model Q"], "point": "gone"}],
        unique_insights=[{"model": "b/y", "insight": "i"}, {"model": "nobody", "insight": "dropped"}],
    )
    analysis = parse_analysis(text, PANEL)
    assert [(c.topic, [(s.model, s.stance) for s in c.stances]) for c in analysis.contradictions] == [
        ("t", [("a/x", "yes"), ("b/y", "no")])
    ]
    assert [(p.models, p.point) for p in analysis.partial_coverage] == [(["c/z"], "p")]
    assert [(u.model, u.insight) for u in analysis.unique_insights] == [("b/y", "i")]


@pytest.mark.parametrize(
    ("text", "reason", "message"),
    [
        ("", "judge_empty_completion", "the analyst returned an empty completion"),
        ("  \n ", "judge_empty_completion", "the analyst returned an empty completion"),
        ("I think they agree.", "judge_not_valid_json", "the analyst's reply is not valid JSON: Expecting value"),
        (
            json.dumps({"consensus": []}),
            "judge_schema_mismatch",
            "the analyst's JSON does not match the schema: contradictions: Field required",
        ),
        (
            reply(consensus="one string"),
            "judge_schema_mismatch",
            "the analyst's JSON does not match the schema: consensus: Input should be a valid list",
        ),
        (
            reply(verdict="extra key"),
            "judge_schema_mismatch",
            "the analyst's JSON does not match the schema: verdict: Extra inputs are not permitted",
        ),
        ("[1, 2]", "judge_schema_mismatch", "the analyst's JSON does not match the schema: reply: Input should be"),
    ],
)
def test_what_is_wrong_with_a_reply_is_named(text: str, reason: str, message: str) -> None:
    with pytest.raises(AnalysisInvalid) as info:
        parse_analysis(text, PANEL)
    assert info.value.reason == reason and info.value.message.startswith(message)
