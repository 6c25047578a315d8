"""The engine: the one request path every front end uses, and the fusion pipeline behind it.

- the request path: :mod:`~fusion_mcp.engine.admission` (every rule a call must meet),
  :mod:`~fusion_mcp.engine.service` (the process's one :class:`~fusion_mcp.engine.service.FusionService`:
  slots, cache, history, spending), :mod:`~fusion_mcp.engine.live` (runs that outlive their request),
  :mod:`~fusion_mcp.engine.daily_cap` (the spending gate);
- the pipeline: :mod:`~fusion_mcp.engine.pipeline` (panel, then analyst), :mod:`~fusion_mcp.engine.panel`,
  :mod:`~fusion_mcp.engine.member` (one model's tool loop), :mod:`~fusion_mcp.engine.analyst`,
  :mod:`~fusion_mcp.engine.material` (the call's files), :mod:`~fusion_mcp.engine.run` (one run's state).

May import: :mod:`fusion_mcp.providers`, :mod:`fusion_mcp.web`, :mod:`fusion_mcp.store`,
:mod:`fusion_mcp.config`, :mod:`fusion_mcp.core`. Never a front end, ``mcp``, Starlette or uvicorn: it
knows the store and the providers, not the protocol.
"""
