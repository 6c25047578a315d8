"""The ground every layer stands on: the contract between layers and the rules no layer owns.

Holds the contract (:mod:`~fusion_mcp.core.models`: ``FusionArgs``, ``FusionRequest``, ``FusionResult`` and
their parts), errors and redaction (:mod:`~fusion_mcp.core.errors`), limits, model ids, lenses, the output
budget, progress events, strict JSON values, text helpers, the TLS context, who calls (the caller scope
both HTTP front ends read), the tool's own wording, and the Markdown rendering of a result.

May import: the standard library, pydantic and httpx2's types; nothing else of the package. Put a piece
here when two layers need it and neither may import the other.
"""
