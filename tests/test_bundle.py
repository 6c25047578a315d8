"""The Claude Desktop bundle (``.mcpb``): its manifest agrees with the package, the official ``mcpb`` validates
and packs it, and the packed files start a working server with the settings the manifest passes.

``.ci/run`` installs ``@anthropic-ai/mcpb`` and sets ``FUSION_MCPB``; elsewhere the packing tests skip,
except under CI, where a missing packer is a failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from fusion_mcp.config import OPENROUTER_BASE_URL, PRESET_NAMES, PRESETS, SETTING_NAMES, is_secret
from fusion_mcp.core.about import HOMEPAGE
from fusion_mcp.mcp_server.server import TOOL_NAME
from tests.conftest import API_KEY, REPO, child_env, sim_env
from tests.fakes.provider_sim import ProviderSim
from tests.helpers import TOOL, structured

MCPB = os.environ.get("FUSION_MCPB", "")
MANIFEST: dict[str, Any] = json.loads((REPO / "bundle" / "manifest.json").read_text())


def test_the_manifest_agrees_with_the_package() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert MANIFEST["version"] == project["version"]
    assert [t["name"] for t in MANIFEST["tools"]] == [TOOL_NAME]
    assert MANIFEST["homepage"] == MANIFEST["repository"]["url"] == HOMEPAGE
    assert MANIFEST["compatibility"]["runtimes"]["python"] == project["requires-python"]
    server = MANIFEST["server"]
    assert server["type"] == "uv" and (REPO / "bundle" / server["entry_point"]).is_file()
    assert server["entry_point"] in server["mcp_config"]["args"]


def test_the_key_is_a_sensitive_user_setting_and_every_setting_reaches_the_server() -> None:
    config = MANIFEST["user_config"]
    key = config["openrouter_api_key"]
    # Optional: a local server (Ollama, vLLM) needs no key; empty reaches the server as "not set", and without a
    # key on OpenRouter the server refuses to start, naming the setting.
    assert key["sensitive"] is True and key["required"] is False and key["default"] == "" and key["type"] == "string"
    env = MANIFEST["server"]["mcp_config"]["env"]
    assert set(env) <= set(SETTING_NAMES)
    assert env["OPENROUTER_API_KEY"] == "${user_config.openrouter_api_key}" and is_secret("OPENROUTER_API_KEY")
    used = {m for v in env.values() for m in re.findall(r"\$\{user_config\.([a-z_]+)\}", v)}
    assert used == set(config)
    # Claude Desktop substitutes only values it has: an optional setting without a default would reach the
    # server as the literal "${user_config...}" text.
    assert all(c.get("required") or "default" in c for c in config.values())
    assert config["preset"]["default"] in PRESETS and config["base_url"]["default"] == OPENROUTER_BASE_URL
    assert all(name in config["preset"]["description"] for name in PRESET_NAMES)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not MCPB or not os.path.exists(MCPB):
        if os.environ.get("CI"):
            pytest.fail("FUSION_MCPB is not set to the mcpb binary; .ci/run installs it")
        pytest.skip("the official bundle packer is not installed (npm @anthropic-ai/mcpb; set FUSION_MCPB)")
    out = tmp_path_factory.mktemp("mcpb") / "fusion-mcp.mcpb"
    built = subprocess.run(
        [sys.executable, str(REPO / "bundle" / "build.py"), "--mcpb", MCPB, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert "Manifest schema validation passes!" in built.stdout  # mcpb validate, before packing
    return out


def test_mcpb_validates_and_packs_the_bundle(bundle: Path) -> None:
    names = set(zipfile.ZipFile(bundle).namelist())
    assert {"manifest.json", "server/main.py", "pyproject.toml", "README.md", "fusion_mcp/cli/main.py"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert json.loads(zipfile.ZipFile(bundle).read("manifest.json")) == MANIFEST
    info = subprocess.run([MCPB, "info", str(bundle)], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0 and "fusion-mcp" in info.stdout


@pytest.mark.anyio
@pytest.mark.parametrize("key", [API_KEY, None], ids=["key", "local-server-without-key"])
async def test_the_packed_files_serve_with_the_settings_the_manifest_passes(
    bundle: Path, sim: ProviderSim, tmp_path: Path, key: str | None
) -> None:
    root = tmp_path / "unpacked"
    zipfile.ZipFile(bundle).extractall(root)
    # What Claude Desktop substitutes: the user's answers (here the simulator's URL), else the defaults.
    answers = {"base_url": sim.base_url} | ({"openrouter_api_key": key} if key else {})
    values = {k: answers.get(k, c.get("default")) for k, c in MANIFEST["user_config"].items()}
    env = {
        name: re.sub(r"\$\{user_config\.([a-z_]+)\}", lambda m: str(values[m[1]]), value)
        for name, value in MANIFEST["server"]["mcp_config"]["env"].items()
    }
    # Claude Desktop's uv runtime installs the dependencies; here this interpreter has them, and the bundle's
    # own copy of the package comes first on the path.
    params = StdioServerParameters(
        command=sys.executable,
        args=[str(root / MANIFEST["server"]["entry_point"])],
        env=child_env(**(sim_env(sim) | env | {"PYTHONPATH": str(root)})),
    )
    async with Client(params, mode="legacy") as client:
        assert [t.name for t in (await client.list_tools()).tools] == [TOOL]
        assert structured(await client.call_tool(TOOL, {"prompt": "q"}))["status"] == "ok"
    assert sim.requests[0].headers.get("authorization") == (f"Bearer {key}" if key else None)
