"""``FUSION_WEB_TOOLS=openrouter``: OpenRouter runs web search and fetch itself, inside one request.

The member loop sends the two server tools with the rest of the body and never sees a tool call; what the
model read comes back as ``url_citation`` annotations, which become the member's sources. ``max_uses`` is
per tool, so ``max_tool_calls`` is split between them (search first): a member never makes more web calls
in total than the budget allows.
"""

from __future__ import annotations

from typing import Any

from ..core.models import Source
from ..core.text import one_line
from .extract import strip_invisible


def server_tools(max_tool_calls: int) -> list[dict[str, Any]]:
    searches = (max_tool_calls + 1) // 2
    fetches = max_tool_calls - searches
    tools: list[dict[str, Any]] = [
        {"type": "openrouter:web_search", "parameters": {"max_results": 5, "max_uses": searches}}
    ]
    if fetches:
        tools.append({"type": "openrouter:web_fetch", "parameters": {"max_uses": fetches}})
    return tools


def cited_sources(annotations: list[dict[str, Any]]) -> list[Source]:
    """The ``url_citation`` annotations of a member's answers, one source per URL, in order."""
    sources: dict[str, Source] = {}
    for annotation in annotations:
        if annotation.get("type") != "url_citation":
            continue
        cited = annotation.get("url_citation")
        cited = cited if isinstance(cited, dict) else annotation  # some gateways flatten it
        url = cited.get("url")
        if isinstance(url, str) and url.startswith(("http://", "https://")) and url not in sources:
            title = cited.get("title")
            title = one_line(strip_invisible(title), 300, "") if isinstance(title, str) else None
            sources[url] = Source(url=url, title=title or None)
    return list(sources.values())
