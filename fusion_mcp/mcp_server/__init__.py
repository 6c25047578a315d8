"""The MCP front end: the ``openrouter_fusion`` tool, its tasks and its per-session log levels.

:mod:`~fusion_mcp.mcp_server.server` builds the MCP server (tools, resources, progress, sampling-free
results), :mod:`~fusion_mcp.mcp_server.tasks` runs calls as MCP tasks, :mod:`~fusion_mcp.mcp_server.log_levels`
keeps each session's ``logging/setLevel``, :mod:`~fusion_mcp.mcp_server.host_limits` fits a result to what
the calling host keeps of it. Only translation lives here: every rule a call must meet is
the engine's.

May import: ``mcp``, Starlette's request and response types, :mod:`fusion_mcp.engine` and everything
below it. Never the OpenAI-compatible front end, the HTTP host or the CLI.
"""
