"""Model providers: the chat-completions client and the model catalogue.

:mod:`~fusion_mcp.providers.client` speaks the chat-completions protocol over httpx2 (one pool per
upstream, retries, streaming, cancellation, the nested-fusion depth header), each request to the provider its
model routes to (``Settings.route``: the configured providers of :mod:`fusion_mcp.config.providers`, else the
one base URL); :mod:`~fusion_mcp.providers.catalogue` reads each provider's ``/models`` for prices and tool
and image support. An OpenAI-compatible endpoint is a template in ``config/providers.py``; another API shape
goes here, behind the same :class:`~fusion_mcp.providers.client.Provider` interface.

May import: :mod:`fusion_mcp.config`, :mod:`fusion_mcp.core`. Never the engine, the store, the web tools
or a front end.
"""
