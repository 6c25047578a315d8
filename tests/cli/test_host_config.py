"""``fusion-mcp host-config``: each host's entry parses in its own format, names an existing absolute
executable, starts the server as the host would, and ``--write`` merges it without losing anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from fusion_mcp.cli.host_config import CODEX_OUTPUT_MARGIN, HOSTS, canonical_mcp_json, main, transient_place
from fusion_mcp.cli.main import _parser
from fusion_mcp.config import load_settings
from tests.cli.entries import SERVERS, command_of, entry_of, env_of, launch_of, parse
from tests.conftest import API_KEY, HOME_DIR, REPO, child_env, console_script
from tests.fakes.provider_sim import ProviderSim
from tests.helpers import TOOL, structured

USER_PANEL = ("~openai/gpt-latest", "~google/gemini-pro-latest")
USER_ANALYST = "~google/gemini-pro-latest"
USER = {"FUSION_ANALYSIS_MODELS": ",".join(USER_PANEL), "FUSION_MODEL": USER_ANALYST, "FUSION_WEB_TOOLS": "off"}
UNSET = (
    "fusion-mcp: OPENROUTER_API_KEY is not set here, and the entry reads it from the environment {title} runs in: "
    "set it there before starting {title}, which says so at best in a diagnostic"
)


def host_config(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script(), "host-config", *args],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_every_host_has_an_entry_format() -> None:
    assert set(HOSTS) | {"mcp-json"} == set(SERVERS)


REFERENCES = {
    "claude-desktop": "sk-or-v1-...",
    "claude-code": "${OPENROUTER_API_KEY}",
    "cursor": "${env:OPENROUTER_API_KEY}",
    "vscode": "${input:openrouter-key}",
    "opencode": "{env:OPENROUTER_API_KEY}",
}


CODEX_BUDGET = {"FUSION_MAX_OUTPUT_CHARS": "24000"}
"""The Codex entry states the budget it raised Codex's limit to: else the server fits results to Codex's default."""


@pytest.mark.parametrize("host", list(HOSTS))
def test_each_stdio_entry_parses_and_names_an_existing_absolute_executable(host: str) -> None:
    out = host_config(host, OPENROUTER_API_KEY=API_KEY)  # a key in force here is never copied into the entry
    assert out.returncode == 0, out.stderr
    document = parse(host, out.stdout)
    entry = document[SERVERS[host]]["fusion"]
    command = command_of(host, entry)
    assert os.path.isabs(command[0]) and os.access(command[0], os.X_OK), command
    assert command[0] == console_script()  # the one installed here, not whatever "fusion-mcp" a PATH finds
    if host == "codex":  # Codex forwards the variable from its own environment
        assert entry["env_vars"] == ["OPENROUTER_API_KEY"] and env_of(host, entry) == CODEX_BUDGET
    else:
        assert env_of(host, entry) == {"OPENROUTER_API_KEY": REFERENCES[host]}
    if host == "vscode":
        assert document["inputs"] == [
            {"type": "promptString", "id": "openrouter-key", "description": "OpenRouter API key", "password": True}
        ]
    if host == "claude-code":
        assert entry["type"] == "stdio"
        # The name before the options: --env takes several values and would swallow it.
        assert (
            "claude mcp add fusion --scope user --transport stdio --env 'OPENROUTER_API_KEY=${OPENROUTER_API_KEY}' "
            f"-- {console_script()}"
        ) in out.stderr
    placeholder = (
        "fusion-mcp: replace sk-or-v1-... with your OpenRouter API key (create one at https://openrouter.ai/keys)"
    )
    assert (placeholder in out.stderr) == (host == "claude-desktop")
    no_variables = (
        "fusion-mcp: Claude Desktop reads no variable from its environment: to keep secrets out of its config, put "
        "them in a config file (chmod 600) and run host-config again with --config FILE, or install the .mcpb bundle, "
        "which keeps the key in the system keychain "
        "(https://github.com/fusion-panel-mcp/fusion-mcp/blob/main/docs/hosts.md#claude-desktop-one-click-bundle)"
    )
    assert (no_variables in out.stderr.splitlines()) == (host == "claude-desktop")
    assert "is not set here" not in out.stderr  # the key is set: nothing to warn about
    assert API_KEY not in out.stdout + out.stderr


@pytest.mark.parametrize("host", ["claude-code", "cursor", "codex", "opencode"])
def test_an_entry_reading_an_unset_variable_is_named_on_stderr(host: str) -> None:
    out = host_config(host)
    assert out.returncode == 0
    assert UNSET.format(title=HOSTS[host].title) in out.stderr.splitlines()


def test_the_users_settings_travel_with_the_entry_and_defaults_and_the_depth_do_not() -> None:
    out = host_config(
        "claude-code",
        OPENROUTER_API_KEY=API_KEY,
        FUSION_PRESET="quality",
        FUSION_DEPTH="2",  # not the default, and still not carried: each launch starts at its own depth
        BRAVE_API_KEY=API_KEY,
        **USER,
    )
    env = env_of("claude-code", entry_of("claude-code", out.stdout))
    secrets = {"OPENROUTER_API_KEY": "${OPENROUTER_API_KEY}", "BRAVE_API_KEY": "${BRAVE_API_KEY}"}
    assert env == secrets | USER  # the default preset, the depth and no secret's value
    assert API_KEY not in out.stdout + out.stderr


def test_a_config_file_in_use_is_pointed_at_and_not_repeated(tmp_path: Path) -> None:
    config = tmp_path / "fusion.toml"
    config.write_text(f'api_key = "{API_KEY}"\n[fusion]\nmodel = "{USER_ANALYST}"\nweb_tools = "off"\n')
    for host in HOSTS:
        # The file's own values, and the same value again in the environment, are the file's to say.
        out = host_config(host, FUSION_CONFIG=str(config), FUSION_MODEL=USER_ANALYST, FUSION_MAX_TOOL_CALLS="3")
        assert out.returncode == 0, out.stderr
        entry = entry_of(host, out.stdout)
        expected = {"FUSION_MAX_TOOL_CALLS": "3", "FUSION_CONFIG": str(config)}
        assert env_of(host, entry) == expected | (CODEX_BUDGET if host == "codex" else {}), host
        assert "env_vars" not in entry and "inputs" not in parse(host, out.stdout)
        assert "sk-or-v1-..." not in out.stdout and "replace" not in out.stderr and "not set here" not in out.stderr
    assert API_KEY not in out.stdout


def test_a_key_here_that_overrides_the_files_is_referenced(tmp_path: Path) -> None:
    config = tmp_path / "fusion.toml"
    config.write_text('api_key = "sk-or-v1-..."\n')  # the file alone would not start: the variable overrides it
    out = host_config("opencode", "--config", str(config), OPENROUTER_API_KEY=API_KEY)
    env = env_of("opencode", entry_of("opencode", out.stdout))
    assert env == {"OPENROUTER_API_KEY": "{env:OPENROUTER_API_KEY}", "FUSION_CONFIG": str(config)}


def test_the_entry_carries_a_local_base_url_and_the_config_file_in_use(tmp_path: Path) -> None:
    config = tmp_path / "fusion.toml"
    config.write_text('[fusion]\npreset = "fast"\n')
    out = host_config("codex", "--config", str(config), OPENROUTER_BASE_URL="http://localhost:11434/v1")
    document = tomllib.loads(out.stdout)
    # No key for a local server that needs none; the base URL and the config file travel with the entry.
    assert document["mcp_servers"]["fusion"]["env"] == CODEX_BUDGET | {
        "OPENROUTER_BASE_URL": "http://localhost:11434/v1",
        "FUSION_CONFIG": str(config),
    }
    assert "env_vars" not in document["mcp_servers"]["fusion"]
    # Codex keeps ~12,000 characters of a tool result unless told more: the server's 24,000 and its wrapping.
    assert document["tool_output_token_limit"] == 24000 + CODEX_OUTPUT_MARGIN
    assert out.stdout.startswith(f"tool_output_token_limit = {24000 + CODEX_OUTPUT_MARGIN}\n\n[mcp_servers.fusion]")
    more = tomllib.loads(host_config("codex", FUSION_MAX_OUTPUT_CHARS="50000").stdout)
    assert more["tool_output_token_limit"] == 50000 + CODEX_OUTPUT_MARGIN
    assert more["mcp_servers"]["fusion"]["env"] == {"FUSION_MAX_OUTPUT_CHARS": "50000"}


@pytest.mark.anyio
@pytest.mark.parametrize("host", list(SERVERS))
async def test_the_printed_entry_starts_the_server_as_a_host_would(sim: ProviderSim, host: str) -> None:
    here = {"OPENROUTER_API_KEY": API_KEY, "OPENROUTER_BASE_URL": sim.base_url} | USER
    entry = entry_of(host, host_config(host, **here).stdout)
    # The host's expansion with the key in its environment; what the user pastes for a placeholder or a prompt.
    command, env = launch_of(host, entry, here, {"openrouter-key": API_KEY})
    env = {k: API_KEY if v == "sk-or-v1-..." else v for k, v in env.items()}
    base = child_env(FUSION_HOME=HOME_DIR, FUSION_CACHE="off")
    if host == "mcp-json":  # the canonical entry, as written: the fusion-mcp on PATH, the key filled in by the user
        assert command == ["fusion-mcp"]
        base["PATH"] = os.pathsep.join([str(Path(console_script()).parent), base["PATH"]])
        env |= {"OPENROUTER_BASE_URL": sim.base_url} | USER  # the user's own settings, and the simulator
    params = StdioServerParameters(command=command[0], args=command[1:], env=base | env)
    async with Client(params, mode="legacy") as client:
        assert [t.name for t in (await client.list_tools()).tools] == [TOOL]
        assert structured(await client.call_tool(TOOL, {"prompt": "q"}))["status"] == "ok"
    assert {r.model for r in sim.requests} == set(USER_PANEL)  # the user's panel, not the default one


@pytest.mark.parametrize("host", [h for h in HOSTS if h != "claude-desktop"])
def test_http_entries_name_the_url_and_how_the_token_is_sent(host: str) -> None:
    out = host_config(host, "--transport", "http", "--url", "https://fusion.example.com/mcp", "--token")
    assert out.returncode == 0, out.stderr
    document = parse(host, out.stdout)
    entry = document[SERVERS[host]]["fusion"]
    assert entry["url"] == "https://fusion.example.com/mcp"
    expected = {
        "claude-code": ("headers", {"Authorization": "Bearer ${FUSION_HTTP_TOKEN}"}),
        "cursor": ("headers", {"Authorization": "Bearer ${env:FUSION_HTTP_TOKEN}"}),
        "vscode": ("headers", {"Authorization": "Bearer ${input:fusion-token}"}),
        "codex": ("bearer_token_env_var", "FUSION_HTTP_TOKEN"),
        "opencode": ("headers", {"Authorization": "Bearer {env:FUSION_HTTP_TOKEN}"}),
    }[host]
    assert entry[expected[0]] == expected[1]
    assert "command" not in entry and "env" not in entry
    unset = (
        f"fusion-mcp: FUSION_HTTP_TOKEN is not set here, and the entry reads it from the environment "
        f"{HOSTS[host].title} runs in: set it there before starting {HOSTS[host].title}, which says so at best in "
        "a diagnostic"
    )
    assert (unset in out.stderr.splitlines()) == (host != "vscode")
    quiet = host_config(host, "--transport", "http", "--token", FUSION_HTTP_TOKEN="t" * 40)
    assert "is not set here" not in quiet.stderr
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
    code = main(args, load_settings(environ={}), environ={})
    return code, capsys.readouterr().err


EXISTING_JSON = {
    "globalShortcut": "Ctrl+Space",
    "inputs": [{"type": "promptString", "id": "other-key", "description": "other", "password": True}],
}
OTHER = {"command": "/usr/bin/other-server", "args": ["--flag"], "env": {"OTHER_KEY": "x"}}


@pytest.mark.parametrize("host", [h for h in HOSTS if h != "codex"])
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
    # Comments and other tables untouched; Codex's output limit goes where top-level keys may be.
    limit = f"tool_output_token_limit = {24000 + CODEX_OUTPUT_MARGIN}\n\n"
    assert text.startswith(
        CODEX.replace("\n[mcp_servers.other]", f"\n{limit}[mcp_servers.other]").split("[mcp_servers.fusion]")[0]
    )
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
        "env_vars": ["OPENROUTER_API_KEY"],
        "env": CODEX_BUDGET,
    }
    assert data["model"] == "gpt-5" and data["profiles"] == {"fast": {"model": "gpt-5-mini"}}
    assert data["tool_output_token_limit"] == 24000 + CODEX_OUTPUT_MARGIN


@pytest.mark.parametrize(("old", "kept"), [(100, 24000 + CODEX_OUTPUT_MARGIN), (90000, 90000)])
def test_write_raises_a_lower_codex_output_limit_and_keeps_a_higher_one(
    old: int, kept: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'model = "gpt-5"\ntool_output_token_limit = {old}\n\n[profiles.fast]\nmodel = "gpt-5-mini"\n')
    assert write(capsys, "codex", "--file", str(path))[0] == 0
    text = path.read_text()
    assert text.startswith(f'model = "gpt-5"\ntool_output_token_limit = {kept}\n')
    assert text.count("tool_output_token_limit") == 1
    assert tomllib.loads(text)["tool_output_token_limit"] == kept


def test_the_repositorys_mcp_json_is_the_canonical_entry() -> None:
    assert (REPO / "mcp.json").read_text() == canonical_mcp_json()
    out = host_config("mcp-json", OPENROUTER_API_KEY=API_KEY, FUSION_MODEL=USER_ANALYST)
    assert out.stdout == canonical_mcp_json()  # nothing of this machine or its settings
    entry = entry_of("mcp-json", out.stdout)
    assert entry == {"command": "fusion-mcp", "args": [], "env": {"OPENROUTER_API_KEY": "sk-or-v1-..."}}


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


@pytest.mark.parametrize(
    ("where", "place"),
    [
        (".cache/uv/archive-v0/k3x/bin", "uv's cache"),
        ("home/.local/pipx/.cache/f00/bin", "a cache directory"),
        ("venv/bin", "a temporary directory"),
    ],
)
def test_a_command_that_lives_where_it_may_vanish_is_named(tmp_path: Path, where: str, place: str) -> None:
    """uvx and ``pipx run`` start commands from caches they clean, and a temporary folder goes at a reboot:
    the entry would name a path that stops existing, so host-config says where it runs from."""
    bin_dir = tmp_path / where
    bin_dir.mkdir(parents=True)
    # Python and the command as such a tool lays them out (links to this installation's).
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "fusion-mcp").symlink_to(console_script())
    site = next(p for p in sys.path if p.endswith("site-packages"))
    out = subprocess.run(
        [str(bin_dir / "python"), "-m", "fusion_mcp", "host-config", "cursor"],
        env=child_env(PYTHONPATH=os.pathsep.join([str(REPO), site]), OPENROUTER_API_KEY=API_KEY),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert command_of("cursor", entry_of("cursor", out.stdout))[0] == str(bin_dir / "fusion-mcp")
    warning = [line for line in out.stderr.splitlines() if "which may be cleaned away" in line]
    assert len(warning) == 1 and f"this fusion-mcp runs from {place}" in warning[0], out.stderr
    assert warning[0].endswith(
        "and the entry would then start nothing: install it for good (uv tool install or pipx: the README's Quick "
        "start) and run host-config again"
    )


@pytest.mark.parametrize(
    ("command", "place"),
    [
        ("/root/.cache/uv/archive-v0/Kx1/bin/fusion-mcp", "uv's cache"),
        ("/Users/me/Library/Caches/pipx/f00/bin/fusion-mcp", "a cache directory"),
        ("/home/me/src/cachetools/.venv/bin/fusion-mcp", None),  # a word with "cache" in it is no cache
        ("/home/me/.local/bin/fusion-mcp", None),
        ("/opt/pipx/venvs/fusion-panel-mcp/bin/fusion-mcp", None),
    ],
)
def test_where_a_command_may_vanish(command: str, place: str | None) -> None:
    assert transient_place(command) == place


def test_a_command_in_a_lasting_place_gets_no_such_warning() -> None:
    out = host_config("cursor", OPENROUTER_API_KEY=API_KEY)
    # This installation is a lasting place unless the checkout itself sits in a temporary folder.
    lasting = transient_place(console_script()) is None
    assert out.returncode == 0 and ("which may be cleaned away" not in out.stderr) == lasting


SECRETS = {
    "OPENROUTER_API_KEY": "sk-or-v1-CANARY-key-0123456789",
    "FUSION_DATABASE_URL": "postgresql://fusion:CANARY-db-password@db.example:5432/fusion",
    "FUSION_HTTP_TOKEN": "CANARY-token-0123456789abcdef",
    "FUSION_HTTP_TOKENS": "alice:CANARY-alice-0123456789ab",
    "BRAVE_API_KEY": "CANARY-brave-0123456789",
    "TAVILY_API_KEY": "CANARY-tavily-0123456789",
    # Not a secret setting, but a URL with a password in it is carried as one.
    "OPENROUTER_BASE_URL": "https://gateway-user:CANARY-url-password@gateway.example/v1",
}


@pytest.mark.parametrize(
    ("host", "transport"),
    [(h, t) for h in HOSTS for t in ("stdio", "http") if t == "stdio" or HOSTS[h].http],
)
def test_no_secret_reaches_the_entry_the_file_or_the_terminal(tmp_path: Path, host: str, transport: str) -> None:
    target = tmp_path / ("config.toml" if HOSTS[host].format == "toml" else "config.json")
    out = host_config(host, "--transport", transport, "--write", "--file", str(target), **SECRETS)
    assert out.returncode == 0, out.stderr
    seen = out.stdout + out.stderr + target.read_text()
    assert "CANARY" not in seen, [line for line in seen.splitlines() if "CANARY" in line]
    if transport == "stdio" and HOSTS[host].reads_env:
        # Each is referenced for the host to expand from its environment: the server still gets every one.
        _, env = launch_of(host, entry_of(host, out.stdout), SECRETS)
        assert {k: env.get(k) for k in SECRETS} == SECRETS


def test_a_relative_home_travels_as_an_absolute_path(tmp_path: Path) -> None:
    out = subprocess.run(
        [console_script(), "host-config", "claude-code"],
        env=child_env(OPENROUTER_API_KEY=API_KEY, FUSION_HOME="state/fusion"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    # The host starts the server in a directory of its own: a relative path would land elsewhere.
    assert env_of("claude-code", entry_of("claude-code", out.stdout))["FUSION_HOME"] == str(tmp_path / "state/fusion")


def test_a_key_in_a_file_that_only_holds_with_the_environment_is_not_added(tmp_path: Path) -> None:
    config = tmp_path / "fusion.toml"
    config.write_text(f'api_key = "{API_KEY}"\nmax_tool_calls = 99\n')  # 99 is out of range; the variable wins
    out = host_config("claude-code", FUSION_CONFIG=str(config), FUSION_MAX_TOOL_CALLS="3")
    assert out.returncode == 0, out.stderr
    env = env_of("claude-code", entry_of("claude-code", out.stdout))
    # A reference to an unset OPENROUTER_API_KEY would override the file's key and stop the server at start.
    assert env == {"FUSION_MAX_TOOL_CALLS": "3", "FUSION_CONFIG": str(config)}
