"""Fetched bytes to the text a model reads: main content only, nothing hidden, nothing invisible.

HTML goes through trafilatura (markdown, no images, precision-leaning: boilerplate and navigation cost
tokens and carry injected text), falling back to its plain rendering when it finds no main content.
Elements a reader never sees (``hidden``, ``aria-hidden``, ``display:none``, ``<template>``) are dropped
first: they are where injected instructions hide. Every text also loses the characters that render as
nothing but still reach a model (zero-width, bidi controls, Unicode tags, variation selectors).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urljoin

from ..core.text import one_line

INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\U000e0000-\U000e007f\U000e0100-\U000e01ef]"
)
_HIDDEN = (
    "//template | //script | //style | //noscript | //*[@hidden] | //*[@aria-hidden='true'] | "
    "//*[contains(translate(@style, 'DISPLAYNOEVISBT: ', 'displaynoevisbt'), 'display:none')] | "
    "//*[contains(translate(@style, 'DISPLAYNOEVISBT: ', 'displaynoevisbt'), 'visibility:hidden')]"
)
_BLANK_LINES = re.compile(r"\n{3,}")
MAX_HTML_BYTES = 1_000_000
"""HTML past this is not extracted: trafilatura needs seconds per megabyte on link-stuffed pages."""
MAX_URL_CHARS = 2000
"""The longest URL a page or a search result can make fetchable (a link, a URL written in a page's text, a
result's address). Real addresses are far shorter; a longer one is a page's choice made to carry data or to
cost work, and no browser or server is obliged to accept it."""


@dataclass(frozen=True)
class Page:
    title: str | None
    text: str
    links: tuple[str, ...] = ()
    """Absolute http(s) links of the visible page, in order: what a reader could follow next."""


def strip_invisible(text: str) -> str:
    return INVISIBLE.sub("", text)


def to_text(body: bytes, content_type: str, encoding: str | None = None, url: str | None = None) -> Page:
    """The readable text of a fetched body of one of the fetcher's text types (``url`` resolves links)."""
    if content_type in ("text/html", "application/xhtml+xml"):
        if len(body) <= MAX_HTML_BYTES:
            return _html(body, url, encoding)
        page = _html(body[:MAX_HTML_BYTES], url, encoding)
        note = f"\n\n[the page has {len(body):,} bytes of HTML; only the first {MAX_HTML_BYTES:,} were read]"
        return Page(page.title, page.text + note, page.links)
    text = _decode(body, encoding)
    return Page(None, _tidy(text if text is not None else body.decode("utf-8", errors="replace")))


def _html(body: bytes, url: str | None, encoding: str | None) -> Page:
    # On first use: lxml and trafilatura add ~0.1 s to a start-up that hosts wait for, with web tools off too.
    import lxml.html
    import trafilatura
    from lxml import etree

    # lxml reads bytes as Latin-1 unless the page has a <meta charset>: decode by the header's charset,
    # else UTF-8, and only then leave it to lxml's own detection.
    text = _decode(body, encoding)
    tree = None
    for source in (text, body) if text is not None else (body,):
        try:
            tree = lxml.html.fromstring(source, base_url=url) if url else lxml.html.fromstring(source)
            break
        except ValueError:  # a str with an XML encoding declaration: parse the bytes instead
            continue
        except etree.ParserError:
            return Page(None, "")
    if tree is None:
        return Page(None, "")
    hidden = tree.xpath(_HIDDEN)
    for element in hidden if isinstance(hidden, list) else ():
        if isinstance(element, lxml.html.HtmlElement) and element.getparent() is not None:
            element.drop_tree()
    title = tree.findtext(".//title")
    links: dict[str, None] = {}
    for element in tree.iter("a"):
        href = (element.get("href") or "").strip()
        try:
            absolute = urljoin(url or "", href)
        except ValueError:
            continue
        if absolute.startswith(("http://", "https://")) and len(absolute) <= MAX_URL_CHARS:
            links[absolute] = None
    text = trafilatura.extract(
        tree,
        output_format="markdown",
        include_images=False,
        include_links=False,
        include_comments=False,
        favor_precision=True,
    )
    if not text:
        text = trafilatura.html2txt(tree)
    title = one_line(strip_invisible(title), 300, "") if title else None
    return Page(title or None, _tidy(text or ""), tuple(links))


def _decode(body: bytes, encoding: str | None) -> str | None:
    for name in (encoding, "utf-8"):
        if name:
            try:
                return body.decode(name)
            except (LookupError, UnicodeDecodeError):
                continue
    return None


def _tidy(text: str) -> str:
    text = strip_invisible(text).replace("\r\n", "\n")
    return _BLANK_LINES.sub("\n\n", text).strip()
