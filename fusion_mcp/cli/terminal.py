"""Live progress for ``fusion-mcp ask`` on a terminal: one row per member and one for the analyst.

The block is redrawn in place, so it must never wrap: a wrapped row takes two lines on the screen and the
next redraw, moving up one line per row, would leave its tail behind. Every row is therefore cut to the
terminal's width (less one column, where terminals differ on when they wrap). Log records written while
the block is live go above it (:meth:`LiveProgress.logging_above`): a plain write to the same stream would
land inside the block and be overwritten. When stderr is not a terminal the command prints plain lines
instead (see ``cli``), so logs and CI output stay readable.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

import anyio

from ..core.progress import ProgressEvent
from ..core.text import one_line, plural

CLEAR_LINE = "\x1b[2K"
CLEAR_BELOW = "\x1b[J"


class LiveProgress:
    """Redraws the state of every model in place, with elapsed seconds."""

    def __init__(self, stream: TextIO, panel: tuple[str, ...], analyst: str) -> None:
        self._stream = stream
        self._started = time.monotonic()
        self._analyst = f"analyst {analyst}"
        self._rows: dict[str, str] = {model: "thinking" for model in panel}
        self._rows[self._analyst] = "waiting for the panel"
        self._done: dict[str, float] = {}
        self._retries: dict[str, int] = {}
        self._drawn = 0
        self._analysing = False
        # Log records may come from worker threads (the store writes in one): one writer at a time.
        self._lock = threading.Lock()

    async def on_event(self, event: ProgressEvent) -> None:
        row = self._analyst if self._analysing else (event.model or "")
        now = time.monotonic() - self._started
        match event.kind:
            case "tool":
                # Tool activity shows on the analyst's row once the panel is done (it may share a member's id).
                self._rows[row] = f"{event.tool} {event.used}/{event.budget}"
            case "retry":
                self._retries[row] = self._retries.get(row, 0) + 1
                self._rows[row] = f"retrying in {event.delay:.1f} s after {event.error}"
            case "member_answered":
                self._rows[row], self._done[row] = "answered" + self._after_retries(row), now
            case "member_failed":
                self._rows[row], self._done[row] = f"failed{self._after_retries(row)}: {event.error}", now
            case "member_cut":
                self._rows[row], self._done[row] = "cut off at the deadline", now
            case "analyst_started":
                self._analysing = True
                self._rows[self._analyst] = f"comparing {plural(event.answered, 'answer')}"
            case "analyst_done":
                done = "analysis ready" if event.error is None else f"analysis failed: {event.error}"
                self._rows[self._analyst], self._done[self._analyst] = done + self._after_retries(row), now
            case "analysis_skipped":
                self._rows[self._analyst], self._done[self._analyst] = "not asked: too few answers", now
        self.draw()

    def cached(self) -> None:
        """The run was answered from the cache: no model worked."""
        now = time.monotonic() - self._started
        for row in self._rows:
            self._rows[row], self._done[row] = "from the cache", now
        self.draw()

    def _after_retries(self, row: str) -> str:
        count = self._retries.get(row, 0)
        return f" after {plural(count, 'retry', 'retries')}" if count else ""

    def draw(self) -> None:
        with self._lock:
            self._stream.write(self._up() + self._frame())
            self._stream.flush()

    def write_above(self, text: str) -> None:
        """Print ``text`` above the block (it may wrap: it is not redrawn), then the block again."""
        with self._lock:
            self._stream.write(self._up() + CLEAR_BELOW + text.rstrip("\n") + "\n")
            self._drawn = 0
            self._stream.write(self._frame())
            self._stream.flush()

    def _up(self) -> str:
        return f"\x1b[{self._drawn}F" if self._drawn else ""

    def _frame(self) -> str:
        width = max(20, self._columns() - 1)
        now = time.monotonic() - self._started
        names = max(len(name) for name in self._rows)
        names = min(names, max(12, width // 2))
        lines = []
        for name, state in self._rows.items():
            seconds = self._done.get(name, now)
            row = f"  {_cut(name, names):<{names}}  {seconds:6.1f} s  {one_line(state, width)}"
            lines.append(CLEAR_LINE + _cut(row, width) + "\n")
        self._drawn = len(lines)
        return "".join(lines) + CLEAR_BELOW

    def _columns(self) -> int:
        try:
            columns = os.get_terminal_size(self._stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
        # A pseudo-terminal nobody sized says 0: then COLUMNS, else 80.
        return columns or shutil.get_terminal_size().columns

    async def tick(self) -> None:
        """Keep the elapsed times moving while nothing else happens."""
        while True:
            await anyio.sleep(0.5)
            self.draw()

    @contextmanager
    def logging_above(self) -> Iterator[None]:
        """While the block is live, the root logger's records are printed above it (formatted and filtered
        as its handlers would, so secrets stay redacted)."""
        root = logging.getLogger()
        handlers = root.handlers[:]
        root.handlers[:] = [_Above(self, handler) for handler in handlers]
        try:
            yield
        finally:
            root.handlers[:] = handlers


class _Above(logging.Handler):
    """One of the root logger's handlers, writing above the live block instead of into it."""

    def __init__(self, live: LiveProgress, like: logging.Handler) -> None:
        super().__init__(like.level)
        self._live = live
        self.setFormatter(like.formatter)
        for check in like.filters:
            self.addFilter(check)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._live.write_above(self.format(record))
        except Exception:
            self.handleError(record)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 3)] + "..."
