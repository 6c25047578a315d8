"""The daily cost cap of each principal (``FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY``).

A run that is about to spend (after the cache, which answers for nothing) reserves its worst-case
estimate in the store. The reservation is refused — the run ends with ``cost_limit`` before any request —
when the principal's actual spend today (UTC, from the store's usage rows, across every replica) plus the
reservations of its runs in flight plus this estimate would pass the cap, or when spend and reservations
have reached the cap already. The run's record replaces its reservation with what it actually cost, in one
transaction; a reservation whose process died expires after the run's deadline plus
:data:`RESERVATION_MARGIN_S`.

A run whose cost cannot be estimated (a provider without catalogue prices) reserves nothing: it is refused
only once recorded spend has reached the cap. A run counts on the UTC day it ends. A chat request's writer
requests go through the same reservation: before each one, the turn's reservation grows to what the turn
has spent so far plus that request's worst case (catalogue prices x its prompt and its ``max_tokens``,
which the server clamps to ``FUSION_MAX_COMPLETION_TOKENS``), so a burst of chat requests cannot pass the
cap either; the turn's usage rows replace the reservation when it ends.

Only the server's key is capped: a caller who pays with its own key (``FUSION_PASS_THROUGH_KEY``) has its
usage recorded, under its own principal, but its account is its own business.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..core.text import number
from ..store import Spend, Store, StoreError
from .admission import FusionRefused

RESERVATION_MARGIN_S = 300.0
"""How long past its deadline a run's reservation is kept: time to record it, and clocks that differ."""
SETTING = "FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY"


def utc_day(now: float) -> tuple[float, float]:
    """The start and end (epoch seconds) of the UTC day ``now`` falls in."""
    start = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start.timestamp(), (start + timedelta(days=1)).timestamp()


def duration(seconds: float) -> str:
    """``5 h 12 min``, ``12 min``, ``less than a minute``: how long until a reset, as people say it."""
    if seconds < 60:
        return "less than a minute"
    hours, minutes = divmod(math.floor(seconds / 60), 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


async def reserve(
    store: Store | None,
    principal: str,
    reservation: str,
    estimate: float | None,
    cap: float,
    *,
    lasts_s: float,
    what: str = "run",
) -> None:
    """Reserve a worst case of ``estimate`` USD for ``principal`` under ``reservation`` (a run's id, or a chat
    turn's, whose reservation grows with each writer request), or raise :class:`FusionRefused` (``cost_limit``).

    The reservation replaces an earlier one of the same name, and expires ``lasts_s`` plus
    :data:`RESERVATION_MARGIN_S` from now. Without a store to read the day's spend from, the cap cannot be
    checked, so the spending is refused. ``what`` names the spending in the refusal ("run", "request").
    """
    now = time.time()
    start, _ = utc_day(now)
    expires = now + lasts_s + RESERVATION_MARGIN_S
    try:
        if store is None:
            raise StoreError("there is no store (see the warning at start)")
        spend = await store.reserve(principal, reservation, estimate or 0.0, cap=cap, since=start, expires=expires)
    except StoreError as exc:
        raise unchecked(exc) from None
    if not spend.admitted:
        raise refusal(principal, spend, estimate, cap, now, what)


@dataclass(frozen=True)
class Budget:
    """A cap over a group of runs rather than a day (``fusion-mcp eval --max-cost``): what the runs' principal
    spent since ``since`` (recorded runs, every process) plus its runs in flight plus the next run's worst case
    stays within ``usd``. Reserved in the store exactly as the daily cap is; ``name`` is how a refusal names it.
    Give the group a principal of its own, or the principal's other spending counts against it."""

    usd: float
    since: float
    name: str


async def reserve_budget(
    store: Store | None, principal: str, budget: Budget, reservation: str, estimate: float | None, *, lasts_s: float
) -> None:
    """Reserve ``estimate`` USD of ``principal``'s ``budget`` under ``reservation`` (a run's id), or raise
    :class:`FusionRefused` (``cost_limit``) naming what was spent and what the run would have needed."""
    now = time.time()
    try:
        if store is None:
            raise StoreError("there is no store (see the warning at start)")
        spend = await store.reserve(
            principal,
            reservation,
            estimate or 0.0,
            cap=budget.usd,
            since=budget.since,
            expires=now + lasts_s + RESERVATION_MARGIN_S,
        )
    except StoreError as exc:
        raise FusionRefused("cost_limit", f"{budget.name} cannot be checked, so nothing is spent: {exc}") from None
    if spend.admitted:
        return
    so_far = f"${spend.spent:.4f} spent" + (
        f" and ${spend.reserved:.4f} reserved by runs in progress" if spend.reserved > 0 else ""
    )
    if spend.spent + spend.reserved >= budget.usd:
        raise FusionRefused("cost_limit", f"{budget.name} ${number(budget.usd)} reached: {so_far}")
    raise FusionRefused(
        "cost_limit",
        f"{budget.name} ${number(budget.usd)}: {so_far}; this run's worst-case estimate, ${estimate or 0:.4f}, "
        "would pass it",
    )


def unchecked(exc: StoreError) -> FusionRefused:
    """The refusal when the store cannot say what was spent: a cap is a promise about money."""
    return FusionRefused(
        "cost_limit", f"the daily cost cap ({SETTING}) cannot be checked, so nothing is spent: {exc}; try again shortly"
    )


def refusal(
    principal: str, spend: Spend, estimate: float | None, cap: float, now: float, what: str = "run"
) -> FusionRefused:
    """The ``cost_limit`` refusal: what was spent, what is reserved, the estimate, the cap and when it resets."""
    _, end = utc_day(now)
    so_far = f"{principal} has spent ${spend.spent:.4f} today (UTC)"
    if spend.reserved > 0:
        so_far += f" with ${spend.reserved:.4f} more reserved by runs in progress"
    resets = f"it resets at 00:00 UTC, in {duration(end - now)}"
    if spend.spent + spend.reserved >= cap:
        return FusionRefused(
            "cost_limit", f"daily cost cap reached: {so_far}, and {SETTING} is ${number(cap)}; {resets}"
        )
    # (A run without an estimate counts 0, so only the branch above refuses it.)
    return FusionRefused(
        "cost_limit",
        f"daily cost cap: {so_far}; this {what}'s worst-case estimate, ${estimate or 0:.4f}, would take it past "
        f"{SETTING}="
        f"${number(cap)}; use a cheaper preset or fewer models, or wait: {resets}",
    )
