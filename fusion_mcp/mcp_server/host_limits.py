"""What a host keeps of a tool result: the output budget for the client that calls.

A host that cuts a long tool result before its model reads it loses the middle of the panel's answers
without saying so: Codex 0.171 keeps about 12,000 characters by default (it raises that with
``tool_output_token_limit`` in its ``config.toml``) while the server sends up to ``FUSION_MAX_OUTPUT_CHARS``
(24,000). Hosts name themselves in ``initialize`` (``clientInfo``) or, on the 2026-07-28 protocol, in each
request's ``_meta``: for a host known to keep less than the budget, the server fits the result to what the
host keeps — trimming answers evenly, each marked, the run keeping them whole — unless the budget was set
explicitly (``FUSION_MAX_OUTPUT_CHARS`` in the environment, the config file or the host's entry), which
always wins. Claude Code (a warning above ~10k tokens, a cut at 25k) and opencode pass 24,000 characters
whole, so they need no entry here.
"""

from __future__ import annotations

from ..config import Settings

HOST_KEEPS: dict[str, int] = {
    # Codex's default keeps ~12,000 characters of a result; 11,000 leaves room for the JSON the budget does
    # not see (the content block's envelope, the tool call's own framing).
    "codex-mcp-client": 11_000,
}
"""Characters of a tool result a host passes whole to its model, by the ``clientInfo.name`` it sends."""


def output_budget(settings: Settings, client_name: str | None) -> int:
    """The characters a result for this client may take: the configured budget, less for a host that keeps less
    (unless ``FUSION_MAX_OUTPUT_CHARS`` was set explicitly)."""
    if client_name is None or "max_output_chars" in settings.model_fields_set:
        return settings.max_output_chars
    return min(settings.max_output_chars, HOST_KEEPS.get(client_name, settings.max_output_chars))
