"""Untrusted text (model answers, analysis points, page titles) as HTML the lab may show.

Markdown is parsed by markdown-it-py with raw HTML off, so ``<script>`` in an answer is text; what it makes
then passes nh3's allow-list: a few structural tags, ``href`` and ``title`` on links, http(s) and mailto
URLs only, every link ``rel="noopener noreferrer"`` opened in a new tab. Images are never loaded: markdown's
``![alt](url)`` becomes a link saying it is an image, so an answer cannot make the browser fetch anything.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import nh3
from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup, escape

TAGS = frozenset(
    {"p", "br", "hr", "strong", "em", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li", "a"}
    | {"h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td"}
)
ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}
SCHEMES = frozenset({"http", "https", "mailto"})
MAX_CHARS = 400_000
"""Longer text is cut here before parsing (an answer is bounded by its tokens; this bounds the work anyway)."""


def _image_as_link(renderer: Any, tokens: list[Token], idx: int, options: Any, env: Any) -> str:
    """``![alt](url)`` as a link to the image, never an ``<img>`` (nh3 would keep none anyway)."""
    token = tokens[idx]
    alt = "".join(child.content for child in token.children or []) or "image"
    src = str(token.attrGet("src") or "")
    return f'<a href="{escape(src)}">image: {escape(alt)}</a>'


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    md.add_render_rule("image", _image_as_link)
    return md


def markdown(text: str) -> Markup:
    """``text`` (markdown from outside) as sanitized HTML."""
    html = _parser().render(text[:MAX_CHARS])
    return Markup(
        nh3.clean(
            html,
            tags=set(TAGS),
            attributes={k: set(v) for k, v in ATTRIBUTES.items()},
            url_schemes=set(SCHEMES),
            link_rel="noopener noreferrer",
            set_tag_attribute_values={"a": {"target": "_blank"}},
            strip_comments=True,
        )
    )


def inline(text: str) -> Markup:
    """One line of markdown (an analysis point, a stance) without the paragraph around it."""
    html = str(markdown(text)).strip()
    if html.startswith("<p>") and html.endswith("</p>") and html.count("<p>") == 1:
        html = html[3:-4]
    return Markup(html)
