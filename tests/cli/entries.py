"""Reading a host's entry as the host does: where its servers live, and the command and environment it starts
one with after its own expansion of variable references (each host's documented syntax)."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from typing import Any

SERVERS = {"claude-desktop": "mcpServers", "claude-code": "mcpServers", "cursor": "mcpServers"}
SERVERS |= {"vscode": "servers", "codex": "mcp_servers", "opencode": "mcp", "mcp-json": "mcpServers"}

# Claude Code: ${VAR} and ${VAR:-default} (unset, no default: the literal text); Cursor: ${env:VAR};
# opencode: {env:VAR} (unset: empty); VS Code: ${input:id}, answered by the user.
_CLAUDE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_CURSOR = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
_OPENCODE = re.compile(r"\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
_VSCODE = re.compile(r"\$\{input:([A-Za-z0-9_-]+)\}")


def parse(host: str, text: str) -> dict[str, Any]:
    return tomllib.loads(text) if host == "codex" else json.loads(text)


def entry_of(host: str, text: str, name: str = "fusion") -> dict[str, Any]:
    entry: dict[str, Any] = parse(host, text)[SERVERS[host]][name]
    return entry


def command_of(host: str, entry: dict[str, Any]) -> list[str]:
    return list(entry["command"]) if host == "opencode" else [entry["command"], *entry["args"]]


def env_of(host: str, entry: dict[str, Any]) -> dict[str, str]:
    return dict(entry["environment" if host == "opencode" else "env"])


def expand(host: str, text: str, environ: Mapping[str, str], inputs: Mapping[str, str]) -> str:
    """``text`` after ``host``'s expansion, with ``environ`` as the host's environment."""
    if host == "claude-code":
        return _CLAUDE.sub(lambda m: environ.get(m[1], m[2] if m[2] is not None else m[0]), text)
    if host == "cursor":
        return _CURSOR.sub(lambda m: environ.get(m[1], ""), text)
    if host == "opencode":
        return _OPENCODE.sub(lambda m: environ.get(m[1], ""), text)
    if host == "vscode":
        return _VSCODE.sub(lambda m: inputs[m[1]], text)
    return text


def launch_of(
    host: str, entry: dict[str, Any], environ: Mapping[str, str], inputs: Mapping[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command and the environment ``host`` starts the entry's server with (beside its own minimal one)."""
    answers = inputs or {}
    command = [expand(host, part, environ, answers) for part in command_of(host, entry)]
    env = {k: expand(host, v, environ, answers) for k, v in env_of(host, entry).items()}
    if host == "codex":  # env_vars: forwarded from Codex's own environment when set there
        env |= {k: environ[k] for k in entry.get("env_vars", []) if k in environ}
    return command, env
