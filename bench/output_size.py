"""Output size: characters (and estimated tokens) of both blocks of the result for typical 3- and 8-member runs.

A host puts one of them into its model's context — the text block (opencode), or ``structuredContent`` as
JSON (Codex, Claude Code) — so each size is a cost paid on every call. Answers are ~3,000 characters each
(about 750 tokens, a typical thorough answer); tokens are estimated at 4 characters each. The budget is
``FUSION_MAX_OUTPUT_CHARS`` (24,000 by default), which bounds both blocks; structured content is measured
as compact JSON, as hosts serialise it.

    python -m bench.output_size [--answer-chars 3000] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import json

import anyio
from mcp import Client

from bench.common import panel, report, server_env, simulator
from fusion_mcp.config import load_settings
from fusion_mcp.mcp_server.server import create_server

BUDGET_CHARS = 24_000


async def measure(base: str, sizes: list[int], answer_chars: int) -> list[dict]:
    server = create_server(load_settings(environ=server_env(base)))
    rows = []
    async with Client(server) as client:
        for n in sizes:
            args = {
                "prompt": "typical question",
                "analysis_models": panel([0.0] * n, length=answer_chars),
                "model": "bench/judge",
            }
            result = await client.call_tool("openrouter_fusion", args)
            text = result.content[0].text
            structured = len(json.dumps(result.structured_content, ensure_ascii=False, separators=(",", ":")))
            rows.append(
                {
                    "members": n,
                    "answer_chars": answer_chars,
                    "text_chars": len(text),
                    "text_tokens_est": len(text) // 4,
                    "structured_chars": structured,
                    "budget_chars": BUDGET_CHARS,
                    "within_budget": len(text) <= BUDGET_CHARS and structured <= BUDGET_CHARS,
                }
            )
            print(
                f"{n} members: text block {len(text):,} chars (~{len(text) // 4:,} tokens), structured content "
                f"{structured:,} chars; {'within' if rows[-1]['within_budget'] else 'OVER'} the "
                f"{BUDGET_CHARS:,}-char budget",
                flush=True,
            )
    return rows


async def main_async(args: argparse.Namespace) -> None:
    sizes = [3] if args.quick else [3, 8]
    with simulator() as sim:
        rows = await measure(sim.base, sizes, args.answer_chars)
    report("output_size", {"rows": rows}, args.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answer-chars", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="the 3-member run only (CI smoke test)")
    parser.add_argument("--out", help="also write the JSON report here")
    anyio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
