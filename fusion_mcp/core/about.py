"""Names and addresses of this package, read from the installed distribution so they cannot drift.

The distribution is ``fusion-panel-mcp`` (``fusion-mcp`` on PyPI is a different project); the command stays
``fusion-mcp`` and the import name ``fusion_mcp``. The home page comes from ``[project.urls]`` in
pyproject.toml, the one place it is written.
"""

from __future__ import annotations

from email.parser import HeaderParser
from importlib.metadata import distribution

DISTRIBUTION = "fusion-panel-mcp"
COMMAND = "fusion-mcp"
# Only the headers are parsed: the body is the README, and parsing it was most of this module's cost at
# every start of the server.
_HEADERS = (distribution(DISTRIBUTION).read_text("METADATA") or "").partition("\n\n")[0]
_META = HeaderParser().parsestr(_HEADERS)
VERSION: str = _META["Version"]


def _homepage() -> str:
    for entry in _META.get_all("Project-URL") or []:
        label, _, url = str(entry).partition(",")
        if label.strip().lower() == "homepage":
            return url.strip()
    raise RuntimeError(f"the {DISTRIBUTION} distribution declares no Homepage in [project.urls]")  # pragma: no cover


HOMEPAGE = _homepage()
"""The project page: attribution header (``FUSION_APP_URL``), ``--help``, host notes."""
