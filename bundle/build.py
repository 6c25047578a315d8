"""Build the Claude Desktop bundle (``.mcpb``) with the official packer, ``mcpb`` from npm (@anthropic-ai/mcpb).

    python bundle/build.py [--mcpb PATH] [--out dist/fusion-mcp-VERSION.mcpb]

The bundle holds the manifest, the entry point, ``pyproject.toml``, ``README.md`` and the ``fusion_mcp``
package; Claude Desktop's uv runtime installs the dependencies from ``pyproject.toml`` on the user's
machine, so one bundle serves macOS, Windows and Linux. The manifest is validated, then packed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "bundle"
FILES = [(BUNDLE / "manifest.json", "manifest.json"), (BUNDLE / "server" / "main.py", "server/main.py")]
FILES += [(ROOT / "pyproject.toml", "pyproject.toml"), (ROOT / "README.md", "README.md")]


def stage(into: Path) -> Path:
    """Lay out the bundle's files in ``into`` (compiled files and caches left out)."""
    for source, name in FILES:
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, into / name)
    shutil.copytree(ROOT / "fusion_mcp", into / "fusion_mcp", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return into


def find_mcpb(given: str | None) -> str:
    found = given or os.environ.get("FUSION_MCPB") or shutil.which("mcpb")
    if not found:
        raise SystemExit("mcpb not found: npm install -g @anthropic-ai/mcpb, or pass --mcpb PATH (or FUSION_MCPB)")
    return found


def build(mcpb: str, out: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="fusion-mcpb-") as scratch:
        staged = stage(Path(scratch) / "fusion-mcp")
        subprocess.run([mcpb, "validate", str(staged / "manifest.json")], check=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([mcpb, "pack", str(staged), str(out)], check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mcpb", help="the mcpb binary (default: FUSION_MCPB, else mcpb on PATH)")
    parser.add_argument("--out", help="where to write the bundle (default: dist/fusion-mcp-VERSION.mcpb)")
    args = parser.parse_args()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    out = Path(args.out) if args.out else ROOT / "dist" / f"fusion-mcp-{version}.mcpb"
    try:
        print(build(find_mcpb(args.mcpb), out))
    except subprocess.CalledProcessError as exc:
        sys.exit(f"bundle not built: {' '.join(exc.cmd)} exited {exc.returncode}")


if __name__ == "__main__":
    main()
