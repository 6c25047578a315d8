"""Model providers: the chat-completions client and the model catalogue.

:mod:`~fusion_mcp.providers.client` speaks the chat-completions protocol over httpx2 (one pool per
upstream, retries, streaming, cancellation, the nested-fusion depth header); :mod:`~fusion_mcp.providers.catalogue`
reads ``/models`` for prices and context lengths. A new provider (a per-model endpoint, another API shape)
goes here, behind the same :class:`~fusion_mcp.providers.client.Provider` interface.

May import: :mod:`fusion_mcp.config`, :mod:`fusion_mcp.core`. Never the engine, the store, the web tools
or a front end.
"""
