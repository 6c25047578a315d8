"""The bounds every front end, setting and model shares, each written once.

Settings, tool arguments, ``fusion-mcp ask`` flags and the request model all read these names, so a
bound and the sentence that states it cannot drift apart.
"""

from __future__ import annotations

MAX_PANEL = 8
"""Panel members per run (OpenRouter's Fusion allows 1-8)."""
MIN_TOOL_CALLS = 1
MAX_TOOL_CALLS = 16
"""Tool calls per model per run (OpenRouter's ``max_tool_calls`` range)."""
MIN_DEADLINE_S = 1.0
MAX_DEADLINE_S = 3600.0
"""Seconds a run may be given."""
MAX_RETRIES = 2
"""Retries of one upstream request (408, 429, 5xx, connection errors) after its first try."""
MAX_COMPLETION_TOKENS = 1_000_000
MAX_MODEL_ID_CHARS = 200
MAX_GUESTS = 4
"""Answers the host may seat beside the panel (``answers``)."""
MAX_GUEST_CHARS = 100_000
"""Characters of one such answer: a long draft, not a corpus (files are for material)."""
MAX_FILES = 16
"""Files one call may attach."""
MAX_ANSWERS = MAX_PANEL + MAX_GUESTS
"""Answers the analyst may be shown at once (labels ``Model A`` to ``Model L``)."""
MIN_TOKEN_CHARS = 16
"""The shortest bearer token the server accepts (and the shortest key a caller may lend)."""
