"""``server.json``, the official MCP Registry's record of this server: valid against the registry's schema,
in step with the package and its settings, and each package form starts a working server as described.

``tests/fixtures/server.schema.json`` is a byte-for-byte copy of
https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json (the registry's published
schema of that date; its SHA-256 is pinned below and matches the digest other publishers pin for it).
Moving to a newer schema is a deliberate change: replace the file, the pin and ``$schema`` together.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
import sys
import time
import tomllib
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from jsonschema import Draft7Validator
from mcp import Client, StdioServerParameters

from fusion_mcp.config import SETTING_NAMES, Settings, is_secret
from fusion_mcp.core.about import HOMEPAGE
from tests.conftest import API_KEY, REPO, child_env, sim_env
from tests.fakes.provider_sim import ProviderSim
from tests.helpers import TOOL, structured
from tests.servers import free_port

SCHEMA_URL = "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json"
SCHEMA_FILE = REPO / "tests" / "fixtures" / "server.schema.json"
SCHEMA_SHA256 = "3fba09590c99f61735d234822279f4223fab9e300c0a81e81c91ab62a4114de0"
SERVER: dict[str, Any] = json.loads((REPO / "server.json").read_text())
PROJECT: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
NOT_SETTINGS = {"FUSION_CONFIG"}  # read by load_settings itself: the file the settings come from


def validator() -> Draft7Validator:
    schema = json.loads(SCHEMA_FILE.read_bytes())
    return Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)


def test_the_schema_copy_is_the_published_one() -> None:
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_SHA256
    assert json.loads(SCHEMA_FILE.read_bytes())["$id"] == SCHEMA_URL == SERVER["$schema"]


def test_server_json_is_valid_and_the_check_is_not_empty() -> None:
    errors = [e.message for e in validator().iter_errors(SERVER)]
    assert errors == []
    # The same validator refuses what the registry refuses.
    broken = copy.deepcopy(SERVER)
    broken["description"] = "x" * 101
    broken["packages"][0]["version"] = "latest"
    del broken["packages"][1]["transport"]["url"]
    found = sorted(e.json_path for e in validator().iter_errors(broken))
    assert found == ["$.description", "$.packages[0].version", "$.packages[1].transport"]


def test_the_record_agrees_with_the_package() -> None:
    assert SERVER["version"] == PROJECT["version"]
    assert SERVER["repository"] == {"url": HOMEPAGE, "source": "github"} and SERVER["websiteUrl"] == HOMEPAGE
    # The registry proves ownership by this line in the package's README on PyPI.
    assert re.findall(r"^<!-- mcp-name: (\S+) -->$", (REPO / "README.md").read_text(), re.M) == [SERVER["name"]]
    for package in SERVER["packages"]:
        assert (package["registryType"], package["identifier"]) == ("pypi", PROJECT["name"])
        assert package["version"] == PROJECT["version"]
        # uvx runs the command named like the package: the distribution installs one by that name.
        assert package["runtimeHint"] == "uvx"
        assert PROJECT["scripts"][package["identifier"]] == PROJECT["scripts"]["fusion-mcp"]


@pytest.mark.parametrize("index", [0, 1])
def test_each_variable_is_a_setting_described_as_the_settings_say(index: int) -> None:
    fields = {str(f.alias): f for f in Settings.model_fields.values()}
    for variable in SERVER["packages"][index]["environmentVariables"]:
        name = variable["name"]
        if name in NOT_SETTINGS:
            continue
        assert name in SETTING_NAMES, name
        assert variable.get("isSecret", False) is is_secret(name), name
        field = fields[name]
        if "choices" in variable:
            assert variable["choices"] == list(typing.get_args(field.annotation)), name
        if "default" in variable:
            assert variable["default"] == str(field.default), name


def _env(package: dict[str, Any], answers: dict[str, str]) -> dict[str, str]:
    """What a registry client passes: the user's answers, else each variable's default; nothing for the rest."""
    env = {}
    for variable in package["environmentVariables"]:
        value = answers.get(variable["name"], variable.get("default"))
        if value is not None:
            env[variable["name"]] = value
    return env


def _arguments(package: dict[str, Any], answers: dict[str, str]) -> list[str]:
    out: list[str] = []
    for argument in package.get("packageArguments", []):
        value = argument.get("value") or answers.get(argument.get("valueHint", ""), argument.get("default", ""))
        out += [argument["name"], value] if argument["type"] == "named" else [value]
    return out


def _command(package: dict[str, Any]) -> str:
    """What ``uvx fusion-panel-mcp`` runs: the command named like the package, from this installation."""
    return str(Path(sys.executable).with_name(package["identifier"]))


@pytest.mark.anyio
async def test_the_stdio_package_serves_as_described(sim: ProviderSim) -> None:
    package = SERVER["packages"][0]
    answers = {"OPENROUTER_API_KEY": API_KEY, "OPENROUTER_BASE_URL": sim.base_url}
    params = StdioServerParameters(
        command=_command(package),
        args=_arguments(package, answers),
        env=child_env(**(sim_env(sim) | _env(package, answers))),
    )
    async with Client(params, mode="legacy") as client:
        assert structured(await client.call_tool(TOOL, {"prompt": "q"}))["status"] == "ok"
    assert sim.requests[0].headers["authorization"] == f"Bearer {API_KEY}"


@pytest.mark.anyio
async def test_the_http_package_serves_at_its_url(sim: ProviderSim) -> None:
    package = SERVER["packages"][1]
    port = str(free_port())
    answers = {"OPENROUTER_API_KEY": API_KEY, "OPENROUTER_BASE_URL": sim.base_url, "port": port}
    url = package["transport"]["url"].replace("{port}", port)
    command = [_command(package), *_arguments(package, answers)]
    env = child_env(**(sim_env(sim) | _env(package, answers)))
    with serving(command, env, url.removesuffix("/mcp") + "/healthz"):
        async with Client(url) as client:
            assert structured(await client.call_tool(TOOL, {"prompt": "q"}))["status"] == "ok"


@contextmanager
def serving(command: list[str], env: dict[str, str], health: str) -> Iterator[None]:
    """``command`` running until the block ends, once ``health`` answers 200."""
    with subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        try:
            deadline = time.monotonic() + 20
            while proc.poll() is None:
                try:
                    if httpx2.get(health, timeout=1).status_code == 200:
                        break
                except httpx2.TransportError:
                    time.sleep(0.05)
                assert time.monotonic() < deadline, "the server did not answer its health check within 20 s"
            assert proc.poll() is None, f"the server exited: {proc.stderr.read() if proc.stderr else ''}"
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=15)
