"""The code stays ruff-clean: lint and format are part of the one test command."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_ruff_check_and_format() -> None:
    for args in (["check", "."], ["format", "--check", "."]):
        out = subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
