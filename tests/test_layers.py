"""The layers as a contract: import-linter's contracts (``[tool.importlinter]`` in ``pyproject.toml``) hold,
an import that breaks one is caught, and ``mypy --strict`` passes on the package.

The contracts replace hand-written import checks: one direction of flow (``cli`` > ``http`` > the two front
ends > ``engine`` > ``providers`` | ``web`` | ``store`` > ``config`` > ``core``), nothing below the front
ends imports the MCP SDK, the OpenAI-compatible front end imports no MCP module, and nothing below the
front ends imports Starlette or uvicorn.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONTRACTS = {
    "layers": "One direction of flow",
    "mcp": "Nothing below the front ends imports the MCP SDK",
    "openai": "The OpenAI-compatible front end imports no MCP module",
    "web": "The engine and what it stands on know no web framework or server",
}


def lint_imports(root: Path) -> tuple[int, dict[str, str]]:
    """Run import-linter on the package under ``root``: its exit code and each contract's verdict."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(root)}
    out = subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = " ".join((out.stdout + out.stderr).split())
    verdicts = {}
    for key, name in CONTRACTS.items():
        found = re.search(re.escape(name) + r".*? (KEPT|BROKEN)", text)
        assert found, f"contract {name!r} not in the report:\n{out.stdout}{out.stderr}"
        verdicts[key] = found.group(1)
    return out.returncode, verdicts


def test_the_contracts_hold() -> None:
    code, verdicts = lint_imports(REPO)
    assert (code, verdicts) == (0, dict.fromkeys(CONTRACTS, "KEPT"))


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # An upward import: the ground reaching into the engine.
        ("core/text.py", "from ..engine import service", {"layers"}),
        # Two siblings on one layer must stay independent.
        ("store/base.py", "from ..web import fetch", {"layers"}),
        # The engine loading the MCP SDK (allowed by the layers alone: it is not part of the package); the chat
        # front end, which imports the engine, would then load it too.
        ("engine/run.py", "import mcp.types", {"mcp", "openai"}),
        # The chat front end reaching for the MCP front end.
        ("openai_api/writer.py", "from ..mcp_server import server", {"layers", "openai"}),
        # A web framework below the front ends.
        ("providers/client.py", "import starlette.responses", {"web"}),
    ],
)
def test_a_broken_layer_fails(tmp_path: Path, module: str, line: str, broken: set[str]) -> None:
    shutil.copytree(REPO / "fusion_mcp", tmp_path / "fusion_mcp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "fusion_mcp" / module
    # Appended at the end: a module-level import anywhere counts, and the copy is never executed.
    target.write_text(target.read_text() + f"\n{line}\n")
    code, verdicts = lint_imports(tmp_path)
    assert code == 1
    assert {key for key, verdict in verdicts.items() if verdict == "BROKEN"} == broken


def test_mypy_strict_passes() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", os.devnull],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    found = re.search(r"Success: no issues found in (\d+) source files", out.stdout)
    assert found and int(found.group(1)) > 60, out.stdout  # the whole package was checked
