"""What the commands print, and how they end when nobody reads it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import child_env, console_script, sim_env
from tests.fakes.provider_sim import ProviderSim


@pytest.mark.parametrize(
    "command",
    [["runs", "--json"], ["runs"], ["usage", "--json"], ["ask", "q", "--json", "--analysis-only"], ["doctor"]],
    ids=" ".join,
)
def test_a_reader_that_went_away_ends_the_command_quietly_with_141(
    sim: ProviderSim, tmp_path: Path, command: list[str]
) -> None:
    """``fusion-mcp runs --json | head -1``: the pipe's reader is gone before the command writes."""
    with subprocess.Popen(
        [console_script(), *command],
        env=child_env(**sim_env(sim, FUSION_HOME=str(tmp_path))),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        errors = proc.stderr.read()
        assert proc.wait(timeout=60) == 141
    assert "Traceback" not in errors and "BrokenPipeError" not in errors and "Exception ignored" not in errors, errors
