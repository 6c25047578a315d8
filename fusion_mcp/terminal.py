"""Live progress for ``fusion-mcp ask`` on a terminal: one line per member and one for the analyst.

When stderr is not a terminal the command prints plain lines instead (see ``cli``), so logs and CI
output stay readable.
"""

from __future__ import annotations

import time
from typing import TextIO

import anyio

from .progress import ProgressEvent

CLEAR = "\x1b[2K"


class LiveProgress:
    """Redraws the state of every model in place, with elapsed seconds, until :meth:`close`."""

    def __init__(self, stream: TextIO, panel: tuple[str, ...], analyst: str) -> None:
        self._stream = stream
        self._started = time.monotonic()
        self._rows: dict[str, str] = {model: "thinking" for model in panel}
        self._rows[f"analyst {analyst}"] = "waiting for the panel"
        self._analyst = f"analyst {analyst}"
        self._done: dict[str, float] = {}
        self._drawn = 0
        self._analysing = False

    async def on_event(self, event: ProgressEvent) -> None:
        model = event.model or ""
        now = time.monotonic() - self._started
        match event.kind:
            case "tool":
                # Tool activity shows on the analyst's row once the panel is done (it may share a member's id).
                self._rows[self._analyst if self._analysing else model] = f"{event.tool} {event.used}/{event.budget}"
            case "member_answered":
                self._rows[model], self._done[model] = "answered", now
            case "member_failed":
                self._rows[model], self._done[model] = f"failed: {(event.error or '')[:80]}", now
            case "member_cut":
                self._rows[model], self._done[model] = "cut off at the deadline", now
            case "analyst_started":
                self._analysing = True
                self._rows[self._analyst] = "comparing the answers"
            case "analyst_done":
                done = "analysis ready" if event.error is None else f"analysis failed: {event.error[:80]}"
                self._rows[self._analyst], self._done[self._analyst] = done, now
            case "analysis_skipped":
                self._rows[self._analyst], self._done[self._analyst] = "not asked: too few answers", now
        self.draw()

    def draw(self) -> None:
        now = time.monotonic() - self._started
        out = [f"\x1b[{self._drawn}F"] if self._drawn else []
        width = max(len(name) for name in self._rows)
        for name, state in self._rows.items():
            seconds = self._done.get(name, now)
            out.append(f"{CLEAR}  {name:<{width}}  {seconds:6.1f} s  {state}\n")
        self._stream.write("".join(out))
        self._stream.flush()
        self._drawn = len(self._rows)

    async def tick(self) -> None:
        """Keep the elapsed times moving while nothing else happens."""
        while True:
            await anyio.sleep(0.5)
            self.draw()
