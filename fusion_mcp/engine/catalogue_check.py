"""The second step of the one request path (see :mod:`~fusion_mcp.engine.admission`): a prepared request
checked against the provider's catalogue, inside a run slot, as it may ask the provider.

Apart from :mod:`~fusion_mcp.engine.admission` so that checking a call's arguments (what the MCP tool does
before anything else) does not load the provider client.
"""

from __future__ import annotations

import logging

from ..core.models import FusionRequest
from ..core.text import plural
from ..providers.catalogue import CatalogueClient, ModelInfo, estimate_cost, taking_images, without_tools
from .admission import FusionRefused, request_models

log = logging.getLogger(__name__)


async def check_catalogue(
    catalogue: CatalogueClient, request: FusionRequest, max_cost_usd: float | None, *, left_of: float | None = None
) -> FusionRequest:
    """Refuse unknown model ids and runs over the cost cap; mark the models that cannot call tools, those that
    read images, and the run's worst-case cost (``cost_estimate``).

    ``left_of`` is ``FUSION_MAX_COST_USD`` when ``max_cost_usd`` is what a chat turn has left of it.

    A provider without a catalogue blocks nothing (its ids are checked by the first request instead), and
    a cap without catalogue prices cannot be estimated, so it is not enforced (logged).
    """
    infos: dict[str, ModelInfo] = {}
    for model in request_models(request):
        known, info, catalogue_now = await catalogue.lookup(model)
        if not known:
            close = catalogue_now.closest(model)
            hint = f"; closest known ids: {', '.join(close)}" if close else ""
            origin = request.preset_origins.get(model)
            hint += f"; {origin}" if origin is not None else ""
            raise FusionRefused(
                "invalid_model", f"unknown model id {model!r}: {catalogue_now.whose} does not list it{hint}"
            )
        if info is not None:
            infos[model] = info
    if any(a.kind == "image" for a in request.attachments):
        # Before the estimate: the images count for the models that read them.
        request = request.model_copy(update={"image_models": await taking_images(catalogue, request_models(request))})
    request = request.model_copy(update={"cost_estimate": estimate_cost(request, infos)})
    judge = infos.get(request.model)
    if request.reasoning and judge is not None and "reasoning" in judge.supported_parameters:
        request = request.model_copy(update={"analyst_reasoning": True})
    if max_cost_usd is not None:
        _check_cost(request, max_cost_usd, left_of)
    return await _mark_tool_support(catalogue, request)


def _check_cost(request: FusionRequest, max_cost_usd: float, left_of: float | None) -> None:
    estimate = request.cost_estimate
    cap = f"FUSION_MAX_COST_USD=${max_cost_usd:g}"
    if left_of is not None:
        cap = f"the ${max(0.0, max_cost_usd):.4f} this chat turn has left of FUSION_MAX_COST_USD=${left_of:g}"
    if estimate is None:
        log.warning("FUSION_MAX_COST_USD is set but the catalogue has no prices for this panel: not enforced")
    elif estimate > max_cost_usd:
        raise FusionRefused(
            "cost_limit",
            f"estimated worst-case cost ${estimate:.4f} exceeds {cap} "
            f"({plural(len(request.analysis_models), 'member')} x {request.max_completion_tokens} tokens + analyst); "
            "use a cheaper preset or fewer models, or raise the cap",
        )


async def _mark_tool_support(catalogue: CatalogueClient, request: FusionRequest) -> FusionRequest:
    """``request`` with ``no_tools`` filled in when web tools are on.

    Sending ``tools`` to a model without tool support fails the request (OpenRouter finds no endpoint for
    it), so those members, or the analyst, answer without web tools instead.
    """
    if request.web_tools == "off":
        return request
    no_tools = tuple(dict.fromkeys((*request.no_tools, *await without_tools(catalogue, request_models(request)))))
    if no_tools == request.no_tools:
        return request
    log.info("%s cannot call tools and will answer without the web", ", ".join(no_tools))
    return request.model_copy(update={"no_tools": no_tools})
