"""Start-up: from launching ``fusion-mcp`` over stdio to the ``tools/list`` answer; median of 10.

A host launches the server on every session, so this is paid once per conversation. The client side is
raw JSON-RPC lines, so nothing but the server's own start-up is measured.

    python -m bench.startup [--runs 10] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time

from bench.common import fusion_command, median, percentile, report, server_env

LINES = (
    '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},'
    '"clientInfo":{"name":"bench","version":"1"}}}\n'
    '{"jsonrpc":"2.0","method":"notifications/initialized"}\n'
    '{"jsonrpc":"2.0","id":2,"method":"tools/list"}\n'
)


def once() -> float:
    started = time.perf_counter()
    with subprocess.Popen(
        [fusion_command()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=server_env("http://127.0.0.1:9/v1"),
        text=True,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(LINES)
        proc.stdin.flush()
        while True:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("server exited before answering tools/list")
            message = json.loads(line)
            if message.get("id") == 2:
                elapsed = time.perf_counter() - started
                assert message["result"]["tools"][0]["name"] == "openrouter_fusion"
                break
        proc.stdin.close()
        proc.wait(timeout=10)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="one run (CI smoke test)")
    parser.add_argument("--out", help="also write the JSON report here")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    once()  # warm the OS file cache, as a host's second launch would be
    times = [once() for _ in range(runs)]
    print(f"start-up to tools/list: median {median(times) * 1000:.0f} ms over {runs} runs", flush=True)
    report(
        "startup",
        {
            "runs": runs,
            "median_ms": round(median(times) * 1000, 1),
            "p90_ms": round(percentile(times, 90) * 1000, 1),
            "max_ms": round(max(times) * 1000, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
