"""The OpenAI-compatible front end: ``/v1/chat/completions``, ``/v1/models`` and the writer loop.

:mod:`~fusion_mcp.openai_api.request` reads a chat-completions request (Fusion's three entry points),
:mod:`~fusion_mcp.openai_api.writer` runs the writer model that may call fusion once,
:mod:`~fusion_mcp.openai_api.routes` serves both routes, JSON or streamed. Another OpenAI-style API (the
Responses API) goes beside them here.

May import: Starlette, :mod:`fusion_mcp.engine`, :mod:`fusion_mcp.providers` and everything below them.
Never ``mcp`` or the MCP front end: the two front ends share only the engine and ``core``.
"""
