"""The text block of a result, and the output budget: answers trimmed evenly in both blocks, each marked."""

from __future__ import annotations

import json

from fusion_mcp.core.budget import MIN_SHARE, fit_json, fit_json_data, json_size, shares
from fusion_mcp.core.models import (
    Analysis,
    AnalysisError,
    FailedModel,
    FusionResult,
    PanelResponse,
    Source,
    Timings,
)
from fusion_mcp.core.render import render

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
            failed_models=[
                FailedModel(model="m/9", error="HTTP 502: down", status_code=502),
                FailedModel(model="m/8", error="the answer was cut off", status_code=200),
            ],
            timings=Timings(members={"m/0": 1.25}, total=2.0),
        )
    )
    assert text.startswith("# Fusion analysis: 1 answer, analyst j/x\n\n## Consensus\n- (none)")
    assert "\n## m/0 (1.2 s)\nfirst answer" in text
    assert "- A <https://a.test/>\n- <https://b.test/>" in text
    # The status said once: in the error when it starts with it, before it otherwise.
    assert "- m/9: HTTP 502: down\n- m/8 (HTTP 200): the answer was cut off" in text
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
    notes = trimmed.count("more characters trimmed to fit the output budget; the whole answer is in resource")
    assert notes == 4 and trimmed.count("resource fusion://runs/fus_1]") == 4
    shares = [len(part.split("\n\n[... ")[0]) for part in trimmed.split("\n## m/")[1:]]
    assert max(shares) - min(shares) <= 8  # even, give or take the word boundary


def test_a_budget_too_small_still_keeps_the_minimum_share_of_every_answer() -> None:
    text = render(result(*("x" * 5000 for _ in range(8))), 2000)
    assert text.count("x" * MIN_SHARE) == 8 and "x" * (MIN_SHARE + 1) not in text


def test_within_the_budget_nothing_is_trimmed() -> None:
    small = result("short", "answers")
    assert render(small, 24_000) == render(small)


def test_short_answers_keep_everything_and_leave_their_share_to_the_long_ones() -> None:
    assert shares([100, 5000, 5000], 6100, 400) == [100, 3000, 3000]
    assert shares([100, 5000, 9000], 3000, 400) == [100, 1450, 1450]
    assert shares([5000, 5000], 100, 400) == [400, 400]  # the floor, whatever the room
    text = render(result("tiny", "y " * 4000, "z " * 4000), 6000)
    assert "\ntiny\n" in text and len(text) <= 6000
    assert text.count("more characters trimmed") == 2


def test_structured_content_is_trimmed_evenly_and_marked_the_analysis_never() -> None:
    analysis = EMPTY.model_copy(update={"consensus": ["a long point " * 100]})
    # Quotes, newlines and non-ASCII cost more than a character once in JSON: the budget counts the JSON.
    whole = result(*('"quoted"\nline ü ' * 600 for _ in range(4)), analysis=analysis)
    assert json_size(whole) > 40_000
    fitted = fit_json(whole, 12_000)
    assert json_size(fitted) <= 12_000
    assert fitted.analysis == analysis
    data = fitted.to_json()
    for original, response in zip(whole.responses, data["responses"], strict=True):
        assert response["trimmed"] is True and response["full_chars"] == len(original.content)
        assert response["full_answer_at"] == "fusion://runs/fus_1"
        assert original.content.startswith(response["content"]) and len(response["content"]) >= MIN_SHARE
    lengths = [len(json.dumps(r["content"])) for r in data["responses"]]
    assert max(lengths) - min(lengths) <= 100  # even, give or take the word boundary
    assert fit_json(result("short"), 12_000).to_json()["responses"] == [{"model": "m/0", "content": "short"}]


def test_structured_content_that_fits_is_the_result_itself_and_one_that_does_not_is_the_fitted_one() -> None:
    whole = result("x" * 30_000, "y" * 30_000)
    assert fit_json_data(whole, None) == whole.to_json() == fit_json_data(whole, json_size(whole))
    assert fit_json_data(whole, 12_000) == fit_json(whole, 12_000).to_json() != whole.to_json()
