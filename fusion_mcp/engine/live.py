"""Runs in flight: what a caller can wait on, stop waiting on, and come back to.

Every run of a :class:`~fusion_mcp.engine.service.FusionService` is a :class:`LiveRun` in the service's task
group, not in the caller's task. A caller waits on it for as long as it may (the whole run, or the call's
deadline when runs may outlive calls); progress events go to every caller waiting at the moment. A run
that outlives its call keeps going until it finishes or its own deadline ends it, is recorded in the run
history, and is found again by its id (``openrouter_fusion_result``, or ``tasks/get``).

A run that may outlive its call is also written to the history when it starts, as ``running``, with its
owner (host and process id) and a heartbeat the owner renews. After a restart that row is all there is:
:func:`lost_message` tells from the owner and the heartbeat that the process running it is gone.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio

from ..config import Settings
from ..core.errors import Redactor
from ..core.models import FusionRequest, FusionResult, Usage
from ..core.progress import DeltaSink, EventSink, ProgressEvent
from ..core.strict_json import as_object
from .daily_cap import Budget
from .member import MemberOutcome
from .pipeline import so_far, spent_so_far

log = logging.getLogger(__name__)
HEARTBEAT_S = 5.0
"""How often a process renews the heartbeat of its runs in flight."""
LOST_AFTER_S = 30.0
"""A running row whose heartbeat is older than this belongs to a process that stopped."""
KEEP_FINISHED = 64
"""Finished runs kept in memory (their results are in the run history too, when there is one)."""


def resume_instructions(run_id: str, wait_s: float) -> str:
    return (
        f"The fusion is still running in the background. Call openrouter_fusion_result with run_id "
        f'"{run_id}" (it waits up to {wait_s:g} s) to get the result; answers that finished already are included.'
    )


@dataclass
class LiveRun:
    """One run of this process, from start to result."""

    run_id: str
    principal: str
    request: FusionRequest
    durable: bool
    """Recorded as ``running`` when it starts and findable after its call returned (long runs, MCP tasks)."""
    settings: Settings
    """The settings its requests go out with: the server's, or with the caller's own key (pass-through)."""
    started: float = field(default_factory=time.time)
    outcomes: dict[str, MemberOutcome] = field(default_factory=dict)
    analyst_turns: list[MemberOutcome] = field(default_factory=list)
    listeners: list[EventSink] = field(default_factory=list)
    delta_listeners: list[DeltaSink] = field(default_factory=list)
    """Callers that follow the members' streamed text (the Responses API's panel events)."""
    last_event: ProgressEvent | None = None
    result: FusionResult | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    stop_reason: str = ""
    """Why the run was stopped from outside (``tasks/cancel``), for its result."""
    fresh: bool = False
    """Run even when the cache holds an answer (``ask --no-cache``), and cache the new one."""
    reserved: bool = False
    """Its worst case is reserved under the daily cap (released when its end is in the store)."""
    settled: bool = False
    """Its end is in the store: the final record with its usage, or (a run without a record) its usage."""
    to_record: bool = False
    """Its result is recorded once its caller has it: a run that ran, or was answered from the cache."""
    cached_from: str | None = None
    """The run whose cached result answered it: its record is a pointer to that run."""
    cache_key: str | None = None
    """Where its result goes in the cache, once its caller has it and its record is written."""
    row: bool = False
    """The history has a ``running`` row of it, naming this process, whose heartbeat the process renews."""
    row_written: anyio.Event | None = None
    """Set once the running row a run that ends with its call writes while its members work is in (or failed)."""
    ended: bool = False
    """Its end is handled: recorded, or its record failed (the running row, no longer renewed, reads as lost)."""
    end_handled: anyio.Event = field(default_factory=anyio.Event)
    """Set with ``ended``: what a reader of its record waits on."""
    max_cost_usd: float | None = None
    """Its worst case may not pass this (``FUSION_MAX_COST_USD``, or what a chat turn has left of it)."""
    budget: Budget | None = None
    """A cap of the caller's own over a group of runs (``fusion-mcp eval --max-cost``), reserved like the daily cap."""

    async def emit(self, event: ProgressEvent) -> None:
        event = self._redacted(event)
        self.last_event = event
        if not self.listeners:  # nobody waits (a task, or a run past its call): the log still tells its story
            log.info("run %s: %s", self.run_id, event.message)
        for listener in list(self.listeners):
            await listener(event)

    @functools.cached_property
    def secrets(self) -> tuple[str, ...]:
        """Its settings' secrets, gathered once: a run's settings (and so their secrets) are fixed."""
        return self.settings.secrets

    @functools.cached_property
    def _redactor(self) -> Redactor:
        return Redactor(self.secrets)

    def _redacted(self, event: ProgressEvent) -> ProgressEvent:
        """``event`` with no secret in its texts: an error may quote a URL with a password in it, or a provider
        echoing the key; every listener (MCP progress, ``ask``, the lab, chat's events) and the log get this."""
        if not (event.error or event.target or event.content):  # nothing to redact (most events)
            return event
        redactor = self._redactor
        if not redactor:
            return event
        error = redactor.text(event.error) if event.error else event.error
        target, content = redactor.text(event.target), redactor.text(event.content)
        if (error, target, content) == (event.error, event.target, event.content):
            return event
        return dataclasses.replace(event, error=error, target=target, content=content)

    def delta(self, model: str, piece: str, reasoning: bool) -> None:
        for listener in self.delta_listeners:
            listener(model, piece, reasoning)

    def spent(self) -> Usage:
        """What the run has used so far (for a run stopped before its result was made)."""
        return spent_so_far(self.request, self.outcomes, self.analyst_turns, self.settings.provider_name)

    def snapshot(self, call_wait_s: float) -> FusionResult:
        """The run as it stands: finished answers and failures, the entries still working, and how to come
        back for the rest (``openrouter_fusion_result`` waits up to ``call_wait_s`` a call)."""
        instructions = resume_instructions(self.run_id, call_wait_s)
        result = so_far(self.request, self.outcomes, self.run_id, instructions, self.settings.provider_name)
        result.timings.total = round(time.time() - self.started, 3)
        return result

    def running_row(self, call_wait_s: float) -> FusionResult:
        """What its running row holds: the run with every member pending (small: no answers in it)."""
        return so_far(self.request, {}, self.run_id, resume_instructions(self.run_id, call_wait_s))

    def release(self) -> None:
        """Keep the result, not the stream: once its record is written a finished run is read for its result,
        owner and start time only, so its members' outcomes (each with the chunks of its last turn), the
        analyst's turns and its listeners are let go."""
        for outcome in (*self.outcomes.values(), *self.analyst_turns):
            outcome.streamed.clear()
        self.outcomes.clear()
        self.analyst_turns.clear()
        self.listeners.clear()
        self.delta_listeners.clear()

    def stop(self, reason: str) -> None:
        self.stop_reason = reason
        self.scope.cancel()

    async def wait(self, wait_s: float | None, on_event: EventSink | None, *, stop_with_caller: bool) -> bool:
        """Wait until the run is done or ``wait_s`` passes (True when done), forwarding its events meanwhile.

        With ``stop_with_caller``, a caller that is cancelled (the client cancelled, or dropped its stream)
        stops the run; otherwise the run goes on without it.
        """
        if on_event is not None and on_event not in self.listeners:
            self.listeners.append(on_event)
        try:
            with anyio.move_on_after(math.inf if wait_s is None else wait_s):
                await self.done.wait()
        except anyio.get_cancelled_exc_class():
            if stop_with_caller:
                self.stop("cancelled by the client")
            raise
        finally:
            if on_event is not None and on_event in self.listeners:
                self.listeners.remove(on_event)
        return self.done.is_set()


PROCESS = uuid.uuid4().hex
"""This process, told apart from an earlier one with the same pid (a container's server is often pid 1)."""


def owner() -> dict[str, Any]:
    """Who runs a run: this host and process (a running row names it, for the next process to judge)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "process": PROCESS}


def lost_message(record: dict[str, Any]) -> str | None:
    """Why a ``running`` row from the history will never finish, or None when its owner may still be at it.

    Its owner is gone when its heartbeat is stale, or — on this host — when its process no longer exists, or
    when its pid is this process's but the row was written by an earlier process that had it.
    """
    run_owner = as_object(record.get("owner"))
    heartbeat = record.get("heartbeat")
    seen = _when(heartbeat) if isinstance(heartbeat, int | float) else "never"
    pid = run_owner.get("pid")
    where = f"process {pid} on {run_owner.get('host', 'an unknown host')}"
    gone = not isinstance(heartbeat, int | float) or time.time() - heartbeat > LOST_AFTER_S
    if not gone and run_owner.get("host") == socket.gethostname() and isinstance(pid, int):
        if pid == os.getpid():
            gone = run_owner.get("process") != PROCESS
        else:
            gone = not _alive(pid)
    if not gone:
        return None
    return (
        f"the server that was running it ({where}, last heard from {seen}) stopped before it finished — a restart, "
        "a crash or a kill ends the runs in flight, and what they had done is lost; run the call again"
    )


def _alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no cheap, safe probe: the heartbeat decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
