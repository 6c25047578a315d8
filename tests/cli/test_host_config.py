"""``fusion-mcp host-config``: each host's entry parses in its own format, names an existing absolute
executable, starts the server as the host would, and ``--write`` merges it without losing anything."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from fusion_mcp.cli.host_config import HOSTS, main
from fusion_mcp.cli.main import _parser
from fusion_mcp.config import load_settings
from tests.conftest import API_KEY, child_env, console_script, sim_env
from tests.fakes.provider_sim import ProviderSim
from tests.helpers import TOOL, structured

SERVERS = {"claude-desktop": "mcpServers", "claude-code": "mcpServers", "cursor": "mcpServers"}
SERVERS |= {"vscode": "servers", "codex": "mcp_servers", "opencode": "mcp"}


def host_config(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script(), "host-config", *args],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def parse(host: str, text: str) -> dict[str, Any]:
    return tomllib.loads(text) if host == "codex" else json.loads(text)


def command_of(host: str, entry: dict[str, Any]) -> list[str]:
    return entry["command"] if host == "opencode" else [entry["command"], *entry["args"]]


def env_of(host: str, entry: dict[str, Any]) -> dict[str, str]:
    return entry["environment" if host == "opencode" else "env"]


def test_every_host_has_an_entry_format() -> None:
    assert set(HOSTS) == set(SERVERS)


@pytest.mark.parametrize("host", list(SERVERS))
def test_each_stdio_entry_parses_and_names_an_existing_absolute_executable(host: str) -> None:
    out = host_config(host, OPENROUTER_API_KEY=API_KEY)  # a key in force here is never copied into the entry
    assert out.returncode == 0, out.stderr
    document = parse(host, out.stdout)
    entry = document[SERVERS[host]]["fusion"]
    command = command_of(host, entry)
    assert os.path.isabs(command[0]) and os.access(command[0], os.X_OK), command
    assert command[0] == console_script()  # the one installed here, not whatever "fusion-mcp" a PATH finds
    key = env_of(host, entry)["OPENROUTER_API_KEY"]
    if host == "vscode":
        assert key == "${input:openrouter-key}"
        assert document["inputs"] == [
            {"type": "promptString", "id": "openrouter-key", "description": "OpenRouter API key", "password": True}
        ]
    elif host == "claude-code":
        assert key == "${OPENROUTER_API_KEY}" and entry["type"] == "stdio"
        assert "claude mcp add --scope user --transport stdio --env OPENROUTER_API_KEY=sk-or-v1-... fusion -- " in (
            out.stderr
        )
    else:
        assert key == "sk-or-v1-..." and "replace sk-or-v1-... with your OpenRouter API key" in out.stderr
    assert API_KEY not in out.stdout + out.stderr


def test_the_entry_carries_a_local_base_url_and_the_config_file_in_use(tmp_path: Path) -> None:
    config = tmp_path / "fusion.toml"
    config.write_text('[fusion]\npreset = "fast"\n')
    out = host_config("codex", "--config", str(config), OPENROUTER_BASE_URL="http://localhost:11434/v1")
    entry = tomllib.loads(out.stdout)["mcp_servers"]["fusion"]
    # No key for a local server that needs none; the base URL and the config file travel with the entry.
    assert entry["env"] == {"OPENROUTER_BASE_URL": "http://localhost:11434/v1", "FUSION_CONFIG": str(config)}


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["claude-desktop", "codex", "opencode"])
async def test_the_printed_entry_starts_the_server_as_a_host_would(sim: ProviderSim, host: str) -> None:
    entry = parse(host, host_config(host).stdout)[SERVERS[host]]["fusion"]
    command = command_of(host, entry)
    # What the user fills in: the real key; the test also points the server at the simulator.
    env = {k: API_KEY if k == "OPENROUTER_API_KEY" else v for k, v in env_of(host, entry).items()}
    params = StdioServerParameters(command=command[0], args=command[1:], env=child_env(**(sim_env(sim) | env)))
    async with Client(params, mode="legacy") as client:
        assert [t.name for t in (await client.list_tools()).tools] == [TOOL]
        assert structured(await client.call_tool(TOOL, {"prompt": "q"}))["status"] == "ok"


@pytest.mark.parametrize("host", [h for h in SERVERS if h != "claude-desktop"])
def test_http_entries_name_the_url_and_how_the_token_is_sent(host: str) -> None:
    out = host_config(host, "--transport", "http", "--url", "https://fusion.example.com/mcp", "--token")
    assert out.returncode == 0, out.stderr
    document = parse(host, out.stdout)
    entry = document[SERVERS[host]]["fusion"]
    assert entry["url"] == "https://fusion.example.com/mcp"
    expected = {
        "claude-code": ("headers", {"Authorization": "Bearer ${FUSION_HTTP_TOKEN}"}),
        "cursor": ("headers", {"Authorization": "Bearer <FUSION_HTTP_TOKEN>"}),
        "vscode": ("headers", {"Authorization": "Bearer ${input:fusion-token}"}),
        "codex": ("bearer_token_env_var", "FUSION_HTTP_TOKEN"),
        "opencode": ("headers", {"Authorization": "Bearer <FUSION_HTTP_TOKEN>"}),
    }[host]
    assert entry[expected[0]] == expected[1]
    assert "command" not in entry and "env" not in entry
    plain = parse(host, host_config(host, "--transport", "http").stdout)[SERVERS[host]]["fusion"]
    assert plain["url"] == "http://127.0.0.1:8765/mcp" and "headers" not in plain


def test_claude_desktop_takes_stdio_only_and_bad_options_are_named() -> None:
    out = host_config("claude-desktop", "--transport", "http")
    assert out.returncode == 1 and out.stdout == ""
    assert "Claude Desktop's config file starts stdio servers only" in out.stderr
    bad = host_config("cursor", "--name", "two words")
    assert bad.returncode == 1 and "--name must be letters, digits, '-' or '_' (got 'two words')" in bad.stderr
    url = host_config("cursor", "--url", "ftp://x")
    assert url.returncode == 1 and "--url must be an http:// or https:// URL" in url.stderr


# --- --write: in process, through the command's own parser -----------------------------------------


def write(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    args = _parser().parse_args(["host-config", *argv, "--write"])
    code = main(args, load_settings(environ={}))
    return code, capsys.readouterr().err


EXISTING_JSON = {
    "globalShortcut": "Ctrl+Space",
    "inputs": [{"type": "promptString", "id": "other-key", "description": "other", "password": True}],
}
OTHER = {"command": "/usr/bin/other-server", "args": ["--flag"], "env": {"OTHER_KEY": "x"}}


@pytest.mark.parametrize("host", [h for h in SERVERS if h != "codex"])
def test_write_merges_into_a_json_file_with_other_servers_and_keeps_a_backup(
    host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.json"
    old = EXISTING_JSON | {SERVERS[host]: {"other": OTHER, "fusion": {"command": "/old/fusion-mcp"}}}
    path.write_text(json.dumps(old))
    path.chmod(0o600)
    code, err = write(capsys, host, "--file", str(path))
    assert code == 0 and f"replaced server 'fusion' in {path}" in err
    new = json.loads(path.read_text())
    assert new[SERVERS[host]]["other"] == OTHER and new["globalShortcut"] == "Ctrl+Space"
    assert command_of(host, new[SERVERS[host]]["fusion"])[0] == console_script()
    ids = [i["id"] for i in new["inputs"]]
    assert ids == (["other-key", "openrouter-key"] if host == "vscode" else ["other-key"])
    (backup,) = tmp_path.glob("config.json.*.bak")
    assert json.loads(backup.read_text()) == old and f"kept as {backup}" in err
    assert path.stat().st_mode & 0o777 == 0o600  # a file holding keys stays private
    # Again: the same one entry, replaced, not duplicated.
    assert write(capsys, host, "--file", str(path))[0] == 0
    assert set(json.loads(path.read_text())[SERVERS[host]]) == {"other", "fusion"}


def test_write_creates_the_hosts_own_file_where_it_looks_for_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CODEX_HOME", str(tmp_path / "codex"))
    for host, where in [
        ("cursor", ".cursor/mcp.json"),
        ("codex", "codex/config.toml"),
        ("opencode", "xdg/opencode/opencode.json"),
    ]:
        code, err = write(capsys, host)
        assert code == 0 and f"added server 'fusion' in {tmp_path / where}" in err
        assert "fusion" in parse(host, (tmp_path / where).read_text())[SERVERS[host]]
    opencode = json.loads((tmp_path / "xdg/opencode/opencode.json").read_text())
    assert opencode["$schema"] == "https://opencode.ai/config.json"
    assert not list(tmp_path.rglob("*.bak"))  # nothing to back up


CODEX = """# my codex settings
model = "gpt-5"

[mcp_servers.other]
command = "/usr/bin/other-server"  # keep this comment
args = ["--flag"]

[mcp_servers.other.env]
OTHER_KEY = "x"

[mcp_servers.fusion]
command = "/old/fusion-mcp"

[mcp_servers.fusion.env]
OPENROUTER_API_KEY = "sk-or-v1-old"

[profiles.fast]
model = "gpt-5-mini"
"""


def test_write_replaces_our_codex_table_and_keeps_everything_else_byte_for_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(CODEX)
    code, err = write(capsys, "codex", "--file", str(path))
    assert code == 0 and "replaced server 'fusion'" in err
    text = path.read_text()
    assert text.startswith(CODEX.split("[mcp_servers.fusion]")[0])  # comments and other tables untouched
    assert '[profiles.fast]\nmodel = "gpt-5-mini"' in text and "/old/fusion-mcp" not in text
    data = tomllib.loads(text)
    assert data["mcp_servers"]["other"] == {
        "command": "/usr/bin/other-server",
        "args": ["--flag"],
        "env": {"OTHER_KEY": "x"},
    }
    assert data["mcp_servers"]["fusion"] == {
        "command": console_script(),
        "args": [],
        "env": {"OPENROUTER_API_KEY": "sk-or-v1-..."},
    }
    assert data["model"] == "gpt-5" and data["profiles"] == {"fast": {"model": "gpt-5-mini"}}


@pytest.mark.parametrize(
    ("host", "content", "message"),
    [
        ("vscode", '{"servers": {}, // a comment\n}', "is not plain JSON"),
        ("cursor", '{"mcpServers": []}', "'mcpServers' is not a JSON object"),
        ("codex", 'mcp_servers = { fusion = { command = "/old" } }\n', "cannot replace safely"),
        ("codex", "not [valid toml", "is not valid TOML"),
    ],
)
def test_write_refuses_what_it_cannot_merge_safely_and_touches_nothing(
    host: str, content: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config"
    path.write_text(content)
    code, err = write(capsys, host, "--file", str(path))
    assert code == 1 and message in err and "nothing was written" in err
    assert path.read_text() == content and not list(tmp_path.glob("*.bak"))
