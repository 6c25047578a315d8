"""Real third-party clients of the chat endpoint: the official ``openai`` Python package, and Node running
OpenRouter's documented Fusion example unchanged except for the base URL and the key.

``.ci/run`` installs Node 22 and sets ``FUSION_NODE``; elsewhere the Node test uses ``node`` from PATH
(any Node with ``fetch``, 18 or later) and skips without one, except under CI, where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.conftest import ANALYST, PANEL, REPO, child_env
from tests.fakes import writer
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import ANALYSIS_KEYS

WRITER = "acme/writer"
USER = {"role": "user", "content": "Which of A and B should we choose?"}
EXAMPLE = REPO / "tests" / "clients" / "openrouter_example.mjs"
DOCS_ORIGIN = "https://openrouter.ai"
DOCS_KEY = "<OPENROUTER_API_KEY>"
FUSION = {"plugins": [{"id": "fusion"}]}


@pytest.fixture
def client(http_server: str) -> Iterator[OpenAI]:
    # The SDK insists on a key; a server without tokens ignores it. No retries: a failure must show as one.
    with OpenAI(base_url=f"{http_server}/v1", api_key="sk-unused-locally", max_retries=0, timeout=60) as sdk:
        yield sdk


def test_openai_sdk_fused_answer(sim: ProviderSim, client: OpenAI) -> None:
    sim.scripts[WRITER] = writer.fusing()
    completion = client.chat.completions.create(model=WRITER, messages=[USER], extra_body=FUSION)
    assert completion.choices[0].message.content == writer.FINAL
    assert completion.choices[0].finish_reason == "stop" and completion.model == WRITER
    assert completion.usage is not None and completion.usage.total_tokens == 900
    assert completion.usage.model_extra == {"cost": 0.009}
    fusion: dict[str, Any] = (completion.model_extra or {})["fusion"]
    assert fusion["status"] == "ok" and set(fusion["analysis"]) == ANALYSIS_KEYS


def test_openai_sdk_streaming(sim: ProviderSim, client: OpenAI) -> None:
    sim.scripts[WRITER] = writer.fusing()
    chunks = list(
        client.chat.completions.create(
            model=WRITER,
            messages=[USER],
            stream=True,
            stream_options={"include_usage": True},
            extra_body=FUSION,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == writer.FINAL
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finish] == ["stop"]
    assert (finish[0].model_extra or {})["fusion"]["status"] == "ok"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 900


def test_openai_sdk_tool_call_round_trip(sim: ProviderSim, client: OpenAI) -> None:
    weather = writer.call("get_weather", {"city": "Oslo"}, "call_w")
    sim.script(WRITER, Reply(content="", tool_calls=[weather], finish_reason="tool_calls"), Reply(content="Sunny."))
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    first = client.chat.completions.create(model=WRITER, messages=[USER], tools=tools, extra_body=FUSION)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls is not None
    (called,) = choice.message.tool_calls
    assert (called.id, called.function.name, json.loads(called.function.arguments)) == (
        "call_w",
        "get_weather",
        {"city": "Oslo"},
    )
    turn: Any = [USER, choice.message.model_dump(exclude_none=True)]
    turn.append({"role": "tool", "tool_call_id": called.id, "content": "12 C, sunny"})
    second = client.chat.completions.create(model=WRITER, messages=turn, tools=tools, extra_body=FUSION)
    assert second.choices[0].message.content == "Sunny."


def test_openai_sdk_errors(sim: ProviderSim, client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=WRITER,
            messages=[USER],
            extra_body={"plugins": [{"id": "fusion", "max_tool_calls": 0}]},
        )
    assert bad.value.status_code == 400 and bad.value.param == "plugins[0].max_tool_calls"
    assert bad.value.message.endswith("plugins[0].max_tool_calls: must be a whole number from 1 to 16 (0 given)")
    sim.script(WRITER, Reply(status=404, error_message="No endpoints found"))
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model=WRITER, messages=[USER])
    assert missing.value.code == "model_not_found"


def node() -> str | None:
    """A Node binary with ``fetch`` (18 or later): ``FUSION_NODE``, else ``node`` on PATH."""
    found = os.environ.get("FUSION_NODE") or shutil.which("node")
    if not found or not os.path.exists(found):
        return None
    version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    return found if int(version.lstrip("v").split(".")[0] or 0) >= 18 else None


def test_openrouter_documentation_example_runs_unchanged_but_for_url_and_key(
    sim: ProviderSim, http_server: str
) -> None:
    binary = node()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("no Node with fetch: set FUSION_NODE (.ci/run installs Node 22)")
        pytest.skip("no Node 18+ with fetch on PATH (set FUSION_NODE)")
    source = EXAMPLE.read_text()
    assert source.count(DOCS_ORIGIN) == 1 and source.count(DOCS_KEY) == 1
    script = source.replace(DOCS_ORIGIN, http_server).replace(DOCS_KEY, "sk-or-v1-anything")
    # The alias writes with the configured analyst, which is also the first panel member here.
    sim.scripts[ANALYST] = writer.fusing(final="Both sides, compared: the panel agrees on the core point.")
    out = subprocess.run(
        [binary, "--input-type=module", "-"],
        input=script,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Both sides, compared: the panel agrees on the core point.\n"
    for model in PANEL:
        assert sim.requests_for(model), f"{model} was not asked"
    deciding, answering = [r.body for r in sim.requests_for(ANALYST) if writer.is_writer(r.body)]
    assert deciding["messages"][0]["content"].startswith("What are the strongest arguments for and against")
    assert answering["messages"][-1]["role"] == "tool"
