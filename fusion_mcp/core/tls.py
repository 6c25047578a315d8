"""One TLS context for every outbound client of the process.

Loading the system's CA bundle takes ~35 ms; the provider pool, the search client and the guarded fetcher
share one context instead of loading it three times per start. It is loaded on first HTTPS use (the
provider pools' :class:`~fusion_mcp.providers.client.FirstUseTransport`; the web tools when they open), so a
server whose provider is reached over http:// and whose web tools are off never loads it.
``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` in the environment are honoured (a company CA), as httpx2 does by default.
"""

from __future__ import annotations

import ssl
from functools import cache

import httpx2


@cache
def default_tls() -> ssl.SSLContext:
    """The process's client TLS context: certificates and host names verified."""
    return httpx2.create_ssl_context(trust_env=True)
