"""Codex CLI (the pinned ``@openai/codex``; ``FUSION_CODEX``) with the server as its model provider
(``model_providers.fusion`` with ``wire_api = "responses"``) in a temporary ``CODEX_HOME``, answering a question
through fusion in ``codex exec`` against the simulator. Codex's other traffic goes to a closed local port.

Codex sends, with every request, its own function tools, a ``namespace`` tool (``multi_agent_v1``: functions
for sub-agents) and OpenAI's hosted ``web_search``: the namespace's functions are offered to the writer, the
hosted tool is left out.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ANALYST, PANEL, child_env
from tests.fakes import writer
from tests.fakes.provider_sim import ProviderSim

ANSWER = "Fusion says: choose A, the panel agrees."
CLOSED = "http://127.0.0.1:9"


def codex() -> str:
    path = os.environ.get("FUSION_CODEX", "")
    if not path or not os.path.exists(path):
        if os.environ.get("CI"):
            pytest.fail("FUSION_CODEX is not set to the codex binary; .ci/run installs it")
        pytest.skip("codex is not installed (set FUSION_CODEX)")
    return path


def test_codex_exec_answers_through_fusion(sim: ProviderSim, http_server: str, tmp_path: Path) -> None:
    binary = codex()
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(
        'model = "openrouter/fusion"\n'
        'model_provider = "fusion"\n'
        "[model_providers.fusion]\n"
        'name = "fusion-mcp"\n'
        f'base_url = "{http_server}/v1"\n'
        'wire_api = "responses"\n'
        'env_key = "CODEX_FUSION_TOKEN"\n'
        "request_max_retries = 0\n"
        "stream_max_retries = 0\n"
    )
    project = tmp_path / "project"
    project.mkdir()
    # The alias writes with the configured analyst, which is also the first panel member here.
    sim.scripts[ANALYST] = writer.fusing(final=ANSWER)
    env = child_env(
        HOME=str(tmp_path),
        CODEX_HOME=str(home),
        CODEX_FUSION_TOKEN="sk-unused-locally",
        HTTPS_PROXY=CLOSED,
        HTTP_PROXY=CLOSED,
        ALL_PROXY=CLOSED,
        NO_PROXY="127.0.0.1,localhost",
        NO_COLOR="1",
    )
    out = subprocess.run(
        [binary, "exec", "--skip-git-repo-check", "--sandbox", "read-only", "Which of A and B should we choose?"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == ANSWER
    for model in PANEL:
        assert sim.requests_for(model), f"{model} was not asked"
    deciding, answering = [r.body for r in sim.requests_for(ANALYST) if writer.is_writer(r.body)]
    assert deciding["messages"][-1] == {"role": "user", "content": "Which of A and B should we choose?"}
    assert answering["messages"][-1]["role"] == "tool"
    offered = writer.offered(deciding)
    assert {"exec_command", "spawn_agent", writer.FUSION} <= set(offered)  # spawn_agent: in Codex's namespace
    assert not {"store", "include", "client_metadata", "prompt_cache_key"} & set(deciding)
