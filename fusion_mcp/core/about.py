"""Names and addresses of this package, read from the installed distribution so they cannot drift.

The distribution is ``fusion-panel-mcp`` (``fusion-mcp`` on PyPI is a different project); the command stays
``fusion-mcp`` and the import name ``fusion_mcp``. The home page comes from ``[project.urls]`` in
pyproject.toml, the one place it is written.
"""

from __future__ import annotations

from importlib.metadata import metadata

DISTRIBUTION = "fusion-panel-mcp"
COMMAND = "fusion-mcp"
_META = metadata(DISTRIBUTION)  # parsed once: it embeds the README
VERSION: str = _META["Version"]


def _homepage() -> str:
    for entry in _META.get_all("Project-URL") or []:
        label, _, url = str(entry).partition(",")
        if label.strip().lower() == "homepage":
            return url.strip()
    raise RuntimeError(f"the {DISTRIBUTION} distribution declares no Homepage in [project.urls]")  # pragma: no cover


HOMEPAGE = _homepage()
"""The project page: attribution header (``FUSION_APP_URL``), ``--help``, host notes."""
