"""The host's own answers at the table (``answers``), and the quorum (``FUSION_MIN_ANSWERS``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mcp import Client

from fusion_mcp.config import load_settings
from fusion_mcp.engine.admission import ARGUMENT_RULES
from fusion_mcp.mcp_server.server import create_server
from tests.conftest import ANALYST, PANEL, sim_env
from tests.fakes.provider_sim import DEFAULT_USAGE, ProviderSim, Reply, schema_labels
from tests.helpers import TOOL, fenced_answers, structured, text

pytestmark = pytest.mark.anyio
A, B, C = PANEL
DRAFT = "My draft: use a write-through cache with a 60 s TTL."
OTHER = "Agent two says: no cache at all, the database is fast enough."


async def call(sim: ProviderSim, args: dict[str, Any], **env: str):
    server = create_server(load_settings(environ=sim_env(sim, **env)))
    progress: list[str] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    async with Client(server) as client:
        result = await client.call_tool(TOOL, args, progress_callback=on_progress)
    return result, progress


def analyst_requests(sim: ProviderSim) -> list[Any]:
    return [r for r in sim.requests if "response_format" in r.body]


async def test_answers_reach_the_analyst_anonymously_and_come_back_as_guests(sim: ProviderSim) -> None:
    answers = [{"label": "draft", "content": DRAFT}, {"label": "agent 2", "content": OTHER}]
    result, _ = await call(sim, {"prompt": "How should we cache?", "answers": answers})
    data = structured(result)
    assert data["status"] == "ok"
    # No panel request carries them.
    for request in sim.requests:
        if "response_format" not in request.body:
            assert DRAFT not in json.dumps(request.body) and OTHER not in json.dumps(request.body)
    # The analyst sees five answers under the same anonymous labels, in a shuffled order, nothing naming the guests.
    (analysis,) = analyst_requests(sim)
    prompt = analysis.body["messages"][1]["content"]
    assert schema_labels(analysis.body) == ["Model A", "Model B", "Model C", "Model D", "Model E"]
    shown = fenced_answers(prompt)
    assert [label for label, _, _ in shown] == ["Model A", "Model B", "Model C", "Model D", "Model E"]
    expected = [DRAFT, OTHER, *(f"Answer from {m}: the answer is 42." for m in PANEL)]
    assert sorted(text for _, _, text in shown) == sorted(expected)
    guests = {DRAFT: "guest:draft", OTHER: "guest:agent 2"}
    model_of = {label: guests.get(t) or t.removeprefix("Answer from ").split(":")[0] for label, _, t in shown}
    assert "guest" not in json.dumps(analysis.body) and "draft" not in prompt.replace(DRAFT, "")
    assert "Compare these 5 answers" in prompt
    # Mapped back as guest:<label> wherever a model id would be, and listed with the responses.
    assert [r["model"] for r in data["responses"]] == [*PANEL, "guest:draft", "guest:agent 2"]
    assert data["responses"][3] == {"model": "guest:draft", "content": DRAFT}
    stances = [s["model"] for s in data["analysis"]["contradictions"][0]["stances"]]
    assert stances == [model_of[label] for label in sorted(model_of)]
    assert data["analysis"]["unique_insights"][0]["model"] == model_of["Model E"]
    # They cost nothing and take no time: no usage row, no timing.
    assert [u["model"] for u in data["usage"]["models"]] == [*PANEL, ANALYST]
    assert set(data["timings"]["members"]) == set(PANEL)
    assert "## guest:draft (your own answer, compared with the panel's)" in text(result)


@pytest.mark.parametrize(
    ("answers", "detail"),
    [
        ([{"label": f"a{i}", "content": "x"} for i in range(5)], None),  # the tool's schema says at most 4
        ([{"label": "a", "content": "x"}, {"label": "a", "content": "y"}], "label 'a' appears more than once"),
        ([{"label": "a", "content": "   "}], "the answer labelled 'a' is empty or too long (3 characters)"),
        ([{"label": "", "content": "x"}], "label '' is empty, too long or has other characters"),
        ([{"label": "a/b", "content": "x"}], "label 'a/b' is empty, too long or has other characters"),
        (
            [{"label": "a", "content": "x" * 100_001}],
            "the answer labelled 'a' is empty or too long (100,001 characters)",
        ),
    ],
)
async def test_bad_answers_are_refused_before_anything_is_sent(
    sim: ProviderSim, answers: list[dict[str, str]], detail: str | None
) -> None:
    result, _ = await call(sim, {"prompt": "q", "answers": answers})
    assert result.is_error and sim.requests == []
    if detail is not None:
        data = structured(result)
        assert data["failure_reason"] == "invalid_arguments"
        assert data["error"] == f"invalid argument answers: must be {ARGUMENT_RULES['answers']} ({detail})"


async def test_one_answer_of_three_is_degraded_and_the_analyst_is_not_asked(sim: ProviderSim) -> None:
    sim.script(B, Reply(status=500, error_message="down"))
    sim.script(C, Reply(status=403, error_message="gone"))
    result, progress = await call(sim, {"prompt": "q"})
    data = structured(result)
    assert not result.is_error and analyst_requests(sim) == []
    message = (
        "only 1 of 3 panel models answered and at least 2 are needed (FUSION_MIN_ANSWERS): the analyst was not "
        "asked to compare them"
    )
    assert data | {"run_id": "-", "timings": {}} == {
        "status": "ok",
        "run_id": "-",
        "analysis_error": {"reason": "too_few_answers", "message": message},
        "responses": [{"model": A, "content": f"Answer from {A}: the answer is 42."}],
        "failed_models": [
            {"model": B, "error": "HTTP 500: down", "status_code": 500},
            {"model": C, "error": "HTTP 403: gone", "status_code": 403},
        ],
        "sources": [],
        "analyst_model": ANALYST,
        "usage": {
            "models": [
                {"model": m, "role": "panel", "requests": n, "served_by": s, **u}
                for m, n, s, u in (
                    (A, 1, "anthropic/claude-opus-20261101", _usage(1)),
                    (B, 0, None, _usage(0)),  # failed requests report no usage
                    (C, 0, None, _usage(0)),
                )
            ],
            "total": _usage(1),
        },
        "timings": {},
        "cached": False,
        "degraded": True,
    }
    assert data["timings"]["analyst"] is None
    rendered = text(result)
    assert rendered.startswith(f"**Degraded: {message}.** Read the answers below as single opinions")
    assert "**No analysis**" not in rendered
    assert progress[-1] == f"no analysis: {message}"


async def test_a_higher_quorum_and_guests_that_do_not_count_toward_it(sim: ProviderSim) -> None:
    sim.script(C, Reply(status=500))
    answers = [{"label": "draft", "content": DRAFT}]
    result, _ = await call(sim, {"prompt": "q", "answers": answers}, FUSION_MIN_ANSWERS="3")
    data = structured(result)
    assert data["degraded"] is True and data["analysis_error"]["reason"] == "too_few_answers"
    assert data["analysis_error"]["message"].startswith("only 2 of 3 panel models answered and at least 3 are needed")
    assert [r["model"] for r in data["responses"]] == [A, B, "guest:draft"]
    assert analyst_requests(sim) == []


async def test_the_quorum_never_exceeds_the_panel(sim: ProviderSim) -> None:
    # A panel of one is always analysed; a panel of two with FUSION_MIN_ANSWERS=3 needs both.
    result, _ = await call(sim, {"prompt": "q", "analysis_models": ["x/one"]}, FUSION_MIN_ANSWERS="3")
    assert structured(result)["degraded"] is False and "analysis" in structured(result)
    sim.reset()
    result, _ = await call(sim, {"prompt": "q", "analysis_models": ["x/one", "y/two"]}, FUSION_MIN_ANSWERS="3")
    assert structured(result)["degraded"] is False and "analysis" in structured(result)
    sim.reset()
    sim.script("y/two", Reply(status=500))
    result, _ = await call(sim, {"prompt": "q", "analysis_models": ["x/one", "y/two"]}, FUSION_MIN_ANSWERS="3")
    assert structured(result)["degraded"] is True
    assert structured(result)["analysis_error"]["message"].startswith(
        "only 1 of 2 panel models answered and at least 2"
    )


async def test_with_quorum_one_a_lone_answer_is_still_analysed(sim: ProviderSim) -> None:
    sim.script(B, Reply(status=500))
    sim.script(C, Reply(status=500))
    result, _ = await call(sim, {"prompt": "q"}, FUSION_MIN_ANSWERS="1")
    data = structured(result)
    assert data["degraded"] is False and "analysis" in data and len(analyst_requests(sim)) == 1


def _usage(requests: int) -> dict[str, Any]:
    if not requests:
        return {"prompt_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0, "total_tokens": 0, "cost": None}
    return {
        "prompt_tokens": DEFAULT_USAGE["prompt_tokens"],
        "completion_tokens": DEFAULT_USAGE["completion_tokens"],
        "reasoning_tokens": 7,
        "total_tokens": DEFAULT_USAGE["total_tokens"],
        "cost": DEFAULT_USAGE["cost"],
    }
