"""``fusion-mcp host-config HOST``: the entry that makes an MCP host start this server, in that host's format.

Hosts start servers with a minimal environment and PATH, so the entry names the absolute path of the
``fusion-mcp`` being run and carries, in its ``env``, every setting in force here that the server would not
have on its own: each variable set in this environment whose value differs from what the config file (or,
without one, the default) gives, plus ``FUSION_CONFIG`` when a config file is in use (what the file says is
not repeated: the server reads the file). ``FUSION_DEPTH`` never travels: it is the process's own nesting.
The API key is added when the server needs one (OpenRouter, or a key set here) and no config file holds it;
so is each configured provider's key variable (``api_key_env``, ``OPENAI_API_KEY`` for the openai template),
as a reference like every secret. ``FUSION_PROVIDERS`` set here travels in clear unless it holds a key itself.

Secrets (the key, a search key, a token, a database URL) are never written in clear. Per host:

* Claude Code (``.mcp.json``, or ``claude mcp add``): ``${VAR}``, which Claude Code expands from the
  environment it runs in, in project and user scope alike (checked with Claude Code 2.1.332).
* opencode: ``{env:VAR}``, expanded by opencode in any string of its config; also the HTTP token.
* Cursor: ``${env:VAR}``, Cursor's documented interpolation in ``command``, ``args``, ``env``, ``url`` and
  ``headers`` (no Cursor runs in the tests: its entry is launched with that expansion applied).
* Codex: the variable's name in ``env_vars`` (Codex forwards it from its own environment); for HTTP,
  ``bearer_token_env_var``. Codex refuses a bearer token written in its config.
* VS Code: a ``promptString`` input with ``password: true``, referenced as ``${input:id}``: VS Code asks
  once and keeps the answer in its secret storage.
* Claude Desktop: its config has no expansion, so a secret is a placeholder to replace by hand (or put it
  in a config file, whose path the entry then carries; or use the ``.mcpb`` bundle, which keeps the key in
  the OS keychain).

An entry that reads a variable from the host's environment fails silently when the variable is unset there
(every host passes on the literal text or nothing), so this command warns when such a variable is unset in
its own environment. ``tests/cli/test_real_hosts.py`` has Claude Code, Codex and opencode read each entry
back and start the server as they report it.

Tool results: Codex keeps about 12,000 characters of a tool's output by default and cuts the middle out, while
the server sends up to ``FUSION_MAX_OUTPUT_CHARS`` (24,000 by default). The Codex entry therefore sets Codex's
own ``tool_output_token_limit`` (a top-level key: it applies to every tool) to that many tokens plus
:data:`CODEX_OUTPUT_MARGIN`; Codex counts about four bytes a token, so a result of N characters fits in N
tokens whatever its script. ``--write`` raises a lower limit already in the file and keeps a higher one.
The stdio entry also states ``FUSION_MAX_OUTPUT_CHARS``: without it the server, seeing Codex by name, fits
results to what Codex keeps by default (:mod:`fusion_mcp.mcp_server.host_limits`).
Claude Code (25,000 tokens by default, ``MAX_MCP_OUTPUT_TOKENS``) and opencode take 24,000 characters whole.

``host-config mcp-json`` prints the canonical ``mcpServers`` entry committed as the repository's
``mcp.json``: the ``fusion-mcp`` on PATH (as ``uv tool install`` or ``pipx`` put it there) with the key as a
placeholder the server refuses to start with, for any host that reads that format.

``--transport http`` gives an entry for a running ``serve --transport http`` instead.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from ..config import (
    KEYS_PAGE,
    SETTING_NAMES,
    ConfigError,
    Settings,
    file_settings,
    is_secret,
    load_settings,
    short_name,
)
from ..core.about import COMMAND, HOMEPAGE

KEY = "OPENROUTER_API_KEY"
TOKEN = "FUSION_HTTP_TOKEN"
PROVIDERS = "FUSION_PROVIDERS"
BUNDLE_DOCS = f"{HOMEPAGE}/blob/main/docs/hosts.md#claude-desktop-one-click-bundle"
"""Where the ``.mcpb`` bundle is explained (the hosts page of the documentation)."""
KEY_PLACEHOLDER = "sk-or-v1-..."
DEFAULT_URL = "http://127.0.0.1:8765/mcp"
CANONICAL = "mcp-json"
"""The pseudo-host whose entry is the repository's ``mcp.json``."""
CODEX_OUTPUT_MARGIN = 4000
"""Tokens beyond ``FUSION_MAX_OUTPUT_CHARS`` in Codex's limit: the JSON around the answer."""
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FIELDS = {str(f.alias): name for name, f in Settings.model_fields.items()}
_NOT_CARRIED = frozenset({"FUSION_DEPTH"})


@dataclass(frozen=True)
class Launch:
    """What a host needs to reach the server, before any host's spelling of it."""

    command: str
    args: list[str]
    env: dict[str, str]
    """Settings the server needs that are not secret, in clear."""
    secrets: tuple[str, ...] = ()
    """Secret settings the server needs: each host refers to the variable, or writes a placeholder."""
    url: str | None = None
    """Set for an HTTP entry (then ``command`` is unused)."""
    token: bool = False
    """The HTTP server asks for a bearer token."""
    output_chars: int = 24000
    """``FUSION_MAX_OUTPUT_CHARS`` in force: the longest tool result the server sends."""


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
    reads_env: bool = True
    """The entry takes secrets from the environment the host runs in (not a prompt, not a placeholder)."""
    extra: Callable[[Launch], dict[str, Any]] = field(default=lambda _: {})
    """Top-level keys the entry needs beside the servers (VS Code's password inputs, Codex's output limit)."""
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


def placeholder(name: str) -> str:
    """What a host that cannot refer to a variable gets in place of the secret ``name``."""
    return KEY_PLACEHOLDER if name == KEY else f"<{name}>"


def input_id(name: str) -> str:
    """VS Code's input id for the secret ``name``: ``openrouter-key``, ``brave-api-key``, ``fusion-token``."""
    return {KEY: "openrouter-key", TOKEN: "fusion-token"}.get(name) or short_name(name).replace("_", "-")


def _env(launch: Launch, ref: Callable[[str], str]) -> dict[str, str]:
    return {name: ref(name) for name in launch.secrets} | launch.env


def _stdio(ref: Callable[[str], str], typed: bool = False) -> Callable[[Launch], dict[str, Any]]:
    """A ``command``/``args``/``env`` entry whose secrets are ``ref(name)`` (``"type": "stdio"`` if ``typed``)."""
    kind = {"type": "stdio"} if typed else {}
    return lambda ln: kind | {"command": ln.command, "args": ln.args, "env": _env(ln, ref)}


def _http(ref: Callable[[str], str], typed: bool = False) -> Callable[[Launch], dict[str, Any]]:
    """An HTTP entry whose ``Authorization`` header (when the server asks for a token) refers to the token."""
    kind = {"type": "http"} if typed else {}
    return lambda ln: (
        kind | {"url": ln.url} | ({"headers": {"Authorization": f"Bearer {ref(TOKEN)}"}} if ln.token else {})
    )


def _codex_stdio(launch: Launch) -> dict[str, Any]:
    forwarded = {"env_vars": list(launch.secrets)} if launch.secrets else {}
    # The budget, stated: the server otherwise fits a result for Codex to what Codex keeps by default
    # (mcp_server.host_limits), while this entry raises Codex's limit to take the whole budget.
    env = launch.env | {"FUSION_MAX_OUTPUT_CHARS": str(launch.output_chars)}
    return {"command": launch.command, "args": launch.args} | forwarded | {"env": env}


def _codex_limit(launch: Launch) -> dict[str, Any]:
    # Over HTTP the budget is the remote server's: it fits results to what Codex keeps by default unless its
    # operator set FUSION_MAX_OUTPUT_CHARS, so raising Codex's limit here would promise what it may not send.
    if launch.url is not None:
        return {}
    return {"tool_output_token_limit": launch.output_chars + CODEX_OUTPUT_MARGIN}


def _opencode_stdio(launch: Launch) -> dict[str, Any]:
    env = _env(launch, lambda name: f"{{env:{name}}}")
    return {"type": "local", "command": [launch.command, *launch.args], "environment": env, "enabled": True}


def _vscode_inputs(launch: Launch) -> dict[str, Any]:
    names = [TOKEN] if launch.url is not None and launch.token else list(launch.secrets if launch.url is None else ())
    titles = {KEY: "OpenRouter API key", TOKEN: "fusion-mcp bearer token"}
    inputs = [
        {"type": "promptString", "id": input_id(n), "description": titles.get(n, n), "password": True} for n in names
    ]
    return {"inputs": inputs} if inputs else {}


def _claude_code(name: str) -> str:
    return f"${{{name}}}"


def _cursor(name: str) -> str:
    return f"${{env:{name}}}"


def _vscode(name: str) -> str:
    return f"${{input:{input_id(name)}}}"


HOSTS: dict[str, Host] = {
    "claude-desktop": Host(
        "Claude Desktop", "json", "mcpServers", _claude_desktop_file, _stdio(placeholder), None, reads_env=False
    ),
    "claude-code": Host(
        "Claude Code",
        "json",
        "mcpServers",
        lambda: Path.cwd() / ".mcp.json",
        _stdio(_claude_code, typed=True),
        _http(_claude_code, typed=True),
    ),
    "cursor": Host(
        "Cursor", "json", "mcpServers", lambda: _home() / ".cursor/mcp.json", _stdio(_cursor), _http(_cursor)
    ),
    "vscode": Host(
        "VS Code",
        "json",
        "servers",
        lambda: Path.cwd() / ".vscode/mcp.json",
        _stdio(_vscode, typed=True),
        _http(_vscode, typed=True),
        reads_env=False,
        extra=_vscode_inputs,
    ),
    "codex": Host(
        "Codex",
        "toml",
        "mcp_servers",
        _codex_file,
        _codex_stdio,
        lambda ln: {"url": ln.url} | ({"bearer_token_env_var": TOKEN} if ln.token else {}),
        extra=_codex_limit,
    ),
    "opencode": Host(
        "opencode",
        "json",
        "mcp",
        lambda: _xdg_config() / "opencode/opencode.json",
        _opencode_stdio,
        lambda ln: (
            {"type": "remote", "url": ln.url, "enabled": True}
            | ({"headers": {"Authorization": f"Bearer {{env:{TOKEN}}}"}} if ln.token else {})
        ),
        new_file={"$schema": "https://opencode.ai/config.json"},
    ),
}
MCP_JSON = Host("mcp.json", "json", "mcpServers", lambda: Path.cwd() / "mcp.json", _stdio(placeholder), None, False)
"""The canonical entry (``host-config mcp-json``): the repository's ``mcp.json``."""


class HostConfigError(Exception):
    """The entry cannot be made or merged; ``str()`` says why and what to do."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "host", choices=[*HOSTS, CANONICAL], help=f"the MCP host ({CANONICAL}: the canonical mcpServers entry)"
    )
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio", help="default: stdio")
    parser.add_argument("--url", help=f"the HTTP server's MCP endpoint (default: {DEFAULT_URL})")
    parser.add_argument(
        "--token", action="store_true", help="the HTTP server asks for a bearer token: add its header (a reference)"
    )
    parser.add_argument("--name", default="fusion", help="the server's name in the host (default: fusion)")
    parser.add_argument("--write", action="store_true", help="merge the entry into the host's config file")
    parser.add_argument("--file", metavar="PATH", help="the config file to --write (default: the host's own)")


def main(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str] | None = None) -> int:
    """Print the entry (stdout: the snippet alone, so it can be piped); notes go to stderr."""
    environ = os.environ if environ is None else environ
    host = MCP_JSON if args.host == CANONICAL else HOSTS[args.host]
    try:
        launch = canonical_launch() if args.host == CANONICAL else launch_for(settings, args, environ)
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
    for note in notes(args, host, launch, environ):
        print(f"fusion-mcp: {note}", file=sys.stderr)
    return 0


def canonical_launch() -> Launch:
    """The repository's ``mcp.json``: the ``fusion-mcp`` on PATH, the key to fill in, nothing of this machine."""
    return Launch(COMMAND, [], {}, (KEY,))


def canonical_mcp_json() -> str:
    """The text of the repository's ``mcp.json``."""
    return render(MCP_JSON, snippet(MCP_JSON, "fusion", canonical_launch())) + "\n"


def launch_for(settings: Settings, args: argparse.Namespace, environ: Mapping[str, str]) -> Launch:
    if not _NAME.fullmatch(args.name):
        raise HostConfigError(f"--name must be letters, digits, '-' or '_' (got {args.name!r})")
    if args.transport == "http" or args.url:
        if HOSTS[args.host].http is None:
            raise HostConfigError(
                f"{HOSTS[args.host].title}'s config file starts stdio servers only: use the default stdio entry, "
                f"or the .mcpb bundle ({BUNDLE_DOCS})"
            )
        url = args.url or DEFAULT_URL
        if not url.startswith(("http://", "https://")):
            raise HostConfigError(f"--url must be an http:// or https:// URL (got {url!r})")
        token = args.token or bool(settings.principals)
        return Launch("", [], {}, url=url, token=token, output_chars=settings.max_output_chars)
    config = getattr(args, "config", None) or environ.get("FUSION_CONFIG") or None
    env, secrets = carried(settings, Path(config).expanduser().resolve() if config else None, environ)
    command, command_args = executable()
    return Launch(command, command_args, env, secrets, output_chars=settings.max_output_chars)


def carried(
    settings: Settings, config: Path | None, environ: Mapping[str, str]
) -> tuple[dict[str, str], tuple[str, ...]]:
    """The settings the entry carries: (those in clear, the names of the secret ones).

    Each variable set in ``environ`` whose setting differs from what ``config`` (or the default) gives, the
    config file itself, and the key when the server needs one that the file does not hold.
    """
    try:
        baseline = load_settings(environ={}, config_path=config)
        key_in_file = baseline.api_key is not None
    except ConfigError:
        # The file alone does not hold (a variable here overrides what fails in it): carry all that differs.
        baseline = load_settings(environ={})
        key_in_file = config is not None and KEY in _given_by(config)
    env: dict[str, str] = {}
    secrets: list[str] = []
    for name in SETTING_NAMES:
        field_name = _FIELDS[name]
        if name in _NOT_CARRIED or not environ.get(name, "").strip():
            continue
        value = getattr(settings, field_name)
        if value == getattr(baseline, field_name):
            continue
        if is_secret(name) or _has_password(environ[name]) or (name == PROVIDERS and _holds_secret(settings)):
            secrets.append(name)
        else:
            env[name] = _spelled(value, environ[name])
    if KEY not in secrets and not key_in_file and (settings.is_openrouter or settings.api_key is not None):
        secrets.insert(0, KEY)
    # Each provider's key travels as a reference to its variable, wherever the providers were configured.
    secrets += [v for e in settings.providers.values() if (v := e.api_key_env) is not None and v not in secrets]
    if config is not None:
        env["FUSION_CONFIG"] = str(config)
    return env, tuple(secrets)


def _holds_secret(settings: Settings) -> bool:
    """``FUSION_PROVIDERS`` in the environment holds a key in clear: an entry's own ``api_key``, or a header that
    carries one."""
    for endpoint in settings.providers.values():
        in_clear = endpoint.api_key is not None and endpoint.api_key_env is None
        if in_clear or len(endpoint.secrets) > (endpoint.api_key is not None):
            return True
    return False


def _given_by(config: Path) -> frozenset[str]:
    try:
        return file_settings(config)
    except ConfigError:
        return frozenset()


def _has_password(value: str) -> bool:
    """A URL with a password in it (``https://user:pw@gateway``): carried as a secret, never in clear."""
    try:
        return urlsplit(value.strip()).password is not None
    except ValueError:
        return False


def _spelled(value: object, given: str) -> str:
    """A setting as the entry carries it: a path absolute (the host starts the server in another directory),
    anything else as it was written."""
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, tuple) and value and all(isinstance(v, Path) for v in value):
        return ",".join(str(v) for v in value)
    return given


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


def referenced(host: Host, launch: Launch) -> tuple[str, ...]:
    """The variables the entry reads from the environment the host runs in."""
    if not host.reads_env:
        return ()
    if launch.url is None:
        return launch.secrets
    return (TOKEN,) if launch.token else ()


def notes(args: argparse.Namespace, host: Host, launch: Launch, environ: Mapping[str, str]) -> list[str]:
    found: list[str] = []
    if not host.reads_env and host is not HOSTS["vscode"]:
        for name in launch.secrets:
            what = f"your OpenRouter API key (create one at {KEYS_PAGE})" if name == KEY else f"the value of {name}"
            found.append(f"replace {placeholder(name)} with {what}")
        if launch.secrets and host is HOSTS["claude-desktop"]:
            found.append(
                "Claude Desktop reads no variable from its environment: to keep secrets out of its config, put them "
                "in a config file (chmod 600) and run host-config again with --config FILE, or install the .mcpb "
                f"bundle, which keeps the key in the system keychain ({BUNDLE_DOCS})"
            )
    for name in referenced(host, launch):
        if not environ.get(name, "").strip():
            found.append(
                f"{name} is not set here, and the entry reads it from the environment {host.title} runs in: "
                f"set it there before starting {host.title}, which says so at best in a diagnostic"
            )
    if host is HOSTS["claude-code"] and launch.url is None:
        found.append(
            "Claude Code reads the variables in ${...} from the environment it runs in. For every project instead "
            "of this one: " + claude_code_command(args.name, launch)
        )
    place = transient_place(launch.command) if launch.url is None else None
    if place:
        found.append(
            f"this fusion-mcp runs from {place}, which may be cleaned away, and the entry would then start nothing: "
            "install it for good (uv tool install or pipx: the README's Quick start) and run host-config again"
        )
    return found


_CACHE_FOLDERS = frozenset({".cache", "cache", "caches"})
"""Folders tools clean: ``~/.cache`` (uv, pipx on Linux), ``~/Library/Caches`` (macOS), ``...\\uv\\cache`` (Windows)."""


def transient_place(command: str) -> str | None:
    """Where ``command`` lives when that place may vanish (a cache, a temporary directory), in words; else None.

    ``uvx`` and ``pipx run`` start commands from their caches, which they clean; a venv under the temporary
    directory goes at the next reboot. An entry naming such a path stops working without a word.
    """
    parts = [part.lower() for part in Path(command).parts]
    if any(part in _CACHE_FOLDERS for part in parts):
        return "uv's cache" if "uv" in parts else "a cache directory"
    for temporary in {tempfile.gettempdir(), "/tmp", "/var/tmp"}:
        if Path(command).is_relative_to(temporary):
            return f"a temporary directory ({temporary})"
    return None


def claude_code_command(name: str, launch: Launch) -> str:
    """``claude mcp add`` for the user scope. The name comes first: ``--env`` takes several values, so a name
    after it is read as one more (``missing required argument 'commandOrUrl'``)."""
    words = ["claude", "mcp", "add", name, "--scope", "user", "--transport", "stdio"]
    for key, value in _env(launch, _claude_code).items():
        words += ["--env", f"{key}={value}"]
    return " ".join(_shell(word) for word in [*words, "--", launch.command, *launch.args])


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
    import tomllib  # loaded by the command that writes, not by the parser at every start

    text = text or ""
    try:
        before = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HostConfigError(f"{path} is not valid TOML ({exc}): nothing was written") from None
    servers = before.get(host.servers_key, {})
    replaced = isinstance(servers, dict) and name in servers
    entry = document[host.servers_key][name]
    # Top-level settings the entry needs (Codex's output limit): a higher one already there stays.
    top = {k: v for k, v in document.items() if k != host.servers_key and not _higher(before.get(k), v)}
    # Our own table (and its sub-tables) goes, and the top-level keys we set; everything else stays byte for byte.
    header = re.compile(rf"^\s*\[\s*{host.servers_key}\s*\.\s*(\"{re.escape(name)}\"|{re.escape(name)})\s*[.\]]")
    kept: list[str] = []
    dropping = False
    for line in _set_top(text, top).splitlines(keepends=True):
        if re.match(r"^\s*\[", line):
            dropping = bool(header.match(line))
        if not dropping:
            kept.append(line)
    body = "".join(kept).rstrip("\n")
    new_text = (body + "\n\n" if body else "") + to_toml({host.servers_key: {name: entry}})
    try:
        after = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        after = None
    expected = dict(before) | top | {host.servers_key: {**(servers if isinstance(servers, dict) else {})}}
    expected[host.servers_key][name] = entry
    if after != expected:
        raise HostConfigError(
            f"{path} defines {host.servers_key}.{name} in a way this command cannot replace safely (an inline "
            "table or dotted keys): nothing was written; replace that entry by hand with the one printed above"
        )
    return new_text, replaced


def _set_top(text: str, top: dict[str, Any]) -> str:
    """``text`` with the top-level keys ``top`` set: on their own line where there is one, else before the
    first table (or at the end of a file without tables)."""
    lines = text.splitlines(keepends=True)
    first_table = next((i for i, line in enumerate(lines) if re.match(r"^\s*\[", line)), len(lines))
    missing = dict(top)
    for i in range(first_table):
        found = re.match(r"^\s*([A-Za-z0-9_-]+)\s*=", lines[i])
        if found and found[1] in missing:
            lines[i] = f"{_key(found[1])} = {_value(missing.pop(found[1]))}\n"
    new = [f"{_key(k)} = {_value(v)}\n" for k, v in missing.items()]
    if new and first_table < len(lines):
        new.append("\n")
    elif new and lines and not lines[-1].endswith("\n"):
        new.insert(0, "\n")
    return "".join(lines[:first_table] + new + lines[first_table:])


def _higher(old: Any, new: Any) -> bool:
    """A number already in the file at least as high as the one the entry asks for."""
    return isinstance(old, int) and not isinstance(old, bool) and isinstance(new, int) and old >= new


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
    """Top-level ``{key: value}`` first, then ``{table: {name: {key: value}}}`` as ``[table.name]`` with its keys;
    nested tables inline."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in document.items() if not isinstance(v, dict)]
    lines += [""] if lines else []
    for table, entries in ((k, v) for k, v in document.items() if isinstance(v, dict)):
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
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"no TOML for {type(value).__name__}")  # pragma: no cover - entries hold only the above


def _string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", escaped) + '"'
