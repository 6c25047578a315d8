"""The text block of a result: what it shows, and how answers are trimmed evenly to the output budget."""

from __future__ import annotations

from fusion_mcp.models import (
    Analysis,
    AnalysisError,
    FailedModel,
    FusionResult,
    PanelResponse,
    Source,
    Timings,
)
from fusion_mcp.render import MIN_SHARE, render

EMPTY = Analysis(consensus=[], contradictions=[], partial_coverage=[], unique_insights=[], blind_spots=[])


def result(*contents: str, **fields: object) -> FusionResult:
    responses = [PanelResponse(model=f"m/{i}", content=c) for i, c in enumerate(contents)]
    base: dict[str, object] = {"status": "ok", "run_id": "fus_1", "analysis": EMPTY, "analyst_model": "j/x"}
    return FusionResult.model_validate(base | {"responses": responses} | fields)


def test_an_ok_result_shows_analysis_answers_sources_failures_and_cost() -> None:
    text = render(
        result(
            "first answer",
            sources=[Source(url="https://a.test/", title="A"), Source(url="https://b.test/")],
            failed_models=[FailedModel(model="m/9", error="HTTP 502: down", status_code=502)],
            timings=Timings(members={"m/0": 1.25}, total=2.0),
        )
    )
    assert text.startswith("# Fusion analysis: 1 answer, analyst j/x\n\n## Consensus\n- (none)")
    assert "\n## m/0 (1.2 s)\nfirst answer" in text
    assert "- A <https://a.test/>\n- <https://b.test/>" in text
    assert "- m/9 (HTTP 502): HTTP 502: down" in text
    assert text.endswith("_cost not reported · 0 prompt + 0 completion tokens · 2.0 s · run fus_1_")


def test_a_missing_analysis_and_a_failed_final_answer_are_said() -> None:
    text = render(
        result(
            "a",
            "b",
            analysis=None,
            analysis_error=AnalysisError(reason="deadline", message="the analyst did not finish"),
        )
    )
    assert "**No analysis** (deadline): the analyst did not finish. The panel's answers follow unanalysed." in text
    failed = render(result("a", final_answer_error="HTTP 500: analyst down"))
    assert "**No final answer**: HTTP 500: analyst down. The analysis above stands." in failed


def test_an_error_result_names_its_reason() -> None:
    text = render(FusionResult.failure("fus_2", "cost_limit", "estimated worst-case cost $1 exceeds the cap"))
    assert text == "**Fusion failed** (cost_limit): estimated worst-case cost $1 exceeds the cap\n\n_run fus_2_"


def test_answers_are_trimmed_evenly_within_the_budget_with_a_pointer_to_the_whole() -> None:
    long = result(*("word " * 2000 for _ in range(4)), analyst_model="j/x")
    whole = render(long)
    assert len(whole) > 40_000
    trimmed = render(long, 8000)
    assert len(trimmed) <= 8000
    notes = trimmed.count("more characters trimmed to fit the output budget")
    assert notes == 4 and trimmed.count("resource fusion://runs/fus_1") == 4
    shares = [len(part.split("\n\n[... ")[0]) for part in trimmed.split("\n## m/")[1:]]
    assert max(shares) - min(shares) <= 8  # even, give or take the word boundary


def test_a_budget_too_small_still_keeps_the_minimum_share_of_every_answer() -> None:
    text = render(result(*("x" * 5000 for _ in range(8))), 2000)
    assert text.count("x" * MIN_SHARE) == 8 and "x" * (MIN_SHARE + 1) not in text


def test_within_the_budget_nothing_is_trimmed() -> None:
    small = result("short", "answers")
    assert render(small, 24_000) == render(small)
