"""How the fusion tool presents itself to a model, in one wording for every front end.

The MCP tool (``server.py``) and the chat endpoint's function tool (``chat.py``) offer the same tool under
the same name, so a model that learnt it in one place finds it the same in the other.
"""

from __future__ import annotations

from .limits import MAX_PANEL

TOOL_NAME = "openrouter_fusion"
TOOL_TITLE = "Fusion: ask a panel of models and compare their answers"

DESCRIPTION = f"""Ask a panel of {MAX_PANEL} or fewer AI models the same question in parallel and get an \
analyst's structured comparison of their answers: consensus, contradictions, partial coverage, unique \
insights and blind spots, plus every full answer. You then write the final answer from it.

Use it for research questions, expert critique or review, and decisions where being wrong costs more than \
a few extra model calls (architecture choices, security or legal-adjacent questions, fact checks, \
comparing options). Do not use it for short tactical prompts, chit-chat, or anything one model answers \
well: a run costs several completions and takes as long as the slowest model plus the analysis.

The panel does NOT see this conversation: make `prompt` a complete, self-contained question, and put \
code, excerpts, constraints or other material it needs in `context`."""

PROMPT_HELP = "A complete, self-contained question or task; the panel does not see your conversation."
CONTEXT_HELP = "Optional material the panel needs: code, excerpts, data, constraints."
