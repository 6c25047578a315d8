"""``fusion-mcp host-config HOST``: the entry that makes an MCP host start this server, in that host's format.

Hosts start servers with a minimal environment and PATH, so the entry names the absolute path of the
``fusion-mcp`` being run and passes the settings the server needs in its ``env``: the API key as a
placeholder (VS Code prompts for it as a password input; Claude Code's project file reads it from the
environment, since that file is often committed), the base URL when it is not OpenRouter's, and the
config file when one is in use. ``--transport http`` gives an entry for a running ``serve --transport
http`` instead.

``--write`` merges the entry into the host's config file: the old file is kept as a timestamped backup,
every other server and setting stays, and the result is parsed back and compared before it replaces the
original, so a file this module cannot merge safely (JSON with comments, a TOML table written inline) is
left untouched with a message saying what to do by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from ..config import KEYS_PAGE, OPENROUTER_BASE_URL, Settings
from ..core.about import COMMAND

KEY_PLACEHOLDER = "sk-or-v1-..."
TOKEN_PLACEHOLDER = "<FUSION_HTTP_TOKEN>"
DEFAULT_URL = "http://127.0.0.1:8765/mcp"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class Launch:
    """What a host needs to reach the server, before any host's spelling of it."""

    command: str
    args: list[str]
    env: dict[str, str]
    """Environment the server needs; the key's value is :data:`KEY_PLACEHOLDER` until a host replaces it."""
    url: str | None = None
    """Set for an HTTP entry (then ``command`` is unused)."""
    token: bool = False
    """The HTTP server asks for a bearer token."""


@dataclass(frozen=True)
class Host:
    title: str
    format: Literal["json", "toml"]
    servers_key: str
    """Where the file keeps its servers: ``mcpServers``, ``servers``, ``mcp`` or ``mcp_servers``."""
    default_file: Callable[[], Path]
    stdio: Callable[[Launch], dict[str, Any]]
    http: Callable[[Launch], dict[str, Any]] | None
    """None: the host's config file takes stdio servers only."""
    extra: Callable[[Launch], dict[str, Any]] = field(default=lambda _: {})
    """Top-level keys the entry needs beside the servers (VS Code's password inputs)."""
    new_file: dict[str, Any] = field(default_factory=dict)
    """What a config file created from nothing starts with."""


def _home() -> Path:
    return Path.home()


def _xdg_config() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or _home() / ".config")


def _claude_desktop_file() -> Path:
    if sys.platform == "darwin":
        return _home() / "Library/Application Support/Claude/claude_desktop_config.json"
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA") or _home() / "AppData/Roaming") / "Claude/claude_desktop_config.json"
    return _xdg_config() / "Claude/claude_desktop_config.json"


def _codex_file() -> Path:
    return Path(os.environ.get("CODEX_HOME") or _home() / ".codex") / "config.toml"


def _bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def _with_env(launch: Launch, key_value: str) -> dict[str, str]:
    return {k: key_value if v == KEY_PLACEHOLDER else v for k, v in launch.env.items()}


def _plain_stdio(launch: Launch) -> dict[str, Any]:
    return {"command": launch.command, "args": launch.args, "env": launch.env}


def _http(token: str, typed: dict[str, Any] | None = None) -> Callable[[Launch], dict[str, Any]]:
    """An HTTP entry whose ``Authorization`` header (when the server asks for a token) carries ``token``."""
    return lambda ln: (typed or {}) | {"url": ln.url} | ({"headers": _bearer(token)} if ln.token else {})


def _typed_stdio(key: str) -> Callable[[Launch], dict[str, Any]]:
    """A ``"type": "stdio"`` entry whose key is ``key``: an expansion the host makes, not a placeholder."""
    return lambda ln: {"type": "stdio"} | _plain_stdio(ln) | {"env": _with_env(ln, key)}


def _vscode_inputs(launch: Launch) -> dict[str, Any]:
    inputs = []
    if launch.url is None and KEY_PLACEHOLDER in launch.env.values():
        inputs.append({"type": "promptString", "id": "openrouter-key", "description": "OpenRouter API key"})
    if launch.url is not None and launch.token:
        inputs.append({"type": "promptString", "id": "fusion-token", "description": "fusion-mcp bearer token"})
    return {"inputs": [i | {"password": True} for i in inputs]} if inputs else {}


HOSTS: dict[str, Host] = {
    "claude-desktop": Host("Claude Desktop", "json", "mcpServers", _claude_desktop_file, _plain_stdio, None),
    "claude-code": Host(
        "Claude Code",
        "json",
        "mcpServers",
        lambda: Path.cwd() / ".mcp.json",
        # A project's .mcp.json is often committed: the key comes from the environment Claude Code runs in.
        _typed_stdio("${OPENROUTER_API_KEY}"),
        _http("${FUSION_HTTP_TOKEN}", {"type": "http"}),
    ),
    "cursor": Host(
        "Cursor", "json", "mcpServers", lambda: _home() / ".cursor/mcp.json", _plain_stdio, _http(TOKEN_PLACEHOLDER)
    ),
    "vscode": Host(
        "VS Code",
        "json",
        "servers",
        lambda: Path.cwd() / ".vscode/mcp.json",
        _typed_stdio("${input:openrouter-key}"),
        _http("${input:fusion-token}", {"type": "http"}),
        _vscode_inputs,
    ),
    "codex": Host(
        "Codex",
        "toml",
        "mcp_servers",
        _codex_file,
        _plain_stdio,
        # Codex refuses a token written in its config; it reads it from the variable named here.
        lambda ln: {"url": ln.url} | ({"bearer_token_env_var": "FUSION_HTTP_TOKEN"} if ln.token else {}),
    ),
    "opencode": Host(
        "opencode",
        "json",
        "mcp",
        lambda: _xdg_config() / "opencode/opencode.json",
        lambda ln: {"type": "local", "command": [ln.command, *ln.args], "environment": ln.env, "enabled": True},
        lambda ln: (
            {"type": "remote", "url": ln.url, "enabled": True}
            | ({"headers": _bearer(TOKEN_PLACEHOLDER)} if ln.token else {})
        ),
        new_file={"$schema": "https://opencode.ai/config.json"},
    ),
}


class HostConfigError(Exception):
    """The entry cannot be made or merged; ``str()`` says why and what to do."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host", choices=list(HOSTS), help="the MCP host")
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio", help="default: stdio")
    parser.add_argument("--url", help=f"the HTTP server's MCP endpoint (default: {DEFAULT_URL})")
    parser.add_argument(
        "--token", action="store_true", help="the HTTP server asks for a bearer token: add its header (placeholder)"
    )
    parser.add_argument("--name", default="fusion", help="the server's name in the host (default: fusion)")
    parser.add_argument("--write", action="store_true", help="merge the entry into the host's config file")
    parser.add_argument("--file", metavar="PATH", help="the config file to --write (default: the host's own)")


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Print the entry (stdout: the snippet alone, so it can be piped); notes go to stderr."""
    host = HOSTS[args.host]
    try:
        launch = launch_for(settings, args)
        document = snippet(host, args.name, launch)
        print(render(host, document).rstrip("\n"))
        path = Path(args.file).expanduser() if args.file else host.default_file()
        if args.write:
            backup, replaced = write(host, path, args.name, document)
            done = "replaced" if replaced else "added"
            kept = f" (the old file is kept as {backup})" if backup else ""
            print(f"fusion-mcp: {done} server {args.name!r} in {path}{kept}", file=sys.stderr)
        else:
            print(f"fusion-mcp: add this to {path}, or run again with --write to merge it there", file=sys.stderr)
    except HostConfigError as exc:
        print(f"fusion-mcp: {exc}", file=sys.stderr)
        return 1
    for note in notes(args, launch):
        print(f"fusion-mcp: {note}", file=sys.stderr)
    return 0


def launch_for(settings: Settings, args: argparse.Namespace) -> Launch:
    if not _NAME.fullmatch(args.name):
        raise HostConfigError(f"--name must be letters, digits, '-' or '_' (got {args.name!r})")
    if args.transport == "http" or args.url:
        if HOSTS[args.host].http is None:
            raise HostConfigError(
                f"{HOSTS[args.host].title}'s config file starts stdio servers only: use the default stdio entry, "
                "or the .mcpb bundle (see the README)"
            )
        url = args.url or DEFAULT_URL
        if not url.startswith(("http://", "https://")):
            raise HostConfigError(f"--url must be an http:// or https:// URL (got {url!r})")
        return Launch("", [], {}, url=url, token=args.token or bool(settings.principals))
    command, command_args = executable()
    env: dict[str, str] = {}
    if settings.is_openrouter or settings.api_key is not None:
        env["OPENROUTER_API_KEY"] = KEY_PLACEHOLDER
    if settings.base_url != OPENROUTER_BASE_URL:
        env["OPENROUTER_BASE_URL"] = settings.base_url
    config = getattr(args, "config", None) or os.environ.get("FUSION_CONFIG")
    if config:
        env["FUSION_CONFIG"] = str(Path(config).expanduser().resolve())
    return Launch(command, command_args, env)


def executable() -> tuple[str, list[str]]:
    """The absolute command that starts this installation's server: the console script beside this Python
    (a venv's, pipx's), else the one on PATH, else this Python with ``-m fusion_mcp``."""
    beside = shutil.which(COMMAND, path=str(Path(sys.executable).parent))
    found = beside or shutil.which(COMMAND)
    if found:
        return str(Path(found).absolute()), []
    return str(Path(sys.executable).absolute()), ["-m", "fusion_mcp"]


def snippet(host: Host, name: str, launch: Launch) -> dict[str, Any]:
    """The host's config document holding just this server (and what it needs beside it)."""
    build = host.stdio if launch.url is None else host.http
    assert build is not None  # launch_for refused HTTP for a stdio-only host
    return host.extra(launch) | {host.servers_key: {name: build(launch)}}


def render(host: Host, document: dict[str, Any]) -> str:
    if host.format == "json":
        return json.dumps(document, indent=2)
    return to_toml(document)


def notes(args: argparse.Namespace, launch: Launch) -> list[str]:
    found: list[str] = []
    if KEY_PLACEHOLDER in launch.env.values() and args.host not in ("vscode", "claude-code"):
        found.append(f"replace {KEY_PLACEHOLDER} with your OpenRouter API key (create one at {KEYS_PAGE})")
    if args.host == "claude-code" and launch.url is None:
        found.append(
            "Claude Code reads OPENROUTER_API_KEY from the environment it runs in. For every project instead of "
            "this one: " + claude_code_command(args.name, launch)
        )
    if launch.token and args.host in ("cursor", "opencode"):
        found.append(f"replace {TOKEN_PLACEHOLDER} with the server's token")
    if launch.token and args.host in ("claude-code", "codex"):
        found.append("set FUSION_HTTP_TOKEN to the server's token in the environment the host runs in")
    if "/uv/" in launch.command.replace("\\", "/") and "cache" in launch.command.lower():
        found.append(
            "this fusion-mcp runs from uv's cache, which uv may clean: install it for good (uv tool install or "
            "pipx, see the README) and run host-config again"
        )
    return found


def claude_code_command(name: str, launch: Launch) -> str:
    """``claude mcp add`` for the user scope: options before the server's name, as its docs want."""
    env = " ".join(f"--env {k}={_shell(v)}" for k, v in launch.env.items())
    return f"claude mcp add --scope user --transport stdio {env} {name} -- " + " ".join(
        _shell(part) for part in [launch.command, *launch.args]
    )


def _shell(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9_@%+=:,./~-]+", text) else "'" + text.replace("'", "'\"'\"'") + "'"


# --- writing ------------------------------------------------------------------------------------------


def write(host: Host, path: Path, name: str, document: dict[str, Any]) -> tuple[Path | None, bool]:
    """Merge ``document`` into ``path``; returns (the backup, or None for a new file; whether ``name`` was there)."""
    old_text = path.read_text(encoding="utf-8") if path.exists() else None
    merge = _merge_json if host.format == "json" else _merge_toml
    new_text, replaced = merge(host, path, old_text, name, document)
    backup = None
    if old_text is not None:
        backup = path.with_name(f"{path.name}.{datetime.now().strftime('%Y%m%d-%H%M%S')}.bak")
        shutil.copy2(path, backup)
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace(path, new_text)
    return backup, replaced


def _merge_json(host: Host, path: Path, text: str | None, name: str, document: dict[str, Any]) -> tuple[str, bool]:
    try:
        data = json.loads(text) if text is not None and text.strip() else dict(host.new_file)
    except json.JSONDecodeError as exc:
        raise HostConfigError(
            f"{path} is not plain JSON ({exc.msg} at line {exc.lineno}; comments or trailing commas?): "
            "nothing was written; add the entry printed above by hand"
        ) from None
    servers = data.setdefault(host.servers_key, {}) if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise HostConfigError(f"{path}: {host.servers_key!r} is not a JSON object: nothing was written")
    replaced = name in servers
    servers[name] = document[host.servers_key][name]
    for key, items in document.items():
        if key == "inputs":
            known = data.setdefault("inputs", [])
            if not isinstance(known, list):
                raise HostConfigError(f"{path}: 'inputs' is not a JSON list: nothing was written")
            ids = {i.get("id") for i in items}
            known[:] = [i for i in known if not (isinstance(i, dict) and i.get("id") in ids)] + items
    return json.dumps(data, indent=2) + "\n", replaced


def _merge_toml(host: Host, path: Path, text: str | None, name: str, document: dict[str, Any]) -> tuple[str, bool]:
    text = text or ""
    try:
        before = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HostConfigError(f"{path} is not valid TOML ({exc}): nothing was written") from None
    servers = before.get(host.servers_key, {})
    replaced = isinstance(servers, dict) and name in servers
    # Our own table (and its sub-tables) goes; everything else stays byte for byte.
    header = re.compile(rf"^\s*\[\s*{host.servers_key}\s*\.\s*(\"{re.escape(name)}\"|{re.escape(name)})\s*[.\]]")
    kept: list[str] = []
    dropping = False
    for line in text.splitlines(keepends=True):
        if re.match(r"^\s*\[", line):
            dropping = bool(header.match(line))
        if not dropping:
            kept.append(line)
    body = "".join(kept).rstrip("\n")
    new_text = (body + "\n\n" if body else "") + to_toml(document)
    try:
        after = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        after = None
    expected = dict(before) | {host.servers_key: {**(servers if isinstance(servers, dict) else {})}}
    expected[host.servers_key][name] = document[host.servers_key][name]
    if after != expected:
        raise HostConfigError(
            f"{path} defines {host.servers_key}.{name} in a way this command cannot replace safely (an inline "
            "table or dotted keys): nothing was written; replace that entry by hand with the one printed above"
        )
    return new_text, replaced


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` at once (a crash leaves the old file or the new one), keeping its mode."""
    mode = path.stat().st_mode if path.exists() else None
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --- TOML out (the standard library reads TOML but does not write it) -----------------------------------


def to_toml(document: dict[str, Any]) -> str:
    """``{table: {name: {key: value}}}`` as ``[table.name]`` with its keys; nested tables inline."""
    lines: list[str] = []
    for table, entries in document.items():
        for name, entry in entries.items():
            lines.append(f"[{_key(table)}.{_key(name)}]")
            lines += [f"{_key(k)} = {_value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"no TOML for {type(value).__name__}")  # pragma: no cover - entries hold only the above


def _string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", escaped) + '"'
