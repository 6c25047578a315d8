"""The MCP conformance suite against ``fusion-mcp serve --transport http``.

``.ci/run`` installs the suite (Node 22) and sets ``FUSION_CONFORMANCE`` to its ``conformance`` binary.
Scenarios that need the reference "everything" server's fixtures are listed, each with its reason, in
``conformance-expected-failures.yml``; the suite fails on any other failure and on a stale entry.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests import servers
from tests.conftest import child_env, sim_env
from tests.fakes.provider_sim import ProviderSim

CONFORMANCE = os.environ.get("FUSION_CONFORMANCE", "")
EXPECTED = Path(__file__).with_name("conformance-expected-failures.yml")


def test_conformance_suite(sim: ProviderSim, tmp_path: Path) -> None:
    if not CONFORMANCE or not os.path.exists(CONFORMANCE):
        if os.environ.get("CI"):
            pytest.fail("FUSION_CONFORMANCE is not set to the conformance binary; .ci/run installs it")
        pytest.skip("the MCP conformance suite is not installed (set FUSION_CONFORMANCE)")
    with servers.http_server(sim_env(sim)) as running:
        out = subprocess.run(
            [
                CONFORMANCE,
                "server",
                "--url",
                f"{running.base}/mcp",
                "--expected-failures",
                str(EXPECTED),
                "-o",
                str(tmp_path),
            ],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
    summary = out.stdout[out.stdout.find("=== SUMMARY ===") :]
    assert out.returncode == 0, summary + out.stderr[-2000:]
    assert "Baseline check passed" in out.stdout
    assert "server-initialize: 1 passed, 0 failed" in summary and "tools-call-simple-text: 1 passed" in summary
