"""The HTTP host: one ASGI app that serves both front ends behind one guard.

:mod:`~fusion_mcp.http.app` assembles the app (``/mcp``, the OpenAI-compatible routes, ``/healthz``),
:mod:`~fusion_mcp.http.guard` admits every request (tokens or lent keys, body caps, Host and Origin),
:mod:`~fusion_mcp.http.connections` bounds connections and slow readers, :mod:`~fusion_mcp.http.sessions`
and :mod:`~fusion_mcp.http.session_routes` keep MCP sessions across replicas,
:mod:`~fusion_mcp.http.workers` runs ``--workers N`` processes on one port.

May import: uvicorn, Starlette, ``mcp``'s HTTP transport, both front ends and everything below them.
Never the CLI.
"""
