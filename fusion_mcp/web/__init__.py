"""Web tools for the panel: search, guarded fetching, extraction and fencing of untrusted pages.

:mod:`~fusion_mcp.web.addresses` is the address policy (no private, loopback or metadata addresses),
:mod:`~fusion_mcp.web.fetch` the guarded fetcher, :mod:`~fusion_mcp.web.extract` HTML to text,
:mod:`~fusion_mcp.web.fence` marks fetched text as untrusted data, :mod:`~fusion_mcp.web.search` the
search backends, :mod:`~fusion_mcp.web.tools` the per-run tool box a member calls,
:mod:`~fusion_mcp.web.server_tools` the provider's own web tools. :mod:`~fusion_mcp.web.network` names how
fetches reach the outside world and :mod:`~fusion_mcp.web.toolbox` makes the tools when a run first needs them:
both light, so a server never loads the fetcher, the extractor or the search backends before that.
A new search backend goes in ``search``.

May import: httpx2, :mod:`fusion_mcp.config`, :mod:`fusion_mcp.core`. Never the engine, the providers,
the store or a front end.
"""
