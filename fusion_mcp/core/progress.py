"""What a run reports while it works: structured :class:`ProgressEvent` values, and their one wording.

The pipeline sends events to an :data:`EventSink`; the MCP layer forwards them as progress notifications
(``message`` as their text), the terminal draws rows from their fields. Nobody parses the text back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from .limits import MAX_RETRIES
from .text import plural

ProgressKind = Literal[
    "queued",
    "started",
    "tool",
    "retry",
    "member_answered",
    "member_failed",
    "member_cut",
    "analyst_started",
    "analyst_done",
    "analysis_skipped",
]


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a run. ``progress`` rises with every event and reaches ``total`` at the end."""

    kind: ProgressKind
    progress: float
    """Whole steps, plus a fraction for each tool call so far (MCP wants every notification to rise)."""
    total: int
    elapsed: float
    """Seconds since the run started."""
    model: str | None = None
    """The member or analyst the event is about (``started``: the analyst)."""
    panel: tuple[str, ...] = ()
    """The run's panel, in every event."""
    tool: str | None = None
    """``tool``: the tool's name; ``used`` of ``budget`` calls are spent, this one included."""
    used: int = 0
    budget: int = 0
    target: str = ""
    """``tool``: what the call asks for, the URL to read or the query to search, as the model wrote it (one line,
    clipped); "" when its arguments name neither."""
    answered: int = 0
    """``member_answered``: members answered so far; ``analyst_started``: answers to compare;
    ``analysis_skipped``: panel answers, fewer than the quorum."""
    error: str | None = None
    """``member_failed``, a failed ``analyst_done`` and ``analysis_skipped``: what went wrong; ``retry``: what
    failed and is retried."""
    attempt: int = 0
    """``retry``: which retry of the request this is (1 for the first, at most ``MAX_RETRIES``)."""
    delay: float = 0.0
    """``retry``: seconds waited before it."""
    kept: int = 0
    """``member_cut``: characters of its answer kept."""
    duration: float = 0.0
    """``analyst_done``: seconds the analysis took."""
    running: int = 0
    """``queued``: runs in progress, holding every run slot the call could take."""
    content: str = ""
    """``member_answered``: the member's answer."""
    status_code: int | None = None
    """``member_failed``: the provider's HTTP status, when it gave one."""

    @property
    def message(self) -> str:
        """The event as one line a person reads (the progress notification's text)."""
        seconds = f"{self.elapsed:.1f} s"
        match self.kind:
            case "queued":
                return f"waiting for a run slot: {plural(self.running, 'run')} in progress"
            case "started":
                return f"fusion started: panel of {len(self.panel)} ({', '.join(self.panel)}), analyst {self.model}"
            case "tool":
                return f"{self.model}: {self.tool} {self.used}/{self.budget}"
            case "retry":
                return f"{self.model}: retry {self.attempt}/{MAX_RETRIES} in {self.delay:.1f} s after {self.error}"
            case "member_answered":
                return f"{self.answered}/{len(self.panel)} answered: {self.model} in {seconds}"
            case "member_failed":
                return f"{self.model} failed after {seconds}: {self.error}"
            case "member_cut":
                kept = f"kept {plural(self.kept, 'character')}" if self.kept else "nothing to keep"
                return f"{self.model} cut off at the deadline after {seconds} ({kept})"
            case "analyst_started":
                return f"analyst {self.model} is comparing {plural(self.answered, 'answer')}"
            case "analyst_done":
                done = "analysis ready" if self.error is None else f"analysis failed: {self.error}"
                return f"{done} ({self.duration:.1f} s)"
            case "analysis_skipped":
                return f"no analysis: {self.error}"


EventSink = Callable[[ProgressEvent], Awaitable[None]]
DeltaSink = Callable[[str, str, bool], None]
"""Told of each piece of text a panel member streams, as it arrives: (panel entry, piece, whether it is the
model's reasoning). Called from inside the provider's stream reader, so it must not block: a front end that
forwards the pieces queues them."""
