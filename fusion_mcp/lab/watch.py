"""What the lab's watchers of a run see: each member's streamed text and the run's steps, kept from its start.

A run the lab starts hands :meth:`Watched.delta` and :meth:`Watched.event` to the service as its listeners, so
nothing it streams is lost to a page that connects late or reloads: a watcher reads from where it is
(:class:`Cursor`) and waits for more. The text is redacted on the way in (each member's stream through a
:class:`~fusion_mcp.core.errors.StreamRedactor`, so a secret split across pieces is caught too).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..core.errors import Redactor, StreamRedactor
from ..core.progress import ProgressEvent

KEEP_S = 600.0
"""How long a finished run's stream is kept (its page then reads the result)."""
MAX_WATCHED = 64
"""Runs kept at once; past it, the finished ones longest finished go first."""
ENDING = frozenset({"member_answered", "member_failed", "member_cut"})


@dataclass
class Cursor:
    """Where one watcher is: characters of each member's text, steps seen."""

    chars: dict[str, int] = field(default_factory=dict)
    steps: int = 0


@dataclass
class Watched:
    """One run as its watchers see it."""

    run_id: str
    principal: str
    panel: tuple[str, ...]
    analyst: str
    redactor: Redactor
    run_done: anyio.Event | None = None
    """The run's own end (the service's :class:`~fusion_mcp.engine.live.LiveRun`), which no event announces
    when the run is stopped or refused: the stream ends with it, watched or not."""
    texts: dict[str, list[str]] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    ended_at: float | None = None
    _streams: dict[str, StreamRedactor] = field(default_factory=dict)
    _changed: anyio.Event = field(default_factory=anyio.Event)

    def delta(self, model: str, piece: str, reasoning: bool) -> None:
        """A member's streamed piece (its reasoning is not shown: the answer is what the lab compares)."""
        if reasoning:
            return
        stream = self._streams.get(model)
        if stream is None:
            stream = self._streams[model] = self.redactor.stream()
        ready = stream.feed(piece)
        if ready:
            self.texts.setdefault(model, []).append(ready)
            self._wake()

    async def event(self, event: ProgressEvent) -> None:
        """A step of the run: what each column shows besides the text (tool calls, retries, failures)."""
        if event.model in self._streams and event.kind in ENDING:
            rest = self._streams.pop(event.model).flush()
            if rest:
                self.texts.setdefault(event.model, []).append(rest)
        self.steps.append(_step(event, self.redactor))
        self._wake()

    def over(self, clock: Callable[[], float] = time.monotonic) -> bool:
        """Whether the run has ended (its stream is then complete: what each member held back is flushed)."""
        if self.ended_at is None and self.run_done is not None and self.run_done.is_set():
            self.finish(clock)
        return self.ended_at is not None

    def finish(self, clock: Callable[[], float] = time.monotonic) -> None:
        for model, stream in self._streams.items():
            rest = stream.flush()
            if rest:
                self.texts.setdefault(model, []).append(rest)
        self._streams.clear()
        self.done = True
        self.ended_at = clock()
        self._wake()

    def news(self, cursor: Cursor) -> dict[str, Any]:
        """What ``cursor`` has not seen (and move it past): new text per member, new steps, whether it is done."""
        text: dict[str, str] = {}
        for model, pieces in self.texts.items():
            whole = "".join(pieces)
            if len(pieces) > 1:
                self.texts[model] = [whole]  # joined once, not at every read
            seen = cursor.chars.get(model, 0)
            if len(whole) > seen:
                text[model] = whole[seen:]
                cursor.chars[model] = len(whole)
        steps = self.steps[cursor.steps :]
        cursor.steps = len(self.steps)
        return {"text": text, "steps": steps, "done": self.done}

    async def changed(self, timeout_s: float) -> None:
        """Wait until something new arrives, or ``timeout_s`` passes (the caller then sends a keep-alive)."""
        with anyio.move_on_after(timeout_s):
            await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


def _step(event: ProgressEvent, redactor: Redactor) -> dict[str, Any]:
    """A progress event as the page draws it: its kind, whom it is about, and its one line of wording."""
    return {
        "kind": event.kind,
        "model": event.model,
        "message": redactor.text(event.message),
        "tool": event.tool,
        "used": event.used,
        "budget": event.budget,
        "target": redactor.text(event.target),
        "error": redactor.text(event.error) if event.error else None,
        "elapsed": round(event.elapsed, 1),
    }


class Watches:
    """The runs this process's lab is showing, bounded: a finished one (watched or not) is kept :data:`KEEP_S`,
    and at most :data:`MAX_WATCHED` are kept, the runs still going first."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._runs: dict[str, Watched] = {}
        self._clock = clock

    def add(self, watched: Watched) -> None:
        now = self._clock()
        self._runs = {
            k: v for k, v in self._runs.items() if not v.over(self._clock) or now - (v.ended_at or now) < KEEP_S
        }
        finished = sorted((v.ended_at, k) for k, v in self._runs.items() if v.ended_at is not None)
        for _, run_id in finished[: max(0, len(self._runs) + 1 - MAX_WATCHED)]:
            del self._runs[run_id]
        self._runs[watched.run_id] = watched

    def get(self, run_id: str, principal: str) -> Watched | None:
        """``principal``'s run, if this process's lab is showing it; another principal's is None."""
        found = self._runs.get(run_id)
        return found if found is not None and found.principal == principal else None
