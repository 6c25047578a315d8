"""The provider's model catalogue: which ids exist, what they cost, and the closest match to a typo.

OpenRouter serves ``GET {base}/models`` (and ``GET {base}/model/{id}`` for ``~...-latest`` aliases);
many OpenAI-compatible servers serve ``/models`` without prices, and some serve nothing. A provider
without a catalogue blocks nothing: checks then pass, and cost caps cannot be estimated.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import anyio
import httpx2

from ..config import Endpoint, Settings, shown_url
from ..core.lenses import model_of
from ..core.model_ids import DEFAULT_PROVIDER
from ..core.models import FusionRequest
from ..core.strict_json import as_array, as_object
from .client import auth_headers

log = logging.getLogger(__name__)
TTL_S = 3600.0
IMAGE_TOKENS = 1600
"""Prompt tokens counted per image in the worst case (a large image costs providers about this many)."""
PROBLEM_TTL_S = 60.0
"""A provider that could not be asked is asked again this soon: it may have been a moment's outage."""


@dataclass(frozen=True)
class ModelInfo:
    id: str
    prompt_price: float | None = None
    """USD per prompt token."""
    completion_price: float | None = None
    """USD per completion token."""
    supported_parameters: frozenset[str] = frozenset()
    input_modalities: frozenset[str] = frozenset()
    """What the model reads (``text``, ``image``, ``file``...); empty when the catalogue does not say."""


MAX_ALIASES = 256
"""Alias look-ups remembered per catalogue: callers choose the ids, so the memory must not grow with them."""


@dataclass
class Catalogue:
    """What ``/models`` said (``models`` is None when the provider has no catalogue)."""

    models: dict[str, ModelInfo] | None
    fetched: float = field(default_factory=time.monotonic)
    aliases: OrderedDict[str, ModelInfo | None] = field(default_factory=OrderedDict)
    """``GET /model/{id}`` answers, least recently used first, at most :data:`MAX_ALIASES`."""
    problem: str | None = None
    """Why there is no catalogue when the provider could not be asked (unreachable, a server error), as
    opposed to a provider that simply publishes none (many local servers answer 404)."""
    provider: str | None = None
    """The configured provider whose catalogue this is; None with no providers configured."""
    prefix: str = ""
    """How ids of this catalogue were written to reach it (``local:``): suggestions are given the same way."""

    @property
    def whose(self) -> str:
        """How messages name it: ``the provider's catalogue``, or ``provider 'local''s catalogue``."""
        return "the provider's catalogue" if self.provider is None else f"the catalogue of provider {self.provider!r}"

    def remember(self, model: str, info: ModelInfo | None) -> None:
        self.aliases[model] = info
        self.aliases.move_to_end(model)
        while len(self.aliases) > MAX_ALIASES:
            self.aliases.popitem(last=False)

    def closest(self, model: str, n: int = 3) -> list[str]:
        """Known ids that look like ``model`` (with or without an alias's ``~``), best first, written as
        ``model`` was (with its provider's prefix)."""
        ids = list(self.models or ())
        import difflib  # loaded for a suggestion, not at start

        model = model.removeprefix(self.prefix)
        found = difflib.get_close_matches(model, ids, n=n, cutoff=0.75)
        found += difflib.get_close_matches(model.lstrip("~"), ids, n=n, cutoff=0.75)
        return [f"{self.prefix}{m}" for m in dict.fromkeys(found)][:n]


def _price(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _info(item: dict[str, Any]) -> ModelInfo:
    pricing = as_object(item.get("pricing"))
    params = as_array(item.get("supported_parameters"))
    return ModelInfo(
        id=str(item.get("id")),
        prompt_price=_price(pricing.get("prompt")),
        completion_price=_price(pricing.get("completion")),
        supported_parameters=frozenset(str(p) for p in params),
        input_modalities=_inputs(item.get("architecture")),
    )


def _inputs(architecture: Any) -> frozenset[str]:
    """OpenRouter's ``architecture.input_modalities``, else the left side of its ``modality`` (``text+image->text``)."""
    if not isinstance(architecture, dict):
        return frozenset()
    listed = architecture.get("input_modalities")
    if isinstance(listed, list):
        return frozenset(str(m) for m in listed)
    modality = architecture.get("modality")
    if isinstance(modality, str) and "->" in modality:
        return frozenset(m.strip() for m in modality.split("->")[0].split("+") if m.strip())
    return frozenset()


class CatalogueClient:
    """Every provider's catalogue, each asked for the ids routed to it (:meth:`Settings.route`); with no
    providers configured, the one base URL's. Every failure means "no catalogue", never an exception."""

    def __init__(
        self,
        http: httpx2.AsyncClient,
        settings: Settings,
        timeout_s: float = 15.0,
        pools: Mapping[str, httpx2.AsyncClient] | None = None,
    ) -> None:
        self._settings = settings
        self._sources = {
            name: EndpointCatalogue((pools or {}).get(name, http), endpoint, timeout_s)
            for name, endpoint in settings.endpoints.items()
        }

    def source(self, name: str) -> EndpointCatalogue:
        """One provider's catalogue (``default``: the one base URL's)."""
        return self._sources[name]

    async def get(self) -> Catalogue:
        """The default provider's catalogue."""
        return await self._sources[DEFAULT_PROVIDER].get()

    async def lookup(self, model: str) -> tuple[bool, ModelInfo | None, Catalogue]:
        """(known, info, catalogue) of ``model`` (an id without a lens) at the provider it routes to: unknown
        only when a catalogue exists and names nothing like it (or it names no provider at all). Prices the
        provider's config gives fill in those its catalogue lacks."""
        if not self._settings.providers:  # one base URL: its catalogue, as it is
            return await self._sources[DEFAULT_PROVIDER].lookup(model)
        try:
            endpoint, upstream = self._settings.route(model)
        except ValueError:
            return False, None, Catalogue(models={})
        known, info, catalogue = await self._sources[endpoint.name].lookup(upstream)
        price = endpoint.price(upstream) if endpoint.named else None
        if known and price is not None and (info is None or info.prompt_price is None or info.completion_price is None):
            base = info if info is not None else ModelInfo(id=upstream)
            info = replace(base, prompt_price=price[0], completion_price=price[1])
        if self._settings.providers:
            prefix = model.removesuffix(upstream) if model != upstream and model.endswith(upstream) else ""
            catalogue = replace(catalogue, provider=endpoint.name, prefix=prefix)
        return known, info, catalogue


def _fresh(catalogue: Catalogue) -> bool:
    """Within its time to live (a catalogue that failed to load is tried again sooner)."""
    ttl = TTL_S if catalogue.problem is None else PROBLEM_TTL_S
    return time.monotonic() - catalogue.fetched <= ttl


class EndpointCatalogue:
    """One provider's catalogue, fetched and cached."""

    def __init__(self, http: httpx2.AsyncClient, endpoint: Endpoint, timeout_s: float = 15.0) -> None:
        self._http = http
        self._timeout_s = timeout_s
        self._base = endpoint.base_url
        self._headers = auth_headers(endpoint)
        self._cached: Catalogue | None = None
        self._lock = anyio.Lock()

    async def get(self) -> Catalogue:
        # A fresh catalogue is returned without the lock: taking an anyio lock yields to the event loop, and
        # every run looks up each of its models (twice), so on a busy server each look-up waited a whole turn
        # of the loop behind every other run's work.
        cached = self._cached
        if cached is not None and _fresh(cached):
            return cached
        async with self._lock:
            cached = self._cached
            if cached is None or not _fresh(cached):
                cached = self._cached = await self._fetch()
            return cached

    async def _fetch(self) -> Catalogue:
        url = f"{self._base}/models"
        try:
            with anyio.fail_after(self._timeout_s):
                response = await self._http.get(url, headers=self._headers)
        except (httpx2.HTTPError, TimeoutError) as exc:
            # Not "no catalogue": the provider could not be asked, and every call will fail the same way.
            problem = f"the provider at {shown_url(self._base)} is unreachable ({type(exc).__name__})"
            log.warning("model ids not checked: %s", problem)
            return Catalogue(models=None, problem=problem)
        try:
            data = response.json() if response.status_code == 200 else None
        except ValueError:
            data = None
        if response.status_code >= 500:
            problem = f"{url} answered HTTP {response.status_code}"
            log.warning("model ids not checked: %s", problem)
            return Catalogue(models=None, problem=problem)
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            log.info(
                "no model catalogue at %s (HTTP %s): model ids are checked by the first request",
                url,
                response.status_code,
            )
            return Catalogue(models=None)
        return Catalogue(models={m.id: m for m in (_info(i) for i in items if isinstance(i, dict) and i.get("id"))})

    async def lookup(self, model: str) -> tuple[bool, ModelInfo | None, Catalogue]:
        """(known, info, catalogue): unknown only when a catalogue exists and names nothing like it."""
        catalogue = await self.get()
        if catalogue.models is None:
            return True, None, catalogue
        if model in catalogue.models:
            return True, catalogue.models[model], catalogue
        if model in catalogue.aliases:
            catalogue.aliases.move_to_end(model)
        else:
            catalogue.remember(model, await self._resolve(model))
        info = catalogue.aliases[model]
        return info is not None, info, catalogue

    async def _resolve(self, model: str) -> ModelInfo | None:
        """``GET {base}/model/{id}``: how OpenRouter answers for aliases it does not list.

        The id goes into the path escaped (its slashes kept, as the endpoint wants them), on top of the id
        grammar that already keeps ``..``, ``?``, ``#`` and ``%`` out of it.
        """
        path = quote(model, safe="/~:@+")
        try:
            with anyio.fail_after(self._timeout_s):
                response = await self._http.get(f"{self._base}/model/{path}", headers=self._headers)
            if response.status_code != 200:
                return None
            data = response.json()
        except (httpx2.HTTPError, ValueError, TimeoutError):
            return None
        item = data.get("data", data) if isinstance(data, dict) else None
        return _info(item | {"id": item.get("id") or model}) if isinstance(item, dict) else None


def estimate_cost(request: FusionRequest, infos: dict[str, ModelInfo]) -> float | None:
    """Worst case in USD before the run, from catalogue prices and token caps; None without prices.

    Every member writes its full ``max_completion_tokens``; the analyst reads the question and every answer
    (the host's own answers too) and may need its one repair request (plus the final answer in ``ask``).
    Prompts are counted at 3.5 characters a token, a deliberately high count for English; text files count
    as text, each image as :data:`IMAGE_TOKENS`.
    """
    material = sum(a.chars for a in request.attachments) / 3.5
    images = IMAGE_TOKENS * sum(1 for a in request.attachments if a.kind == "image")
    guests = sum(len(g.content) for g in request.guests) / 3.5
    question = (len(request.prompt) + len(request.context or "") + 1500) / 3.5 + material
    out_cap = request.max_completion_tokens
    total = 0.0
    for entry in request.analysis_models:
        model = model_of(entry)
        info = infos.get(model)
        if info is None or info.prompt_price is None or info.completion_price is None:
            return None
        total += (question + (images if model in request.image_models else 0)) * info.prompt_price
        total += out_cap * info.completion_price
    if request.solo:
        return total
    judge = infos.get(request.model)
    if judge is None or judge.prompt_price is None or judge.completion_price is None:
        return None
    analyst_prompt = question + len(request.analysis_models) * out_cap + guests
    analyst_requests = 3 if request.final_answer else 2
    total += analyst_requests * (analyst_prompt * judge.prompt_price + out_cap * judge.completion_price)
    return total


def request_cost(info: ModelInfo | None, body: dict[str, Any], max_tokens: int, extra_chars: int = 0) -> float | None:
    """Worst case in USD of one chat-completions request ``body`` (a chat writer's), from catalogue prices:
    its messages and tools counted as prompt at 3.5 characters a token (plus ``extra_chars`` still to come,
    such as a tool result), and ``max_tokens`` of answer. None without prices."""
    if info is None or info.prompt_price is None or info.completion_price is None:
        return None
    chars = sum(len(json.dumps(body.get(k) or [], ensure_ascii=False)) for k in ("messages", "tools")) + extra_chars
    return chars / 3.5 * info.prompt_price + max_tokens * info.completion_price


async def taking_images(client: CatalogueClient, models: tuple[str, ...]) -> tuple[str, ...]:
    """The models whose catalogue entry says they read images (no entry, or one that does not say: no images)."""
    found = []
    for model in dict.fromkeys(models):
        _, info, _ = await client.lookup(model)
        if info is not None and "image" in info.input_modalities:
            found.append(model)
    return tuple(found)


async def without_tools(client: CatalogueClient, models: tuple[str, ...]) -> tuple[str, ...]:
    """The models the catalogue says cannot call tools (a catalogue that lists no parameters says nothing)."""
    found = []
    for model in dict.fromkeys(models):
        _, info, _ = await client.lookup(model)
        if info is not None and info.supported_parameters and "tools" not in info.supported_parameters:
            found.append(model)
    return tuple(found)
