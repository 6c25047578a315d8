"""``fusion-mcp ask``: one fusion from a terminal, progress on stderr, the result on stdout."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import ANALYST, API_KEY, PANEL, child_env, console_script, sim_env
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import wait_for


def ask(sim: ProviderSim, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script(), "ask", *args],
        env=child_env(**sim_env(sim, **env)),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )


def test_ask_json_has_the_analysis_and_a_final_answer(sim: ProviderSim) -> None:
    sim.scripts[ANALYST] = lambda body: (
        Reply() if "response_format" in body or body.get("stream") else Reply(content="The final answer is 42.")
    )
    out = ask(sim, "What is 6*7?", "--models", "a/x,b/y", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["status"] == "ok" and [r["model"] for r in data["responses"]] == ["a/x", "b/y"]
    assert "analysis" in data and data["final_answer"] == "The final answer is 42."
    assert "[1/4] 1/2 answered" in out.stderr or "[2/4] 2/2 answered" in out.stderr
    assert API_KEY not in out.stdout + out.stderr


def test_ask_analysis_only_renders_markdown_without_a_final_answer(sim: ProviderSim) -> None:
    out = ask(sim, "q", "--analysis-only")
    assert out.returncode == 0
    assert out.stdout.startswith("# Fusion analysis: 3 answers") and "Final answer" not in out.stdout
    assert len([r for r in sim.requests if r.model == ANALYST]) == 2  # its panel answer and the analysis


def test_ask_exits_non_zero_on_an_error_result_and_on_bad_arguments(sim: ProviderSim) -> None:
    for model in PANEL:
        sim.script(model, Reply(status=402, error_message="no credits"))
    out = ask(sim, "q")
    assert out.returncode == 1 and out.stdout.startswith("**Fusion failed** (insufficient_credits)")
    bad = ask(sim, "q", "--models", "a,a")
    assert bad.returncode == 2 and "--models: must be 1-8 unique" in bad.stderr
    budget = ask(sim, "q", "--max-tool-calls", "99")
    assert budget.returncode == 2
    assert "--max-tool-calls: must be a whole number from 1 to 16 (99 given)" in budget.stderr


def test_ask_interrupted_prints_a_cancelled_result(sim: ProviderSim) -> None:
    import signal

    for model in PANEL:
        sim.script(model, Reply(latency=30))
    with subprocess.Popen(
        [console_script(), "ask", "q", "--json"],
        env=child_env(**sim_env(sim)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as proc:
        wait_for(lambda: len(sim.requests) == 3, 20)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert json.loads(out)["failure_reason"] == "cancelled"
    wait_for(lambda: len(sim.disconnects) == 3)
    assert sorted(sim.disconnects) == sorted(PANEL)


def test_ask_draws_live_progress_when_stderr_is_a_terminal(sim: ProviderSim) -> None:
    import os

    sim.script(PANEL[2], Reply(latency=1.2))
    master, slave = os.openpty()
    try:
        proc = subprocess.run(
            [console_script(), "ask", "q", "--analysis-only"],
            env=child_env(**sim_env(sim)),
            stdout=subprocess.PIPE,
            stderr=slave,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=60,
        )
        os.close(slave)
        screen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(master)
    text = screen.decode()
    assert proc.returncode == 0 and proc.stdout.startswith("# Fusion analysis")
    assert "\x1b[2K" in text and "\x1b[4F" in text  # lines redrawn in place: 3 members + the analyst
    assert f"{PANEL[2]}" in text and "answered" in text and "analysis ready" in text
    assert "[1/5]" not in text  # not the plain lines


def test_ask_takes_answers_files_and_the_self_preset(sim: ProviderSim, tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("The TTL is 42 s.", encoding="utf-8")
    (tmp_path / "draft.txt").write_text("My draft says 60 s.", encoding="utf-8")
    out = ask(
        sim,
        "What TTL?",
        "--preset",
        "self",
        "--model",
        "llama3",
        "--answer",
        "draft=@draft.txt",
        "--answer",
        "colleague=Use 30 s.",
        "--file",
        "notes.md",
        "--analysis-only",
        "--json",
        cwd=tmp_path,  # without FUSION_FILES_ROOTS, ask reads files under the current directory
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [r["model"] for r in data["responses"]] == [
        "llama3#skeptic",
        "llama3#pragmatist",
        "llama3#researcher",
        "guest:draft",
        "guest:colleague",
    ]
    assert data["responses"][3]["content"] == "My draft says 60 s."
    members = [r for r in sim.requests if "response_format" not in r.body]
    assert len(members) == 3 and all("The TTL is 42 s." in json.dumps(r.body) for r in members)
    assert all("My draft" not in json.dumps(r.body) for r in members)
    bad = ask(sim, "q", "--answer", "no-equals-sign")
    assert bad.returncode == 2 and "--answer 'no-equals-sign': give it as LABEL=TEXT or LABEL=@FILE" in bad.stderr
    dup = ask(sim, "q", "--answer", "a=x", "--answer", "a=y")
    assert dup.returncode == 2 and "--answer: must be at most 4 answers" in dup.stderr
    escape = ask(sim, "q", "--file", "/etc/hostname", cwd=tmp_path)
    assert escape.returncode == 1 and "invalid argument files" in escape.stdout
    assert "(/etc/hostname: outside the allowed roots)" in escape.stdout
