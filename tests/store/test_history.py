"""Cache, run history, run resources, ``fusion-mcp runs`` and the output budget."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from fusion_mcp.config import load_settings
from fusion_mcp.mcp_server.server import create_server
from tests.conftest import API_KEY, PANEL, child_env, console_script, sim_env
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import TOOL, call_then_cancel, structured, text

pytestmark = pytest.mark.anyio


def env(sim: ProviderSim, home: Path, **extra: str) -> dict[str, str]:
    return sim_env(sim, **{"FUSION_HOME": str(home), "FUSION_CACHE": "on", **extra})


async def calls(sim: ProviderSim, home: Path, *arguments: dict[str, Any], **extra: str) -> list[Any]:
    server = create_server(load_settings(environ=env(sim, home, **extra)))
    async with Client(server) as client:
        return [await client.call_tool(TOOL, args) for args in arguments]


async def test_a_repeated_call_is_answered_from_the_cache_without_upstream_requests(
    sim: ProviderSim, tmp_path: Path
) -> None:
    first, second = await calls(sim, tmp_path, {"prompt": "q"}, {"prompt": "q"})
    assert len(sim.requests) == 4  # three members and the analyst, once
    a, b = structured(first), structured(second)
    assert "cached" not in a or a["cached"] is False
    assert b["cached"] is True and b["run_id"] != a["run_id"]
    assert b["analysis"] == a["analysis"] and b["responses"] == a["responses"]
    assert "from the cache, no new cost" in text(second)


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "other"},
        {"context": "more"},
        {"analysis_models": ["x/a"]},
        {"model": "x/judge"},
        {"max_tool_calls": 3},
    ],
)
async def test_anything_that_changes_the_answer_misses_the_cache(
    sim: ProviderSim, tmp_path: Path, change: dict[str, Any]
) -> None:
    _, second = await calls(sim, tmp_path, {"prompt": "q"}, {"prompt": "q", **change})
    assert structured(second).get("cached") is not True
    assert len(sim.requests) > 4


@pytest.mark.parametrize("extra", [{"FUSION_CACHE": "off"}, {"FUSION_CACHE_TTL_S": "0"}])
async def test_cache_off_or_expired(sim: ProviderSim, tmp_path: Path, extra: dict[str, str]) -> None:
    await calls(sim, tmp_path, {"prompt": "q"}, {"prompt": "q"}, **extra)
    assert len(sim.requests) == 8


async def test_degraded_failed_and_cancelled_runs_are_not_cached(sim: ProviderSim, tmp_path: Path) -> None:
    sim.script(PANEL[1], Reply(status=500), Reply())
    await calls(sim, tmp_path, {"prompt": "q"}, {"prompt": "q"})
    assert len(sim.requests) == 8  # the second call ran again: the first had a failed member
    sim.reset()
    for model in PANEL:
        sim.script(model, Reply(status=502))
    await calls(sim, tmp_path, {"prompt": "all fail"}, {"prompt": "all fail"})
    assert len(sim.requests) == 2 * 3 * 3  # both calls, every member, three tries each
    sim.reset()
    for model in PANEL:
        sim.script(model, Reply(latency=30), Reply())
    server = create_server(load_settings(environ=env(sim, tmp_path)))
    async with Client(server) as client:
        await call_then_cancel(client, lambda: len(sim.requests) == 3, prompt="slow")
        result = await client.call_tool(TOOL, {"prompt": "slow"})
    assert structured(result).get("cached") is not True and len(sim.requests) == 7


async def test_runs_are_readable_as_resources_with_transcripts(sim: ProviderSim, tmp_path: Path) -> None:
    sim.script(PANEL[2], Reply(status=401, error_message="bad", echo_auth=True))
    server = create_server(load_settings(environ=env(sim, tmp_path)))
    async with Client(server) as client:
        run_id = structured(await client.call_tool(TOOL, {"prompt": "what is 6*7?", "context": "maths"}))["run_id"]
        listed = json.loads((await client.read_resource("fusion://runs")).contents[0].text)
        record = json.loads((await client.read_resource(f"fusion://runs/{run_id}")).contents[0].text)
        templates = (await client.list_resource_templates()).resource_templates
        with pytest.raises(Exception, match="no run 'fus_nope'"):
            await client.read_resource("fusion://runs/fus_nope")
    assert listed[0]["run_id"] == run_id and listed[0]["status"] == "ok"
    assert [t.uri_template for t in templates] == ["fusion://runs/{run_id}"]
    assert record["request"]["prompt"] == "what is 6*7?" and record["request"]["context"] == "maths"
    assert record["result"]["run_id"] == run_id and record["result"]["failed_models"][0]["model"] == PANEL[2]
    transcripts = record["transcripts"]
    assert set(transcripts) == {*PANEL, f"analyst:{PANEL[0]}", "analyst:labels"}
    assert sorted(e["model"] for e in transcripts["analyst:labels"]) == sorted(PANEL[:2])  # the answers shown
    assert transcripts[PANEL[0]][-1] == {"role": "assistant", "content": f"Answer from {PANEL[0]}: the answer is 42."}
    assert transcripts[f"analyst:{PANEL[0]}"][0]["role"] == "system"
    files = [tmp_path / "fusion.sqlite3", *tmp_path.glob("*-wal")]  # noqa: ASYNC240 - a test's own temp dir
    assert all(API_KEY.encode() not in f.read_bytes() for f in files)


async def test_history_is_bounded_by_count(sim: ProviderSim, tmp_path: Path) -> None:
    await calls(sim, tmp_path, *({"prompt": f"q{i}"} for i in range(4)), FUSION_HISTORY_MAX_RUNS="2")
    server = create_server(load_settings(environ=env(sim, tmp_path)))
    async with Client(server) as client:
        listed = json.loads((await client.read_resource("fusion://runs")).contents[0].text)
    assert [row["prompt_head"] for row in listed] == ["q3", "q2"]


def test_runs_command_lists_and_shows(sim: ProviderSim, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [console_script(), *args], env=child_env(**env(sim, tmp_path)), capture_output=True, text=True, timeout=60
        )

    assert run("runs").stdout.strip() == "no runs yet"
    asked = run("ask", "the question " + "and more " * 30, "--json", "--analysis-only")
    run_id = json.loads(asked.stdout)["run_id"]
    listing = run("runs")
    assert listing.returncode == 0 and listing.stdout.startswith(f"{run_id}  ")
    (line,) = listing.stdout.splitlines()
    assert len(line) == 100 and "3 models  ok  the question and more" in line and line.endswith("...")
    shown = run("runs", run_id)
    assert shown.returncode == 0 and shown.stdout.startswith("# Fusion analysis: 3 answers")
    assert shown.stdout == run("runs", "show", run_id).stdout  # the long form still works
    assert f"(full record with transcripts: fusion-mcp runs {run_id} --json)" in shown.stdout
    two = run("runs", run_id, "fus_other")
    assert two.returncode == 2 and "runs takes one run id" in two.stderr
    full = json.loads(run("runs", "show", run_id, "--json").stdout)
    assert full["run_id"] == run_id and set(full["transcripts"]) >= set(PANEL)
    missing = run("runs", "show", "fus_nope")
    assert missing.returncode == 1 and "no run 'fus_nope'" in missing.stderr


def test_runs_lines_stay_within_100_columns_whatever_they_hold() -> None:
    from fusion_mcp.cli.main import run_line

    row = {
        "run_id": "fus_0123456789abcdef",
        "created": 1_790_000_000.0,
        "prompt_head": "a question\nwith a newline and " + "many words " * 20,
        "panel": ",".join(f"vendor/model-{i}" for i in range(8)),
        "status": "error:insufficient_credits",
        "cost": None,
        "seconds": 1234.5,
        "cached": True,
    }
    line = run_line(row)
    assert len(line) == 100 and "\n" not in line
    assert "8 models  insufficient_credits (cached)  a ..." in line and line.endswith("...")
    assert run_line(row | {"prompt_head": "short", "panel": "a/x", "status": "ok", "cached": False}).endswith(
        "1 model   ok  short"
    )


async def test_both_blocks_keep_to_the_output_budget_and_the_run_keeps_every_answer_whole(
    sim: ProviderSim, tmp_path: Path
) -> None:
    """8 members with 6,000-character answers: what Codex and Claude Code pass to their model is bounded too."""
    panel = [f"x/m{i}-len6000" for i in range(8)]
    server = create_server(load_settings(environ=env(sim, tmp_path)))
    async with Client(server) as client:
        result = await client.call_tool(TOOL, {"prompt": "q", "analysis_models": panel})
        data = structured(result)  # validates against the contract, as the SDK did against the outputSchema
        run_id = data["run_id"]
        record = json.loads((await client.read_resource(f"fusion://runs/{run_id}")).contents[0].text)
    budget = 24_000
    rendered = text(result)
    assert len(rendered) <= budget
    assert rendered.count(f"the whole answer is in resource fusion://runs/{run_id}]") == 8
    assert len(json.dumps(result.structured_content, ensure_ascii=False, separators=(",", ":"))) <= budget
    assert [r["trimmed"] for r in data["responses"]] == [True] * 8
    assert {r["full_chars"] for r in data["responses"]} == {6000}
    assert {r["full_answer_at"] for r in data["responses"]} == {f"fusion://runs/{run_id}"}
    assert "analysis" in data and data["analysis"]["consensus"]
    # The run history keeps every answer whole, unmarked.
    assert [len(r["content"]) for r in record["result"]["responses"]] == [6000] * 8
    assert not any("trimmed" in r for r in record["result"]["responses"])


FIRST_RELEASE_TABLES = """
CREATE TABLE runs (run_id TEXT PRIMARY KEY, created REAL NOT NULL, prompt_head TEXT NOT NULL, panel TEXT NOT NULL,
    status TEXT NOT NULL, cost REAL, seconds REAL NOT NULL, cached INTEGER NOT NULL DEFAULT 0, record TEXT NOT NULL);
CREATE INDEX runs_created ON runs(created);
CREATE TABLE cache (key TEXT PRIMARY KEY, created REAL NOT NULL, result TEXT NOT NULL);
CREATE INDEX cache_created ON cache(created);
"""
OLDER_RESULT = {
    # The first release's shape: no served_by in usage rows, and a field this release no longer has.
    "status": "ok",
    "run_id": "fus_old",
    "analysis": {
        "consensus": ["old"],
        "contradictions": [],
        "partial_coverage": [],
        "unique_insights": [],
        "blind_spots": [],
    },
    "responses": [{"model": "a/x", "content": "an answer from an older release"}],
    "judge_model": "a/judge",
}


async def test_results_stored_by_another_release_are_misses_never_errors(
    sim: ProviderSim, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import sqlite3
    import time

    from fusion_mcp.core.models import RESULT_SCHEMA, FusionArgs
    from fusion_mcp.engine.admission import prepare
    from fusion_mcp.engine.service import provider_identity
    from fusion_mcp.store import cache_key
    from fusion_mcp.store.sqlite import LATEST

    settings = load_settings(environ=env(sim, tmp_path))
    request = prepare(FusionArgs(prompt="q", deadline_s=settings.deadline_s), settings, depth=0)
    key = cache_key(request, principal="local", provider=provider_identity(settings))
    # A database the first release wrote (no schema column, no user_version), holding an older result under
    # this release's key: the upgrade must read it as a miss.
    with sqlite3.connect(tmp_path / "fusion.sqlite3") as db:
        db.executescript(FIRST_RELEASE_TABLES)
        db.execute("INSERT INTO cache VALUES (?, ?, ?)", (key, time.time(), json.dumps(OLDER_RESULT)))
        record = {"run_id": "fus_old", "result": OLDER_RESULT, "transcripts": {}}
        db.execute(
            "INSERT INTO runs VALUES ('fus_old', ?, 'q', 'a/x', 'ok', NULL, 1.0, 0, ?)",
            (time.time() - 60, json.dumps(record)),
        )
    caplog.set_level(logging.DEBUG, logger="fusion_mcp.store")
    (first,) = await calls(sim, tmp_path, {"prompt": "q"})
    assert structured(first)["status"] == "ok" and structured(first).get("cached") is not True
    assert len(sim.requests) == 4
    assert f"cache entry {key[:12]} dropped: schema 1, not {RESULT_SCHEMA}" in caplog.text
    # A row of this release's version whose result no longer validates (a hand edit, a downgrade): a miss too.
    with sqlite3.connect(tmp_path / "fusion.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == LATEST
        db.execute("UPDATE cache SET result = ? WHERE key = ?", (json.dumps(OLDER_RESULT), key))
    (second,) = await calls(sim, tmp_path, {"prompt": "q"})
    assert structured(second)["status"] == "ok" and structured(second).get("cached") is not True
    assert len(sim.requests) == 8
    assert f"cache entry {key[:12]} dropped: " in caplog.text.split("schema 1, not")[-1]
    # The run now cached is served again; the older release's run still reads, as a resource and in `runs show`.
    (third,) = await calls(sim, tmp_path, {"prompt": "q"})
    assert structured(third)["cached"] is True and len(sim.requests) == 8
    server = create_server(settings)
    async with Client(server) as client:
        old = json.loads((await client.read_resource("fusion://runs/fus_old")).contents[0].text)
    assert old["result"]["judge_model"] == "a/judge"
    shown = await anyio.run_process(
        [console_script(), "runs", "show", "fus_old"], env=child_env(**env(sim, tmp_path)), check=False
    )
    assert shown.returncode == 0 and json.loads(shown.stdout)["result"] == OLDER_RESULT
