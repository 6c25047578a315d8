"""Each benchmark runs once at a tiny size, so the scripts cannot rot. No figure is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

CASES = {
    "overhead": {"rows"},
    "load": {"rows"},
    "startup": {"median_ms"},
    "output_size": {"rows"},
    "web_fetch": {"rows"},
    "chat": {"rows"},
    "responses": {"rows"},
    "floors": {"figures"},
}


@pytest.mark.slow  # ~80 s for the eight: CI runs them, a developer's default run does not
@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["benchmark"] == name and report["machine"]["cores"]
    assert CASES[name] <= set(report)
    if "rows" in report:
        assert report["rows"] and all(row for row in report["rows"])
