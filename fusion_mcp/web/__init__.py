"""Web tools for the panel: the address policy and the guarded fetcher (search and wiring come next)."""
