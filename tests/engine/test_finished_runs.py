"""A finished run keeps its result, not its stream: what the service holds of a run once it is done, and how
much memory each finished run keeps (8 members x ~2,000 tokens, each streamed word by word)."""

from __future__ import annotations

import gc
import tracemalloc
from types import FunctionType, ModuleType
from typing import Any

import pytest

from fusion_mcp.config import load_settings
from fusion_mcp.core.callers import LOCAL_PRINCIPAL
from fusion_mcp.core.models import FusionArgs
from fusion_mcp.engine.live import KEEP_FINISHED, LiveRun
from fusion_mcp.engine.member import MemberOutcome
from fusion_mcp.engine.service import FusionService
from tests.conftest import ANALYST, sim_env
from tests.fakes.provider_sim import ProviderSim
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio
LONG_PANEL = [f"x/m{i}-len8000" for i in range(8)]
"""8 members of ~8,000 characters (~2,000 tokens) each, streamed as ~1,300 chunks (one per word)."""
RUNS = 30
KEPT_PER_RUN = 150 * 1024


def reachable(live: LiveRun) -> list[object]:
    """Every object a finished run's data reaches through the garbage collector's references: all its fields
    but its settings (the server's, shared) and its event and cancel scope (which reach the event loop), not
    going into classes, modules or functions."""
    roots = [v for k, v in vars(live).items() if k not in ("settings", "done", "scope")]
    seen: dict[int, object] = {id(r): r for r in roots}
    todo = list(roots)
    while todo:
        for ref in gc.get_referents(todo.pop()):
            if id(ref) not in seen and not isinstance(ref, type | ModuleType | FunctionType):
                seen[id(ref)] = ref
                todo.append(ref)
    return list(seen.values())


async def fuse_all(service: FusionService, prompts: list[str]) -> list[LiveRun]:
    """Run each prompt; the runs as the service keeps them, once each one's record is written."""
    kept = []
    for prompt in prompts:
        request = service.prepare(FusionArgs(prompt=prompt), depth=0)
        result = await service.run(request)
        assert result.status == "ok" and len(result.responses) == len(LONG_PANEL)
        live = service.live(result.run_id, LOCAL_PRINCIPAL)
        assert live is not None
        kept.append(live)
    await wait_until(lambda: all(live.ended for live in kept))  # the caller is answered before the record
    return kept


def long_settings(sim: ProviderSim, **env: str) -> Any:
    return load_settings(environ=sim_env(sim, FUSION_ANALYSIS_MODELS=",".join(LONG_PANEL), FUSION_MODEL=ANALYST, **env))


async def test_a_finished_run_holds_its_result_and_no_streamed_chunks(sim: ProviderSim) -> None:
    """The LiveRun the service keeps after a run holds its result, whole, and nothing of its stream: no member
    outcome, no list of streamed chunks, no transcript, anywhere it reaches."""
    async with FusionService.open(long_settings(sim)) as service:
        (live,) = await fuse_all(service, ["what is kept?"])
        assert live.done.is_set()
        assert live.result is not None and live.result.status == "ok"
        assert [len(r.content) for r in live.result.responses] == [8000] * len(LONG_PANEL)
        assert (len(live.outcomes), len(live.analyst_turns), len(live.listeners)) == (0, 0, 0)
        held = reachable(live)
        assert not [o for o in held if isinstance(o, MemberOutcome)]
        # The longest list it reaches is the result's own (its responses, its usage rows), never a stream's.
        assert max((len(o) for o in held if isinstance(o, list)), default=0) <= len(LONG_PANEL) + 1
        assert not [o for o in held if isinstance(o, dict) and "role" in o and "content" in o]  # no transcript


@pytest.mark.slow  # ~50 s: 30 runs of 8 streamed members under tracemalloc (CI runs it)
async def test_memory_kept_per_finished_run_is_bounded(sim: ProviderSim) -> None:
    """30 runs of 8 members x ~2,000 tokens, all of them still kept (``KEEP_FINISHED``): what stays allocated
    after they finish, counted by tracemalloc after a collection, is under 150 KiB a run — their results (~64 KB
    of answers each), not their streams (~1,300 chunks a member)."""
    assert KEEP_FINISHED >= RUNS + 2
    async with FusionService.open(long_settings(sim)) as service:
        await fuse_all(service, ["warm-up 1", "warm-up 2"])  # pools, caches and lazy imports settle first
        sim.requests.clear()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            kept_runs = await fuse_all(service, [f"question {i}" for i in range(RUNS)])
            sim.requests.clear()  # the simulator (in this process) records every request it served
            gc.collect()
            kept = (tracemalloc.get_traced_memory()[0] - before) / RUNS
        finally:
            tracemalloc.stop()
        assert all(service.live(r.run_id, LOCAL_PRINCIPAL) is r for r in kept_runs)
    print(f"memory kept per finished run: {kept / 1024:.0f} KiB")
    assert kept < KEPT_PER_RUN


async def test_the_oldest_finished_runs_go_past_the_bound(sim: ProviderSim) -> None:
    """Past ``KEEP_FINISHED`` finished runs, those that ended first are let go (their records stay in the store);
    the newest ``KEEP_FINISHED`` are kept, each found by its id."""
    async with FusionService.open(load_settings(environ=sim_env(sim))) as service:
        runs = []
        for i in range(KEEP_FINISHED + 3):
            result = await service.run(service.prepare(FusionArgs(prompt=f"question {i}"), depth=0))
            runs.append(result.run_id)
        await service.records_written(LOCAL_PRINCIPAL)
        await wait_until(lambda: all((live := service.live(r, LOCAL_PRINCIPAL)) is None or live.ended for r in runs))
        assert [service.live(r, LOCAL_PRINCIPAL) for r in runs[:3]] == [None, None, None]
        kept = [service.live(r, LOCAL_PRINCIPAL) for r in runs[3:]]
        assert all(live is not None and live.ended for live in kept)
        assert service.store is not None and all([await service.store.run(r) for r in runs[:3]])
