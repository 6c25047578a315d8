"""The pydantic contract between layers: what a fusion run is asked, and what it answers.

The result is a superset of OpenRouter's ``FusionAnalysisResult``: the same ``status``, ``analysis``
(five keys), ``responses``, ``failed_models``, ``sources`` and error fields, plus ``run_id``,
``analyst_model``, ``usage`` and ``timings``. Optional fields are left out of the JSON when unset, so
"analysis absent" means the key is not there.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from .limits import MAX_GUESTS, MAX_PANEL, MAX_TOOL_CALLS, MIN_TOOL_CALLS

RESULT_SCHEMA = 3
"""Version of :class:`FusionResult`'s shape. Stored results carry it; a stored result of another version
is never served (bump it whenever a field is added, removed or changes meaning)."""

WebMode = Literal["openrouter", "local", "off"]
FailureReason = Literal[
    "invalid_arguments",
    "all_panels_failed",
    "insufficient_credits",
    "rate_limited",
    "invalid_model",
    "cancelled",
    "fusion_invocation_capped",
    "missing_api_key",
    "server_busy",
    "cost_limit",
    "run_lost",
    "run_not_found",
    "unexpected_error",
]
AnalysisErrorReason = Literal[
    "judge_upstream_error",
    "judge_empty_completion",
    "judge_not_valid_json",
    "judge_schema_mismatch",
    "deadline",
    "too_few_answers",
]
GUEST_PREFIX = "guest:"
"""How the host's own answers are named wherever a model id would be (``guest:draft``)."""


class _Model(BaseModel):
    # Validators are built on first use, not at import: a start-up that lists the tools builds only the
    # models of their schemas.
    model_config = ConfigDict(extra="forbid", defer_build=True)


class GuestAnswer(_Model):
    """An answer the host already has (its own draft, another agent's), compared with the panel's at no cost."""

    label: str
    content: str

    @property
    def name(self) -> str:
        """How this answer is named wherever a model id would be: ``guest:<label>``."""
        return f"{GUEST_PREFIX}{self.label}"


class FusionArgs(_Model):
    """One call as a front end received it (tool arguments, ``ask`` flags, a chat request's plugin).

    Nothing here is checked yet: :func:`fusion_mcp.engine.admission.prepare` applies every rule and names the
    argument that breaks one, the same way for every front end. Unset arguments take the settings'.
    """

    prompt: str
    context: str | None = None
    analysis_models: list[str] | None = None
    model: str | None = None
    max_tool_calls: int | None = None
    preset: str | None = None
    final_answer: bool = False
    """Also have the analyst write the final answer (``fusion-mcp ask``; a host model does it otherwise)."""
    deadline_s: float | None = None
    """Seconds the run may take; None runs until every member and the analyst are done."""
    answers: list[GuestAnswer] | None = None
    """The host's own answers, seated beside the panel's (never sent to the panel)."""
    files: list[str] | None = None
    """Paths of files to give the panel as material."""
    file_roots: list[str] | None = None
    """Directories the caller declared (MCP roots); None: the front end has none, so ``FUSION_FILES_ROOTS`` apply."""
    temperature: float | None = None
    """The panel's sampling temperature (the analyst always runs at 0); None: ``FUSION_TEMPERATURE``."""
    reasoning: dict[str, Any] | None = None
    """OpenRouter's ``reasoning`` object (``effort``, ``max_tokens``), for the panel and an analyst that takes it."""
    tools: list[Any] | None = None
    """The panel's tools, OpenRouter's way: ``[]`` is a panel without web tools; None or any other list keeps
    the server's."""
    max_completion_tokens: int | None = None
    """Each answer's token cap, at most ``FUSION_MAX_COMPLETION_TOKENS`` (the default)."""


class Attachment(_Model):
    """One file given as material: what it was, for the run history and the cache key (its bytes stay out)."""

    path: str
    """The file's real path (symlinks resolved), inside one of the call's roots."""
    kind: Literal["text", "image"]
    media_type: str
    bytes: int
    chars: int = 0
    """Text files: characters of text."""
    sha256: str


class FusionRequest(_Model):
    """One fusion run, fully resolved: arguments merged with settings, ready for the pipeline."""

    prompt: str = Field(min_length=1)
    context: str | None = None
    analysis_models: tuple[str, ...] = Field(min_length=1, max_length=MAX_PANEL)
    model: str
    max_tool_calls: int = Field(ge=MIN_TOOL_CALLS, le=MAX_TOOL_CALLS)
    max_completion_tokens: int = Field(ge=1)
    temperature: float | None = None
    """The panel's; the analyst runs at 0."""
    reasoning: dict[str, Any] | None = None
    """OpenRouter's ``reasoning`` object for the panel (``reasoning_effort`` on other providers)."""
    analyst_reasoning: bool = False
    """The analyst is sent ``reasoning`` too: its catalogue entry lists the parameter."""
    stream: bool = True
    """Panel members stream (SSE), so a member cut off at the deadline keeps what it wrote."""
    deadline_s: float | None = Field(None, gt=0)
    """Bound on the whole run; None runs until every member and the analyst are done."""
    analyst_reserve_s: float | None = Field(None, ge=0)
    """Seconds kept for the analyst before the deadline; None picks :func:`analyst_reserve`."""
    final_answer: bool = False
    """Also have the analyst write a final answer (``fusion-mcp ask``; the host model does it otherwise)."""
    web_tools: WebMode = "off"
    """Which web tools panel and analyst get: OpenRouter's server tools, ours, or none."""
    no_tools: tuple[str, ...] = ()
    """Models the catalogue says cannot call tools: they answer without web tools."""
    lenses: dict[str, str] = Field(default_factory=dict)
    """The instructions of each lens the panel's ``model#lens`` entries use."""
    guests: tuple[GuestAnswer, ...] = Field((), max_length=MAX_GUESTS)
    """The host's own answers, compared with the panel's under the same anonymous labels."""
    min_answers: int = Field(1, ge=1)
    """Panel answers needed for an analysis (a panel of one is always analysed)."""
    solo: bool = False
    """Nobody compares: the panel's answers come back without an analyst (``fusion-mcp eval`` asks each member
    alone this way, the same request it makes inside a run). Not a call argument."""
    system_prompt: str | None = None
    """A solo run's system prompt in place of the panel's (an eval's grader and writer): not a call argument."""
    files: tuple[str, ...] = ()
    """Paths of material files, as the caller gave them (read at run time, inside ``file_roots``)."""
    file_roots: tuple[str, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    """The files read for this run (filled in when they are read)."""
    image_models: tuple[str, ...] = ()
    """Models the catalogue says take image input: only they get the images among the attachments."""
    cost_estimate: float | None = None
    """The run's worst-case cost in USD from catalogue prices (filled in by the catalogue check); None when
    the catalogue has no prices for one of its models."""
    preset_origins: dict[str, str] = Field(default_factory=dict)
    """Model ids a preset chose (not the call, ``FUSION_ANALYSIS_MODELS`` or ``FUSION_MODEL``), each with a
    sentence naming the preset, where it was named and how to choose models instead: a refusal of an unknown
    id ends with it."""


# --- the analysis, exactly as OpenRouter shapes it ---------------------------------------------------


class Stance(_Model):
    model: str
    stance: str


class Contradiction(_Model):
    topic: str
    stances: list[Stance]


class PartialCoverage(_Model):
    models: list[str]
    point: str


class UniqueInsight(_Model):
    model: str
    insight: str


class Analysis(_Model):
    consensus: list[str]
    contradictions: list[Contradiction]
    partial_coverage: list[PartialCoverage]
    unique_insights: list[UniqueInsight]
    blind_spots: list[str]


# --- what the panel said ------------------------------------------------------------------------------


class Source(_Model):
    url: str
    title: str | None = None


class PanelResponse(_Model):
    model: str
    content: str
    provider: str | None = None
    """The configured provider that served this answer (``local``, ``work-openai``, ``default``); absent when
    no providers are configured."""
    truncated: bool = False
    """The member was cut off (deadline, broken stream); ``content`` is what it had written so far."""
    truncated_reason: str | None = None
    sources: list[Source] = Field(default_factory=list)
    """What this member read: pages it fetched (local tools) or cited (OpenRouter's)."""
    trimmed: bool = False
    """``content`` was cut to fit the tool result into ``FUSION_MAX_OUTPUT_CHARS``; the run keeps it whole."""
    full_chars: int | None = None
    """A trimmed answer's whole length, in characters."""
    full_answer_at: str | None = None
    """Where a trimmed answer is whole: the run's resource, ``fusion://runs/{run_id}``."""

    @model_serializer(mode="wrap")
    def _omit_when_whole(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A whole answer without web reading keeps OpenRouter's exact {model, content} shape.
        data: dict[str, Any] = handler(self)
        if not self.truncated:
            data.pop("truncated", None)
            data.pop("truncated_reason", None)
        if not self.sources:
            data.pop("sources", None)
        if self.provider is None:
            data.pop("provider", None)
        if not self.trimmed:
            for name in ("trimmed", "full_chars", "full_answer_at"):
                data.pop(name, None)
        return data


class _ProviderWhenSet(_Model):
    """Leaves a subclass's ``provider`` out of the JSON when no providers are configured: results keep
    OpenRouter's shape. (The field is the subclass's own, so it keeps its place among the others.)"""

    @model_serializer(mode="wrap")
    def _omit_provider(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if getattr(self, "provider", None) is None:
            data.pop("provider", None)
        return data


class FailedModel(_ProviderWhenSet):
    model: str
    error: str
    status_code: int | None = None
    provider: str | None = None
    """The configured provider the member was on; absent when no providers are configured."""


class AnalysisError(_Model):
    reason: AnalysisErrorReason
    message: str


class TokenUsage(_Model):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    cost: float | None = None
    """USD, when the provider reports it."""

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage.summed((self, other))

    @staticmethod
    def summed(usages: Iterable[TokenUsage]) -> TokenUsage:
        """The counts of ``usages`` added up (one model built, not one per addition); the cost is None unless
        one of them has one."""
        prompt = completion = reasoning = total = 0
        costs: list[float] = []
        for usage in usages:
            prompt += usage.prompt_tokens
            completion += usage.completion_tokens
            reasoning += usage.reasoning_tokens
            total += usage.total_tokens
            if usage.cost is not None:
                costs.append(usage.cost)
        return TokenUsage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            reasoning_tokens=reasoning,
            total_tokens=total,
            cost=round(sum(costs), 10) if costs else None,
        )


class ModelUsage(TokenUsage, _ProviderWhenSet):
    model: str
    role: Literal["panel", "analyst"]
    requests: int = 0
    served_by: str | None = None
    """The concrete model the provider reports having run (an alias such as ``~openai/gpt-latest`` names a
    dated model there); None when it named none."""
    provider: str | None = None
    """The configured provider that answered; absent when no providers are configured."""


class Usage(_Model):
    models: list[ModelUsage] = Field(default_factory=list)
    total: TokenUsage = Field(default_factory=TokenUsage)


class Timings(_Model):
    members: dict[str, float] = Field(default_factory=dict)
    """Seconds from the panel's start to each member's answer or failure."""
    analyst: float | None = None
    total: float = 0.0
    queued: float = 0.0
    """Seconds the call waited for a run slot (``FUSION_MAX_CONCURRENT``) before its run started; 0 when one was
    free. Not part of ``total``, which counts from the run's start."""


def new_run_id() -> str:
    """A fresh run id: ``fus_`` and 16 hex digits, the same from every front end."""
    return f"fus_{uuid.uuid4().hex[:16]}"


class FusionResult(_Model):
    """What ``openrouter_fusion`` returns as ``structuredContent``."""

    status: Literal["ok", "error", "running"]
    run_id: str
    analysis: Analysis | None = None
    analysis_error: AnalysisError | None = None
    responses: list[PanelResponse] = Field(default_factory=list)
    failed_models: list[FailedModel] = Field(default_factory=list)
    sources: list[Source] = Field(default_factory=list)
    analyst_model: str | None = None
    final_answer: str | None = None
    final_answer_error: str | None = None
    """Why the final answer asked for is missing (its request failed); the analysis is still there."""
    usage: Usage = Field(default_factory=Usage)
    timings: Timings = Field(default_factory=Timings)
    cached: bool = False
    """Served from the cache: an identical call succeeded within ``FUSION_CACHE_TTL_S``; nothing was sent."""
    degraded: bool = False
    """Fewer panel members answered than ``FUSION_MIN_ANSWERS``: no analysis, just the answers and failures."""
    pending: list[str] | None = None
    """``running``: the panel entries still working (empty once only the analyst is)."""
    instructions: str | None = None
    """``running``: what the host should do next (call ``openrouter_fusion_result`` with the run id)."""
    error: str | None = None
    failure_reason: FailureReason | None = None

    @classmethod
    def failure(cls, run_id: str, reason: FailureReason, message: str) -> FusionResult:
        """An error result with nothing else to report (a refusal before the run, an interruption)."""
        return cls(status="error", run_id=run_id, error=message, failure_reason=reason)

    def to_json(self) -> dict[str, Any]:
        """The wire form: unset top-level optional fields are omitted rather than sent as null."""
        unset = {name for name in type(self).model_fields if getattr(self, name) is None}
        return self.model_dump(mode="json", exclude=unset)


def analyst_reserve(deadline_s: float) -> float:
    """Default seconds kept for the analyst: a third of the deadline, at most 20 s.

    An analysis of three answers takes a frontier model roughly 5-20 s, so 20 s of a 55 s deadline lets
    the panel run for 35 s. The reserve shrinks with the deadline so that with ``FUSION_DEADLINE_S=6``
    members that answer within 4 s still reach an analysis (which then may not finish: the answers are
    returned either way).
    """
    return min(20.0, deadline_s / 3)
