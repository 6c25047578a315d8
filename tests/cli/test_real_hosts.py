"""The real hosts read back the entries ``host-config --write`` makes, and the server starts as they say.

For Claude Code, Codex and opencode, under a temporary home, with the user's panel set in the environment:
``host-config HOST --write``, then the host's own CLI reports the entry it parsed (``claude mcp get``,
``codex mcp get --json``, ``opencode debug config``); the server is launched with exactly that command and
environment (after the host's own expansion of variable references, with the simulator's key in the host's
environment) through the MCP SDK's stdio client, and the tool answers from the user's panel. Claude Code's and
opencode's ``mcp list`` also start the server themselves and report it connected. Claude Desktop, Cursor and
VS Code have no CLI: their written files are launched the same way.

``.ci/run`` installs the hosts (pinned) and sets ``FUSION_CLAUDE``, ``FUSION_CODEX`` and ``FUSION_OPENCODE``.
Elsewhere these tests skip, except under CI, where a missing host is a failure. No model is called and the
hosts are kept offline (no update checks, telemetry or model lists).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from tests import servers
from tests.cli.entries import entry_of, launch_of
from tests.conftest import API_KEY, HOME_DIR, child_env, console_script, sim_env
from tests.fakes.provider_sim import ProviderSim
from tests.helpers import TOOL, structured

pytestmark = pytest.mark.anyio

USER_PANEL = ("~openai/gpt-latest", "~google/gemini-pro-latest")
USER_ANALYST = "~google/gemini-pro-latest"
USER = {"FUSION_ANALYSIS_MODELS": ",".join(USER_PANEL), "FUSION_MODEL": USER_ANALYST, "FUSION_WEB_TOOLS": "off"}
OFFLINE = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_MODELS_FETCH": "1",
    "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
    "NO_COLOR": "1",
}
BINARIES = {"claude-code": "FUSION_CLAUDE", "codex": "FUSION_CODEX", "opencode": "FUSION_OPENCODE"}


def binary(host: str) -> str:
    variable = BINARIES[host]
    path = os.environ.get(variable, "")
    if not path or not os.path.exists(path):
        if os.environ.get("CI"):
            pytest.fail(f"{variable} is not set to the {host} binary; .ci/run installs it")
        pytest.skip(f"{host} is not installed (set {variable})")
    return path


@dataclass
class Home:
    """A user's machine: a home, a project, and the environment their shell and their host run in."""

    root: Path
    env: dict[str, str]

    @property
    def project(self) -> Path:
        return self.root / "project"

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            argv, cwd=self.project, env=self.env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )
        assert out.returncode == 0, (argv, out.stdout[-2000:], out.stderr[-2000:])
        return out

    def host_config(self, host: str) -> subprocess.CompletedProcess[str]:
        out = self.run(console_script(), "host-config", host, "--write")
        assert "is not set here" not in out.stderr and API_KEY not in out.stdout + out.stderr
        return out


@pytest.fixture
def home(tmp_path: Path, sim: ProviderSim) -> Home:
    (tmp_path / "project").mkdir()
    env = child_env(
        HOME=str(tmp_path),
        XDG_CONFIG_HOME=str(tmp_path / ".config"),
        CODEX_HOME=str(tmp_path / ".codex"),
        OPENROUTER_API_KEY=API_KEY,
        OPENROUTER_BASE_URL=sim.base_url,
        FUSION_HOME=HOME_DIR,
        FUSION_CACHE="off",
        **USER,
        **OFFLINE,
    )
    return Home(tmp_path, env)


async def call_as_launched(sim: ProviderSim, command: list[str], env: dict[str, str]) -> None:
    """Start the server with ``command`` and the host's minimal environment plus ``env``; call the tool."""
    params = StdioServerParameters(command=command[0], args=command[1:], env=child_env(**env))
    async with Client(params, mode="legacy") as client:
        assert structured(await client.call_tool(TOOL, {"prompt": "q"}))["status"] == "ok"
    assert {r.model for r in sim.requests} == set(USER_PANEL)  # the user's panel reached the server


def claude_get(text: str) -> dict[str, Any]:
    """``claude mcp get NAME``: its ``Command:``, ``Args:`` and ``Environment:`` lines."""
    command = re.search(r"^\s*Command: (.*)$", text, re.M)
    args = re.search(r"^\s*Args:(.*)$", text, re.M)
    env_block = re.search(r"^\s*Environment:\n((?:\s{4,}\S.*\n?)*)", text, re.M)
    assert command and args and env_block, text
    env = dict(line.strip().split("=", 1) for line in env_block[1].splitlines() if line.strip())
    return {"command": command[1].strip(), "args": args[1].split(), "env": env}


async def test_claude_code_reads_the_project_entry_and_starts_the_server(home: Home, sim: ProviderSim) -> None:
    claude = binary("claude-code")
    home.host_config("claude-code")
    got = claude_get(home.run(claude, "mcp", "get", "fusion").stdout)
    assert got["command"] == console_script() and got["args"] == []
    carried = {k: home.env[k] for k in ("OPENROUTER_BASE_URL", "FUSION_HOME", "FUSION_CACHE", *USER)}
    assert got["env"] == {"OPENROUTER_API_KEY": "${OPENROUTER_API_KEY}"} | carried
    command, env = launch_of("claude-code", got, home.env)  # Claude Code's ${VAR} from its environment
    assert env["OPENROUTER_API_KEY"] == API_KEY
    await call_as_launched(sim, command, env)
    # Approved for the project, Claude Code starts the server itself and reports no missing variable.
    (home.root / ".claude").mkdir(exist_ok=True)
    (home.root / ".claude/settings.json").write_text(json.dumps({"enableAllProjectMcpServers": True}))
    listed = home.run(claude, "mcp", "list").stdout
    assert f"fusion: {console_script()}  - ✔ Connected" in listed and "Missing environment" not in listed
    home.env.pop("OPENROUTER_API_KEY")  # what host-config warns about, Claude Code reports only here
    assert "Missing environment variables: OPENROUTER_API_KEY" in home.run(claude, "mcp", "list").stdout


async def test_claude_code_takes_the_printed_user_scope_command(home: Home) -> None:
    claude = binary("claude-code")
    note = home.run(console_script(), "host-config", "claude-code").stderr
    (line,) = [n for n in note.splitlines() if "claude mcp add " in n]
    argv = shlex.split(line[line.index("claude mcp add ") :])
    assert argv[:4] == ["claude", "mcp", "add", "fusion"]  # the name before the variadic --env
    home.run(claude, *argv[1:])
    got = claude_get(home.run(claude, "mcp", "get", "fusion").stdout)
    assert got["command"] == console_script() and got["env"]["OPENROUTER_API_KEY"] == "${OPENROUTER_API_KEY}"
    assert got["env"]["FUSION_ANALYSIS_MODELS"] == USER["FUSION_ANALYSIS_MODELS"]
    listed = home.run(claude, "mcp", "list").stdout
    assert f"fusion: {console_script()}  - ✔ Connected" in listed and "Missing environment" not in listed


async def test_codex_reads_the_entry_and_starts_the_server(home: Home, sim: ProviderSim) -> None:
    codex = binary("codex")
    home.host_config("codex")
    got = json.loads(home.run(codex, "mcp", "get", "fusion", "--json").stdout)
    transport = got["transport"]
    assert got["enabled"] is True and transport["type"] == "stdio"
    assert transport["command"] == console_script() and transport["args"] == []
    assert transport["env_vars"] == ["OPENROUTER_API_KEY"] and "OPENROUTER_API_KEY" not in transport["env"]
    assert {k: transport["env"][k] for k in USER} == USER
    command, env = launch_of("codex", transport, home.env)  # env_vars: forwarded from Codex's environment
    await call_as_launched(sim, command, env)
    written = (home.root / ".codex/config.toml").read_text()
    assert written.startswith("tool_output_token_limit = 28000\n")
    # Codex's own diagnosis: every key written is one it knows (tool_output_token_limit, env_vars), and
    # the variable the entry forwards is set; without it, Codex names it as host-config does.
    checks = codex_doctor(home, codex)
    assert "unrecognized" not in json.dumps(checks["config.load"]), checks["config.load"]
    assert checks["mcp.config"]["status"] == "ok", checks["mcp.config"]
    home.env.pop("OPENROUTER_API_KEY")
    assert codex_doctor(home, codex)["mcp.config"]["details"]["fusion"] == "env var OPENROUTER_API_KEY is not set"


def codex_doctor(home: Home, codex: str) -> dict[str, Any]:
    """``codex doctor --json``'s checks, its reachability probes sent to a closed local port (kept offline)."""
    closed = {k: "http://127.0.0.1:9" for k in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")}
    out = subprocess.run(
        [codex, "doctor", "--json"],
        cwd=home.project,
        env=home.env | closed,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    checks: dict[str, Any] = json.loads(out.stdout)["checks"]  # it exits 1 for the missing login: no matter
    return checks


async def test_opencode_reads_the_entry_and_starts_the_server(home: Home, sim: ProviderSim) -> None:
    opencode = binary("opencode")
    home.host_config("opencode")
    resolved = json.loads(home.run(opencode, "debug", "config").stdout)["mcp"]["fusion"]
    assert resolved["type"] == "local" and resolved["enabled"] is True
    assert resolved["command"] == [console_script()]
    assert {k: resolved["environment"][k] for k in USER} == USER
    # opencode shows the resolved config with secrets masked: the key's {env:...} is expanded from the file.
    written = entry_of("opencode", (home.root / ".config/opencode/opencode.json").read_text())
    assert written["environment"]["OPENROUTER_API_KEY"] == "{env:OPENROUTER_API_KEY}"
    command, env = launch_of("opencode", written, home.env)
    assert command == resolved["command"] and env["OPENROUTER_API_KEY"] == API_KEY
    assert {k: v for k, v in env.items() if resolved["environment"][k] != "***"} == {
        k: v for k, v in resolved["environment"].items() if v != "***"
    }
    await call_as_launched(sim, command, env)
    # opencode starts the server itself to list it.
    listed = re.sub(r"\x1b\[[0-9;]*m", "", home.run(opencode, "mcp", "list").stdout)
    assert "✓ fusion connected" in listed


@pytest.mark.parametrize(
    ("host", "where"),
    [
        ("claude-desktop", ".config/Claude/claude_desktop_config.json"),
        ("cursor", ".cursor/mcp.json"),
        ("vscode", "project/.vscode/mcp.json"),
    ],
)
async def test_hosts_without_a_cli_start_the_server_from_the_written_file(
    home: Home, sim: ProviderSim, host: str, where: str
) -> None:
    out = home.run(console_script(), "host-config", host, "--write")
    assert API_KEY not in out.stdout + out.stderr
    entry = entry_of(host, (home.root / where).read_text())
    command, env = launch_of(host, entry, home.env, {"openrouter-key": API_KEY})
    # Claude Desktop expands nothing: the user pastes the key over the placeholder.
    env = {k: API_KEY if v == "sk-or-v1-..." else v for k, v in env.items()}
    await call_as_launched(sim, command, env)


TOKEN = "host-token-0123456789abcdef"


@pytest.mark.parametrize("host", ["claude-code", "opencode", "codex"])
def test_each_host_sends_the_token_its_http_entry_refers_to(home: Home, sim: ProviderSim, host: str) -> None:
    program = binary(host)
    with servers.http_server(sim_env(sim, FUSION_HTTP_TOKEN=TOKEN)) as running:
        url = f"{running.base}/mcp"
        home.env["FUSION_HTTP_TOKEN"] = TOKEN  # in the host's environment only, never in its config
        out = home.run(console_script(), "host-config", host, "--transport", "http", "--url", url, "--token", "--write")
        assert "is not set here" not in out.stderr
        configs = [p for p in home.root.rglob("*") if p.is_file() and p.suffix in (".json", ".toml")]
        written = "".join(p.read_text(errors="replace") for p in configs)  # Codex's config.toml too
        assert TOKEN not in written + out.stdout + out.stderr
        if host == "codex":  # `codex mcp list` does not connect: it reports the variable it will read
            got = json.loads(home.run(program, "mcp", "get", "fusion", "--json").stdout)["transport"]
            assert got["type"] == "streamable_http" and got["url"] == url
            assert got["bearer_token_env_var"] == "FUSION_HTTP_TOKEN"
            return
        assert connected(home, host, program)
        home.env["FUSION_HTTP_TOKEN"] = "wrong-token-0123456789abcdef"
        assert not connected(home, host, program)  # the header really carries the variable's value


def connected(home: Home, host: str, program: str) -> bool:
    """The host's ``mcp list`` (which connects to each server) reports ``fusion`` connected."""
    if host == "claude-code":
        (home.root / ".claude").mkdir(exist_ok=True)
        (home.root / ".claude/settings.json").write_text(json.dumps({"enableAllProjectMcpServers": True}))
    listed = re.sub(r"\x1b\[[0-9;]*m", "", home.run(program, "mcp", "list").stdout)
    return "✔ Connected" in listed if host == "claude-code" else "✓ fusion connected" in listed
