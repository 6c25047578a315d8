"""The documentation site (``mkdocs.yml``, ``docs/``, the README's included sections) cannot rot.

- ``mkdocs build --strict`` fails on any broken link or anchor, and on a README section a page includes
  that is gone.
- The settings table on the configuration page names every setting, and nothing else.
- Every message the docs quote is one the code writes. The convention: a fenced block marked ``message``
  holds messages, one a line, with ``…`` for a part that varies. Each line is found in what the code writes
  when run here (the settings errors, the daily cap, the chat endpoint's 400), or else each of its parts
  between ``…`` is built from the package's string literals: inside one literal, or across several where
  one fills another's ``{...}`` (an f-string's field, a ``%s``).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fusion_mcp.config import SHORT_NAMES
from tests.conftest import REPO, child_env

PACKAGE = REPO / "fusion_mcp"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
HOLE = re.compile(r"\{[^{}]*\}|%[-#0-9.]*[sdrfi]")


def test_the_site_builds_with_every_link_and_anchor_resolved(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr[-4000:]
    # The README's sections are included, not copied: the quick start reaches the site.
    page = (tmp_path / "site" / "getting-started" / "index.html").read_text(encoding="utf-8")
    assert "Until it is published, install from the repository" in page


def test_the_settings_table_names_every_setting() -> None:
    table = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    named = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            named.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", first))
    settings = set(SHORT_NAMES.values())
    assert named == settings, f"missing from the table: {settings - named}; not settings: {named - settings}"


def quoted_messages() -> list[tuple[str, str]]:
    """``(file, line)`` for every line of every ``message`` block in the README and the docs."""
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for block in re.findall(r"^ *```message\n(.*?)^ *```", text, re.DOTALL | re.MULTILINE):
            found += [(path.relative_to(REPO).as_posix(), line.strip()) for line in block.splitlines() if line.strip()]
    return found


def literals() -> tuple[str, set[str]]:
    """The package's string literals (docstrings aside) cut at their holes: as one text, ``\\0``-separated,
    and as a set."""
    segments: list[str] = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "\0" for v in node.values)
                segments += HOLE.sub("\0", text).split("\0")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                segments += HOLE.sub("\0", node.value).split("\0")
    return "\0" + "\0".join(segments) + "\0", set(segments)


def built_from(part: str, text: str, whole: set[str]) -> bool:
    """Whether ``part`` is inside one literal, or a literal's end, whole literals, then a literal's start."""
    if part in text:
        return True
    reached = [j for j in range(1, len(part)) if part[:j] + "\0" in text]
    seen = set(reached)
    while reached:
        i = reached.pop()
        if "\0" + part[i:] in text:
            return True
        for j in range(i + 1, len(part)):
            if j not in seen and part[i:j] in whole:
                seen.add(j)
                reached.append(j)
    return False


def produced(tmp_path: Path) -> list[str]:
    """Messages with concrete values, as the code writes them when run."""
    out = []
    config = tmp_path / "fusion.toml"
    for content, env in [
        ("", {"FUSION_MAX_TOOL_CALLS": "0"}),
        ("[fusion]\nmax_tool_calls = 0\n", {}),
        ("max_tool_call = 3\n", {}),
    ]:
        config.write_text(content)
        done = subprocess.run(
            [sys.executable, "-m", "fusion_mcp", "--config", str(config), "doctor"],
            env=child_env(**env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        out.append(done.stderr)

    from fusion_mcp.engine.daily_cap import refusal, utc_day
    from fusion_mcp.store import Spend

    _, midnight = utc_day(1_800_000_000)
    refused = refusal("alice", Spend(4.0, 0.0, False), 1.25, 5.0, midnight - (12 * 3600 + 12 * 60))
    out.append(refused.message)

    from fusion_mcp.config import load_settings
    from fusion_mcp.openai_api.request import ChatError, plan_turn

    plugin = {"id": "fusion", "analysis_models": [f"m/{i}" for i in range(9)]}
    body = {"model": "openrouter/fusion", "messages": [{"role": "user", "content": "hi"}], "plugins": [plugin]}
    with pytest.raises(ChatError) as chat:
        plan_turn(body, load_settings(environ={"OPENROUTER_API_KEY": "sk-or-v1-" + "0a1b" * 16}), depth=0)
    out.append(str(chat.value))
    return out


def test_every_quoted_message_is_one_the_code_writes(tmp_path: Path) -> None:
    messages = quoted_messages()
    assert len(messages) >= 10, messages  # the convention is in use, and this test reads it
    outputs = produced(tmp_path)
    text, whole = literals()
    stale = []
    for where, line in messages:
        parts = line.split("…")
        pattern = re.compile(".*?".join(map(re.escape, parts)), re.DOTALL)
        if any(pattern.search(output) for output in outputs):
            continue
        missing = [p for p in parts if re.search(r"\w", p) and not built_from(p, text, whole)]
        if missing:
            stale.append(f"{where}: {line!r} (not in the code: {missing})")
    assert not stale, "\n".join(stale)


def test_the_readme_stays_a_front_page() -> None:
    """At most 250 lines, the MCP Registry's ownership line, and a Development section of exactly two set-up
    commands, the second the test command CI runs."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    assert "<!-- mcp-name: io.github.fusion-panel-mcp/fusion-mcp -->" in readme.splitlines()
    development = readme.split("\n## Development\n", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", development, re.DOTALL)
    assert len(commands) == 2 and all(len(c.strip().splitlines()) == 1 for c in commands), commands
    assert commands[1].strip() == ".venv/bin/python -m pytest"
    assert (REPO / ".ci" / "run").read_text().rstrip().splitlines()[-1] == commands[1].strip()
