"""web_fetch overhead: a page read through the tool vs the same bytes fetched plainly, on loopback.

The tool adds the address guard (resolve, check, connect to the checked address), the content-type and size
checks, HTML-to-text extraction with trafilatura, provenance, fencing and paging. Both paths fetch from the
same loopback site (the tool through a fake resolver that gives ``example.test`` a public address), a fresh
run each time so nothing is served from the run's page cache. Reported per page as medians in ms.

    python -m bench.web_fetch [--runs 30] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import anyio
import httpx2

from bench.common import median, percentile, report
from fusion_mcp.config import load_settings
from fusion_mcp.web.extract import to_text
from fusion_mcp.web.fetch import Network
from fusion_mcp.web.tools import open_web_tools
from tests.fakes.web import PUBLIC_SITE, Canary, FakeResolver, Site, router

PAGES = {"article": "/article", "heavy": "/heavy", "plain-50k": "/long"}


async def measure(site: Site, canary: Canary, runs: int) -> list[dict[str, Any]]:
    settings = load_settings(environ={"OPENROUTER_BASE_URL": "http://127.0.0.1:9/v1", "FUSION_WEB_TOOLS": "local"})
    network = Network(FakeResolver({"example.test": [PUBLIC_SITE]}), router(site, canary))
    rows = []
    async with open_web_tools(settings, network) as tools, httpx2.AsyncClient() as plain:
        assert tools is not None
        for name, path in PAGES.items():
            url = f"http://example.test{path}"
            raw, tool, extract = [], [], []
            for _ in range(runs + 1):  # the first round warms connections and imports
                started = time.perf_counter()
                response = await plain.get(f"http://127.0.0.1:{site.port}{path}")
                raw.append(time.perf_counter() - started)
                body, kind = response.content, response.headers["content-type"].split(";")[0]
                started = time.perf_counter()
                to_text(body, kind, response.charset_encoding, url)
                extract.append(time.perf_counter() - started)
                started = time.perf_counter()
                result = await tools.run().toolbox(url).call("web_fetch", json.dumps({"url": url}))
                tool.append(time.perf_counter() - started)
                assert result.startswith(url), result[:200]
            raw, tool, extract = raw[1:], tool[1:], extract[1:]
            rows.append(
                {
                    "page": name,
                    "bytes": len(body),
                    "plain_fetch_ms": round(median(raw) * 1000, 2),
                    "extract_ms": round(median(extract) * 1000, 2),
                    "tool_ms": round(median(tool) * 1000, 2),
                    "tool_p90_ms": round(percentile(tool, 90) * 1000, 2),
                    "added_ms": round((median(tool) - median(raw)) * 1000, 2),
                    "added_without_extraction_ms": round((median(tool) - median(raw) - median(extract)) * 1000, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    assert canary.connections == 0
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="two runs (CI smoke test)")
    parser.add_argument("--out", help="also write the JSON report here")
    args = parser.parse_args()
    site, canary = Site(), Canary()
    try:
        rows = anyio.run(measure, site, canary, 2 if args.quick else args.runs)
    finally:
        site.close()
        canary.close()
    report("web_fetch", {"runs": 2 if args.quick else args.runs, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
