"""History retention per principal, over the wire: one client's traffic cannot push another's runs out of the
history, an answer from the cache records a pointer instead of a copy, and a file is stored once per run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from fusion_mcp.config import load_settings
from fusion_mcp.mcp_server.server import RESULT_TOOL_NAME, create_server
from tests import servers
from tests.conftest import ANALYST, child_env, console_script, sim_env
from tests.fakes.provider_sim import ProviderSim
from tests.helpers import TOOL, over_http, structured
from tests.store.test_store import Raw

pytestmark = pytest.mark.anyio
ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdefgh"
HITS = 1000


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script(), *args], env=child_env(**env), capture_output=True, text=True, timeout=60, check=False
    )


async def repeated(client: Client, args: dict[str, Any], times: int) -> list[dict[str, Any]]:
    """The same call ``times`` times, a few at once (as a busy client would), in the order they ended."""
    done: list[dict[str, Any]] = []
    limit = anyio.CapacityLimiter(4)

    async def one() -> None:
        async with limit:
            done.append(structured(await client.call_tool(TOOL, args)))

    async with anyio.create_task_group() as tg:
        for _ in range(times):
            tg.start_soon(one)
    return done


async def test_alices_finished_run_is_still_found_after_bobs_thousand_cached_calls(
    sim: ProviderSim, store_env: dict[str, str]
) -> None:
    """FUSION_HISTORY_MAX_RUNS=20, shared by two principals: Bob's 1,001 calls (one run, then answers from the
    cache) trim only his own runs, down to his share of 10, and Alice's run reads back exactly as she got it.
    Each of Bob's answers from the cache is a pointer to his first run: once that has left the history, a
    restarted server says so. ``runs`` lists them as cached and ``usage`` counts each as a free run."""
    env = sim_env(
        sim,
        **store_env,
        FUSION_CACHE="on",
        FUSION_HTTP_TOKENS=f"alice:{ALICE},bob:{BOB}",
        FUSION_HISTORY_MAX_RUNS="20",
        FUSION_RUN_DEADLINE_S="120",
    )
    with servers.in_process(env) as base:
        async with over_http(base, ALICE) as alice:
            made = structured(await alice.call_tool(TOOL, {"prompt": "alice's long question"}))
        async with over_http(base, BOB) as bob:
            first = structured(await bob.call_tool(TOOL, {"prompt": "q"}))
            hits = await repeated(bob, {"prompt": "q"}, HITS)
        async with over_http(base, ALICE) as alice:
            found = structured(await alice.call_tool(RESULT_TOOL_NAME, {"run_id": made["run_id"]}))
    assert made["status"] == "ok" and first["status"] == "ok" and len(sim.requests) == 8  # two runs, nothing else
    assert all(h["cached"] is True and h["analysis"] == first["analysis"] for h in hits)
    assert found == made
    kept = Raw(store_env).rows("SELECT principal, run_id, cached, bytes FROM {runs} ORDER BY created DESC")
    assert sorted(r for r, *_ in kept) == ["alice"] + ["bob"] * 10
    bobs = [run_id for principal, run_id, _, _ in kept if principal == "bob"]
    assert {made["run_id"], *bobs} == {run_id for _, run_id, _, _ in kept} and set(bobs) <= {h["run_id"] for h in hits}
    assert all(cached and size < 400 for principal, _, cached, size in kept if principal == "bob")

    with servers.in_process(env) as base:  # a new process: nothing of Bob's runs in memory
        async with over_http(base, BOB) as bob:
            newest = structured(await bob.call_tool(RESULT_TOOL_NAME, {"run_id": bobs[0]}))
            record = json.loads((await bob.read_resource(f"fusion://runs/{bobs[0]}")).contents[0].text)
    gone = (
        f"run {bobs[0]!r} was answered from the cache of run {first['run_id']!r}, which has since left "
        "the run history (FUSION_HISTORY_MAX_RUNS, FUSION_HISTORY_MAX_MB, FUSION_HISTORY_MAX_DAYS); make the call "
        "again for a new answer"
    )
    assert newest["failure_reason"] == "run_not_found" and newest["error"] == gone
    assert record["result"] == newest and record["transcripts"] == {"cached_from": [{"run_id": first["run_id"]}]}

    listing = run("runs", "--limit", "3", env=env)
    assert listing.returncode == 0, listing.stderr
    assert [line.split()[0] for line in listing.stdout.splitlines()] == bobs[:3]
    assert all("3 models  ok (cached)  q" in line for line in listing.stdout.splitlines())
    usage = json.loads(run("usage", "--json", env=env).stdout)["rows"]
    assert {r["key"]: (r["runs"], r["requests"]) for r in usage} == {"alice": (1, 4), "bob": (1 + HITS, 4)}


async def test_a_large_file_for_eight_members_is_stored_once_and_reads_back_as_sent(
    sim: ProviderSim, tmp_path: Path
) -> None:
    """A 1.5 MB text file and 8 panel entries: each member's user message and the analyst's carry it, the
    record holds it once (today's release wrote it nine times), and the transcripts read back as sent."""
    root = tmp_path / "project"
    root.mkdir()
    line = "the quick brown fox jumps over the lazy dog, line {:06d}\n"
    (root / "big.txt").write_text("".join(line.format(i) for i in range(25_000)), encoding="utf-8")
    size = (root / "big.txt").stat().st_size
    panel = [f"x/m{i}" for i in range(8)]
    env = sim_env(sim, FUSION_HOME=str(tmp_path / "home"), FUSION_FILES_ROOTS=str(root))
    server = create_server(load_settings(environ=env))
    async with Client(server) as client:
        args = {"prompt": "how many lines?", "files": ["big.txt"], "analysis_models": panel}
        result = structured(await client.call_tool(TOOL, args))
        record = json.loads((await client.read_resource(f"fusion://runs/{result['run_id']}")).contents[0].text)
    assert result["status"] == "ok" and len(result["responses"]) == 8
    ((stored,),) = Raw({"FUSION_HOME": str(tmp_path / "home")}).rows("SELECT bytes FROM {runs}")
    assert size < stored < 2 * size + 100_000
    sent = {r.model: r.body["messages"] for r in sim.requests}
    for model in panel:
        messages = record["transcripts"][model]
        assert messages[:2] == sent[model][:2]  # the system prompt, and the material with the question
        assert messages[1]["content"][0]["text"].count("line 024999\n") == 1
    (analyst,) = [r.body["messages"] for r in sim.requests if "response_format" in r.body]
    assert record["transcripts"][f"analyst:{ANALYST}"][:2] == analyst[:2]
