"""Live progress for ``fusion-mcp ask`` on a terminal: one row per member and one for the analyst.

The block is redrawn in place, so it must never wrap: a wrapped row takes two lines on the screen and the
next redraw, moving up one line per row, would leave its tail behind. Every row is therefore cut to the
terminal's width (less one column, where terminals differ on when they wrap). Log records written while
the block is live go above it (:meth:`LiveProgress.logging_above`): a plain write to the same stream would
land inside the block and be overwritten. When stderr is not a terminal the command prints plain lines
instead (see ``cli``), so logs and CI output stay readable.

The block never erases the screen from its own top line: when that line is the terminal's first (a terminal
just cleared), "erase below" there erases the whole screen, which tmux (``scroll-on-clear``) and other
terminals first scroll into the scrollback, leaving a copy of the block there. Its rows are cleared one by one
instead, and "erase below" is only sent below them.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

import anyio

from ..core.text import one_line, plural

if TYPE_CHECKING:
    from ..core.progress import ProgressEvent

CLEAR_LINE = "\x1b[2K"
CLEAR_BELOW = "\x1b[J"
TICK_S = 0.5
"""How often the block is redrawn when nothing happens, for the elapsed times."""
NEXT_LINE = "\x1b[E"
"""To the start of the next line, without scrolling (unlike a newline on the last line)."""


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
        self._waits: dict[str, tuple[float, str]] = {}
        """Rows whose request waits to be retried: when the retry starts (seconds into the run), and why."""
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
                self._waits[row] = (now + event.delay, event.error or "an error")
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
        if event.kind != "retry":
            self._waits.pop(row, None)
        self.draw()

    def _state(self, row: str, now: float) -> str:
        """The row's state; while a retry waits, how long it has left, and once it started, that it did."""
        wait = self._waits.get(row)
        if wait is None:
            return self._rows[row]
        start, error = wait
        if now < start:
            return f"retrying in {start - now:.1f} s after {error}"
        doing = self._rows[row] if row == self._analyst else "thinking"
        return f"{doing} ({_ordinal(self._retries[row])} try, after {error})"

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
            # The block's rows cleared one by one, then the text where it began (see the module's docstring).
            cleared = self._up() + (CLEAR_LINE + NEXT_LINE) * self._drawn + self._up()
            self._stream.write(cleared + text.rstrip("\n") + "\n")
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
        for name in self._rows:
            seconds = self._done.get(name, now)
            state = self._state(name, now)
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
        """Keep the elapsed times moving while nothing else happens; redraw when a retry starts, too."""
        while True:
            now = time.monotonic() - self._started
            starts = [start - now for start, _ in self._waits.values() if start > now]
            await anyio.sleep(min([TICK_S, *starts]))
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


def _ordinal(retries: int) -> str:
    """The try a request is on after ``retries`` retries: ``2nd`` after one."""
    n = retries + 1
    return f"{n}{'nd' if n == 2 else 'rd' if n == 3 else 'th'}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 3)] + "..."
