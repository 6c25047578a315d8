"""The README's install lines, run as written against a git repository of this tree: each gives a working
``fusion-mcp`` in a fresh environment (``doctor`` passes against the provider simulator).

The install runs are slow (each line installs every dependency into a new environment): they run in CI, or
with FUSION_SLOW=1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fusion_mcp.core.about import DISTRIBUTION, HOMEPAGE, VERSION
from tests.conftest import REPO, child_env, sim_env
from tests.fakes.provider_sim import ProviderSim


def readme_install_lines() -> list[str]:
    """Every command line in the README's code blocks that installs from the project's address."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if HOMEPAGE in line and not line.startswith("#")]


def test_the_readme_has_the_three_install_lines_and_they_name_our_address() -> None:
    from fusion_mcp.config import load_settings

    lines = readme_install_lines()
    assert [line.split()[0] for line in lines] == ["uvx", "pipx", "git"], lines
    assert all(f"git+{HOMEPAGE}" in line for line in lines[:2]) and lines[2].startswith(f"git clone {HOMEPAGE} ")
    # One address everywhere: pyproject's [project.urls] (read back from the installed metadata), the
    # attribution header's default, the README.
    assert HOMEPAGE.startswith("https://github.com/") and load_settings(environ={}).app_url == HOMEPAGE


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository holding this tree as it is (committed or not), named like the real one."""
    root = tmp_path_factory.mktemp("origin") / "fusion-mcp"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(source.read_bytes())
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    for step in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run([*git, *step], cwd=root, check=True)
    return root


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``uv`` and ``pipx`` from PyPI, in a virtual environment of their own (their bin directory)."""
    venv = tmp_path_factory.mktemp("tools") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "uv", "pipx"], check=True, timeout=600)
    return venv / "bin"


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["uvx", "pipx", "git"])
def test_each_readme_install_line_gives_a_working_command(
    tool: str, origin: Path, tools: Path, tmp_path: Path, sim: ProviderSim
) -> None:
    (line,) = [line for line in readme_install_lines() if line.split()[0] == tool]
    # The same line, with the project's address replaced by the local repository's.
    command = line.replace(HOMEPAGE, origin.as_uri())
    home = tmp_path / "home"
    home.mkdir()
    env = child_env(
        **sim_env(sim, FUSION_HOME=str(tmp_path / "fusion-home")),
        HOME=str(home),
        PATH=f"{tools}{os.pathsep}{os.environ['PATH']}",
        PIPX_HOME=str(tmp_path / "pipx"),
        PIPX_BIN_DIR=str(tmp_path / "bin"),
        UV_CACHE_DIR=str(tmp_path / "uv-cache"),
        UV_TOOL_DIR=str(tmp_path / "uv-tools"),
        UV_PYTHON_DOWNLOADS="never",
        FUSION_WEB_TOOLS="off",
    )
    # This machine's package configuration, as a user's would apply: pip's (indexes, certificates), and the
    # system's certificate store for uv (it bundles its own by default).
    env |= {k: v for k, v in os.environ.items() if k.startswith(("PIP_", "UV_", "SSL_CERT"))}
    env.setdefault("UV_NATIVE_TLS", "1")
    ran = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    installed = {
        "uvx": None,  # uvx runs the command itself (the line ends with `fusion-mcp doctor`)
        "pipx": tmp_path / "bin" / "fusion-mcp",
        "git": tmp_path / "fusion-mcp" / ".venv" / "bin" / "fusion-mcp",
    }[tool]
    if installed is None:
        assert "0 failed" in ran.stdout, ran.stdout
        return
    version = subprocess.run([str(installed), "--version"], env=env, capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == f"fusion-mcp {VERSION}"
    doctor = subprocess.run([str(installed), "doctor"], env=env, capture_output=True, text=True, timeout=120)
    assert doctor.returncode == 0 and "0 failed" in doctor.stdout, doctor.stdout + doctor.stderr
    if tool == "git":  # installed under our own distribution name, not PyPI's other fusion-mcp
        show = subprocess.run([str(installed.parent / "pip"), "show", DISTRIBUTION], env=env, capture_output=True)
        assert show.returncode == 0
