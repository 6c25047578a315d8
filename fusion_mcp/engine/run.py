"""What one fusion run carries from step to step: its clock, its progress count, its web tools.

:class:`Run` bundles them with the request and the provider so that each step of the pipeline
(``panel.collect``, ``panel.sort``, ``pipeline.analyse``, ``pipeline.assemble``) takes one argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from ..core.lenses import model_of
from ..core.limits import MAX_RETRIES
from ..core.models import FusionRequest, Source, analyst_reserve
from ..core.progress import DeltaSink, EventSink, ProgressEvent, ProgressKind
from ..providers.client import Provider, RetryListener
from ..web.server_tools import cited_sources, server_tools
from .material import Material
from .member import MemberOutcome, ToolReporter

if TYPE_CHECKING:  # the web tools are loaded when first used (web.toolbox)
    from ..web.toolbox import WebBox
    from ..web.tools import MemberWeb, Origin, RunWeb


@dataclass(frozen=True)
class Clock:
    """A run's times on ``anyio.current_time()``'s scale; without a deadline both limits are infinite."""

    started: float
    cutoff: float
    """When unfinished members are cut off: the deadline minus the analyst's reserve."""
    deadline: float
    """When the analyst must be done."""

    @classmethod
    def start(cls, request: FusionRequest) -> Clock:
        now = anyio.current_time()
        if request.deadline_s is None:
            return cls(now, math.inf, math.inf)
        reserve = 0.0 if request.solo else request.analyst_reserve_s  # no analyst to keep time for
        reserve = analyst_reserve(request.deadline_s) if reserve is None else reserve
        return cls(now, now + request.deadline_s - reserve, now + request.deadline_s)

    def elapsed(self) -> float:
        return anyio.current_time() - self.started


class Progress:
    """Numbers a run's events and hands them to the sink.

    One step per member and two for the analyst (start, end); each tool call and each retry adds a fraction
    small enough that every one the run could make stays below one step, so the value rises with every event.
    A model makes at most ``max_tool_calls`` tool calls and ``max_tool_calls + 6`` requests (the analyst's
    repair and final answer included), each retried at most ``MAX_RETRIES`` times.
    """

    def __init__(
        self, request: FusionRequest, sink: EventSink | None, clock: Clock, deltas: DeltaSink | None = None
    ) -> None:
        self._sink = sink
        self._deltas = deltas
        self._clock = clock
        self._panel = request.analysis_models
        self.total = len(self._panel) + 2
        self._steps = 0
        self._minor = 0
        per_model = request.max_tool_calls + MAX_RETRIES * (request.max_tool_calls + 6)
        self._minor_step = 1 / ((len(self._panel) + 1) * per_model + 2)

    async def emit(self, kind: ProgressKind, **fields: Any) -> None:
        if kind in ("started", "tool", "retry"):  # started above 0: a queued call's notification came at 0
            self._minor += 1
        elif kind != "started":
            self._steps += 1
        value = (
            self.total
            if kind in ("analyst_done", "analysis_skipped")
            else round(self._steps + self._minor * self._minor_step, 6)
        )
        if self._sink is not None:
            event = ProgressEvent(kind, value, self.total, self._clock.elapsed(), panel=self._panel, **fields)
            await self._sink(event)

    def tool_reporter(self, model: str) -> ToolReporter:
        async def report(name: str, used: int, budget: int, target: str) -> None:
            await self.emit("tool", model=model, tool=name, used=used, budget=budget, target=target)

        return report

    def delta_reporter(self, model: str) -> Callable[[str, bool], None] | None:
        """Passes a member's streamed pieces on, named after its panel entry (None: nobody listens)."""
        deltas = self._deltas
        if deltas is None:
            return None
        return lambda piece, reasoning: deltas(model, piece, reasoning)

    def retry_reporter(self, model: str) -> RetryListener:
        async def report(attempt: int, delay: float, error: str) -> None:
            await self.emit("retry", model=model, attempt=attempt, delay=delay, error=error)

        return report


class RunTools:
    """The web tools of one run: which models get them, each model's toolbox, and what each one read.

    ``local`` gives every model our ``web_search``/``web_fetch`` (one :class:`MemberWeb` each, sharing the
    run's budget and page cache); ``openrouter`` adds OpenRouter's server tools to each request; ``off``
    neither. Models the catalogue marks as unable to call tools get none.
    """

    def __init__(self, request: FusionRequest, web: WebBox | None) -> None:
        self._request = request
        self._seed = f"{request.prompt}\n{request.context or ''}"
        self._web: RunWeb | None = web.run() if web is not None and request.web_tools == "local" else None
        self._extra = {"tools": server_tools(request.max_tool_calls)} if request.web_tools == "openrouter" else None
        self.boxes: dict[str, MemberWeb] = {}
        """Each member's toolbox, by model id."""
        self.analyst: MemberWeb | None = None

    def offered(self, model: str) -> bool:
        """Whether ``model`` (a panel entry or the analyst) gets web tools."""
        return model_of(model) not in self._request.no_tools and (self._web is not None or self._extra is not None)

    def fence_note(self, model: str) -> str | None:
        """The system prompt's note on fenced web text, for a model that gets our tools."""
        return self._web.fence.note if self._web is not None and self.offered(model) else None

    def extra(self, model: str) -> dict[str, Any] | None:
        """Request fields that carry OpenRouter's server tools, for a model that gets them."""
        return self._extra if self.offered(model) else None

    def member_box(self, model: str) -> MemberWeb | None:
        """A member's own toolbox: it may fetch URLs from the question and from what it finds."""
        if self._web is None or not self.offered(model):
            return None
        self.boxes[model] = self._web.toolbox(self._seed)
        return self.boxes[model]

    def analyst_box(self) -> MemberWeb | None:
        """The analyst checks contradictions against what the panel saw: it may fetch any URL a member could."""
        if self._web is None or not self.offered(self._request.model):
            return None
        known: dict[str, Origin] = {}
        for box in self.boxes.values():
            for url, origin in box.known.items():
                # The most trusted origin wins: a URL one member searched for is not a page's pick.
                if known.get(url) in (None, "page"):
                    known[url] = origin
        self.analyst = self._web.toolbox(self._seed, known)
        return self.analyst

    def sources(self, box: MemberWeb | None, annotations: list[dict[str, Any]]) -> list[Source]:
        """What a model read: pages it fetched with our tools and pages OpenRouter's tools cited."""
        return merge_sources(box.sources if box is not None else [], cited_sources(annotations))


def merge_sources(*groups: list[Source]) -> list[Source]:
    """One source per URL, first title kept (a later title fills a missing one)."""
    merged: dict[str, Source] = {}
    for group in groups:
        for source in group:
            known = merged.get(source.url)
            if known is None or (known.title is None and source.title):
                merged[source.url] = source
    return list(merged.values())


@dataclass
class Run:
    """One run in progress: what every step of the pipeline needs."""

    run_id: str
    request: FusionRequest
    provider: Provider
    clock: Clock
    progress: Progress
    tools: RunTools
    transcripts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Every model's conversation (the analyst's under ``analyst:<id>``), for the run history."""
    material: Material | None = None
    """The call's files, placed first in every member's request."""
    outcomes: dict[str, MemberOutcome] = field(default_factory=dict)
    """Each panel entry's outcome, filled in as members work (a run still going reports what has finished)."""
    analyst_turns: list[MemberOutcome] = field(default_factory=list)
    """The analyst's requests as they are made, so a run stopped during its analysis still counts them."""
