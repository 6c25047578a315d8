"""One fusion as the tool and ``fusion-mcp ask`` run it: the cache, the run, the record.

Between the MCP layer and the pipeline: it knows the store, not the protocol.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from .config import Settings
from .models import FusionRequest, FusionResult
from .pipeline import EventSink, run_fusion
from .provider import Provider
from .store import Store, cache_key, default_home
from .web.tools import WebTools

log = logging.getLogger(__name__)


def open_store(settings: Settings) -> Store | None:
    """The store of ``FUSION_HOME``, or None (logged) when it cannot be opened: fusion still works."""
    home = settings.home or default_home()
    try:
        return Store(
            home,
            secrets=settings.secrets,
            cache_ttl_s=settings.cache_ttl_s,
            max_runs=settings.history_max_runs,
            max_age_days=settings.history_max_days,
        )
    except Exception as exc:
        log.warning("no cache or run history: cannot open %s (%s)", home, exc)
        return None


async def fuse(
    request: FusionRequest,
    provider: Provider,
    store: Store | None,
    settings: Settings,
    *,
    run_id: str,
    on_event: EventSink | None = None,
    web: WebTools | None = None,
) -> FusionResult:
    """Answer from the cache when an identical call succeeded recently; otherwise run and record."""
    key = cache_key(request)
    if store is not None and settings.cache:
        hit = await store.cached(key)
        if hit is not None:
            log.info("run %s answered from the cache (first run %s)", run_id, hit.run_id)
            result = hit.model_copy(update={"run_id": run_id, "cached": True})
            await _record(store, request, result, {"cached_from": [{"run_id": hit.run_id}]})
            return result
    transcripts: dict[str, list[dict[str, Any]]] = {}
    result = await run_fusion(request, provider, on_event=on_event, run_id=run_id, transcripts=transcripts, web=web)
    spent = result.usage.total.cost
    if settings.max_cost_usd is not None and spent is not None and spent > settings.max_cost_usd:
        # The estimate is a worst case, so this means prices or usage differ from the catalogue's.
        log.warning("run %s cost $%.4f, over FUSION_MAX_COST_USD=$%g", run_id, spent, settings.max_cost_usd)
    if store is not None:
        if settings.cache:
            await store.remember(key, result)
        await _record(store, request, result, transcripts)
    return result


async def _record(store: Store, request: FusionRequest, result: FusionResult, transcripts: dict[str, Any]) -> None:
    # A full disk must not lose the answer the caller is waiting for.
    with anyio.CancelScope(shield=True):
        try:
            await store.save_run(request, result, transcripts)
        except Exception as exc:
            log.warning("run %s not recorded: %s", result.run_id, exc)
