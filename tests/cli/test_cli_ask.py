"""``fusion-mcp ask``: one fusion from a terminal, progress on stderr, the result on stdout."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import ANALYST, API_KEY, PANEL, child_env, console_script, sim_env
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import wait_for, with_a_terminal


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
    long = ask(sim, "q" * 600, "--context", "c" * 401, FUSION_MAX_PROMPT_CHARS="1000")
    assert long.returncode == 2 and "fusion-mcp: --context: must be the material the panel needs" in long.stderr


def test_ask_logs_warnings_only_unless_verbose(sim: ProviderSim) -> None:
    short = "fusion_mcp: OPENROUTER_API_KEY is shorter than 8 characters: it looks wrong"
    quiet = ask(sim, "q", "--analysis-only", OPENROUTER_API_KEY="k3y-x7")
    assert quiet.returncode == 0, quiet.stderr
    assert " INFO " not in quiet.stderr and f" WARNING {short}" in quiet.stderr, quiet.stderr
    assert "[5/5] analysis ready" in quiet.stderr  # the progress lines are not logging: they stay
    for flag in ("-v", "--verbose"):
        loud = ask(sim, "q", "--analysis-only", flag, OPENROUTER_API_KEY="k3y-x7")
        assert loud.returncode == 0 and f" WARNING {short}" in loud.stderr
        assert " INFO fusion_mcp.engine.service: run fus_" in loud.stderr, loud.stderr


def test_ask_takes_a_preset_and_says_when_an_answer_came_from_the_cache(sim: ProviderSim, tmp_path: Path) -> None:
    from fusion_mcp.config import PRESETS

    fast_panel, fast_analyst = PRESETS["fast"]
    home = {"FUSION_CACHE": "on", "FUSION_HOME": str(tmp_path)}
    first = ask(sim, "q", "--preset", "fast", "--json", "--analysis-only", **home)
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert [r["model"] for r in data["responses"]] == list(fast_panel) and data["analyst_model"] == fast_analyst
    asked = len(sim.requests)
    again = ask(sim, "q", "--preset", "fast", "--json", "--analysis-only", **home)
    assert json.loads(again.stdout)["cached"] is True and len(sim.requests) == asked
    assert "answered from the cache (an identical question ran recently; no new cost). --no-cache" in again.stderr
    fresh = ask(sim, "q", "--preset", "fast", "--json", "--analysis-only", "--no-cache", **home)
    assert json.loads(fresh.stdout).get("cached") is not True and len(sim.requests) == 2 * asked
    assert "answered from the cache" not in fresh.stderr
    bad = ask(sim, "q", "--preset", "slow")
    assert bad.returncode == 2 and "argument --preset: invalid choice: 'slow'" in bad.stderr


def test_ask_interrupted_prints_a_cancelled_result(sim: ProviderSim) -> None:
    """Interrupted once every member's request is in flight, however long a busy machine takes to get there:
    the limits below are only there so that a broken run fails instead of hanging."""
    import signal

    for model in PANEL:
        sim.script(model, Reply(latency=3600))  # the members answer only if the interrupt never comes
    with subprocess.Popen(
        [console_script(), "ask", "q", "--json"],
        env=child_env(**sim_env(sim)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            wait_for(lambda: len(sim.requests) == len(PANEL) or proc.poll() is not None, 600)
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:  # a failure above: do not leave it waiting on the simulator
                proc.kill()
    assert proc.returncode == 130, err
    assert json.loads(out)["failure_reason"] == "cancelled"
    wait_for(lambda: len(sim.disconnects) == len(PANEL), 600)
    assert sorted(sim.disconnects) == sorted(PANEL)


def test_ask_draws_live_progress_when_stderr_is_a_terminal(sim: ProviderSim) -> None:
    sim.script(PANEL[2], Reply(latency=1.2))
    command = [console_script(), "ask", "q", "--analysis-only"]
    proc, text = with_a_terminal(command, env=child_env(**sim_env(sim)), stdin=subprocess.DEVNULL, timeout=60)
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


def terminal_bytes(sim: ProviderSim, *args: str, columns: int = 80, lines: int = 30, **env: str) -> tuple[bytes, str]:
    """Run ``ask`` with stderr on a pseudo-terminal of ``columns`` x ``lines``; everything written to the
    terminal, and stdout."""
    import fcntl
    import os
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    try:
        with subprocess.Popen(
            [console_script(), "ask", *args],
            env=child_env(**sim_env(sim, **env)),
            stdout=subprocess.PIPE,
            stderr=slave,
            stdin=subprocess.DEVNULL,
            text=True,
        ) as proc:
            os.close(slave)
            written = b""
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed its end
                    break
                if not chunk:
                    break
                written += chunk
            out = proc.stdout.read() if proc.stdout else ""
            assert proc.wait(timeout=60) == 0, written.decode(errors="replace")
    finally:
        os.close(master)
    return written, out


def screen_of(sim: ProviderSim, *args: str, columns: int = 80, lines: int = 30, **env: str) -> tuple[list[str], str]:
    """Run ``ask`` on a pseudo-terminal; the final screen (as a real VT100 emulator renders everything written)
    and stdout."""
    import pyte

    written, out = terminal_bytes(sim, *args, columns=columns, lines=lines, **env)
    screen = pyte.Screen(columns, lines)
    pyte.ByteStream(screen).feed(written)
    return [line.rstrip() for line in screen.display], out


def test_the_live_block_fits_80_columns_with_a_long_failure_a_retry_and_log_lines(sim: ProviderSim) -> None:
    slow, failing, retried = PANEL  # the first is also the analyst: it must not fail
    sim.script(failing, Reply(status=400, error_message="the provider rejected this request because " + "x " * 150))
    sim.script(retried, Reply(status=502, error_message="upstream down", retry_after="0.2"), Reply())
    sim.script(slow, Reply(latency=1.2))
    screen, out = screen_of(sim, "q", "--analysis-only", "--verbose")
    assert out.startswith("# Fusion analysis: 2 answers")
    rows = {name: [i for i, line in enumerate(screen) if line.startswith(f"  {name} ")] for name in PANEL}
    rows["analyst"] = [i for i, line in enumerate(screen) if line.startswith(f"  analyst {ANALYST} ")]
    # Exactly one row per member and the analyst: nothing wrapped, nothing left behind by a redraw.
    assert all(len(found) == 1 for found in rows.values()), "\n".join(screen)
    block = sorted(found[0] for found in rows.values())
    assert block == list(range(block[0], block[0] + 4))
    assert [line for line in screen[block[-1] + 1 :] if line] == []
    failed = screen[rows[failing][0]]
    assert "  failed: HTTP 400: the pro" in failed and failed.endswith("...")
    assert len(failed) == 79
    assert not any("x x x" in line for line in screen)  # the long message did not spill onto other lines
    assert "answered after 1 retry" in screen[rows[retried][0]]
    assert "answered" in screen[rows[slow][0]] and "analysis ready" in screen[rows["analyst"][0]]
    # Log lines written while the block was live sit above it, whole.
    logs = [i for i, line in enumerate(screen) if " INFO fusion_mcp" in line]
    assert logs and max(logs) < block[0], "\n".join(screen)


def test_the_live_block_says_when_the_answer_came_from_the_cache(sim: ProviderSim, tmp_path: Path) -> None:
    home = {"FUSION_CACHE": "on", "FUSION_HOME": str(tmp_path)}
    screen_of(sim, "q", "--analysis-only", **home)
    screen, out = screen_of(sim, "q", "--analysis-only", **home)
    rows = [line for line in screen if line.startswith(("  ~", "  analyst "))]
    assert len(rows) == 4 and all(row.endswith("from the cache") for row in rows), "\n".join(screen)
    assert "answered from the cache" in "\n".join(screen) and "from the cache, no new cost" in out


def scroll_on_clear_screen(columns: int, lines: int) -> Any:
    """A VT100 screen with scrollback that, like tmux (``scroll-on-clear``), first scrolls the screen into the
    scrollback when it is erased from its first line ("erase below" at the top left erases all of it)."""
    import pyte

    class Screen(pyte.HistoryScreen):
        def erase_in_display(self, how: int = 0, *args: Any, **kwargs: Any) -> None:
            if how == 0 and self.cursor.x == 0 and self.cursor.y == 0:
                for y in range(self.lines):
                    kept = type(self.buffer[y])(self.buffer[y].default)
                    kept.update(self.buffer[y])
                    self.history.top.append(kept)
            super().erase_in_display(how, *args, **kwargs)

    return Screen(columns, lines, history=1000)


def test_the_live_block_started_on_the_top_line_leaves_no_copy_in_the_scrollback(sim: ProviderSim) -> None:
    import pyte

    # --verbose: log lines are written above the live block while it runs, from the terminal's first line.
    written, out = terminal_bytes(sim, "q", "--analysis-only", "--verbose")
    screen = scroll_on_clear_screen(80, 30)
    pyte.ByteStream(screen).feed(written)
    history = ["".join(line[x].data for x in range(80)).rstrip() for line in screen.history.top]
    shown = [line.rstrip() for line in screen.display]
    assert [line for line in history if line.strip()] == [], "\n".join(history)
    rows = [line for line in shown if line.startswith(("  ~", "  analyst "))]
    assert len(rows) == 4 and all(row.endswith(("answered", "analysis ready")) for row in rows), "\n".join(shown)
    assert any(" INFO fusion_mcp" in line for line in shown) and out.startswith("# Fusion analysis")


def test_a_retry_is_shown_waiting_then_started_and_a_failure_says_its_status_once(sim: ProviderSim) -> None:
    import pyte

    _, failing, retried = PANEL  # the first is also the analyst: it must not fail
    sim.script(failing, Reply(status=404, error_message="no such model"))
    sim.script(retried, Reply(status=502, error_message="upstream down", retry_after="0.3"), Reply(latency=1.5))
    written, out = terminal_bytes(sim, "q", "--analysis-only", columns=120)
    screen = pyte.Screen(120, 30)
    stream = pyte.ByteStream(screen)
    states = []  # the retried row's state after each redraw of the block
    for frame in written.split(b"\x1b[4F"):
        stream.feed(frame + b"\x1b[4F")
        row = next((line for line in screen.display if line.startswith(f"  {retried} ")), None)
        if row is not None:
            state = row.split(" s  ", 1)[1].rstrip()
            if not states or states[-1] != state:
                states.append(state)
    waiting = [i for i, state in enumerate(states) if state.startswith("retrying in ")]
    started = [i for i, state in enumerate(states) if state == "thinking (2nd try, after HTTP 502: upstream down)"]
    assert waiting and started and max(waiting) < min(started), states
    assert states[-1] == "answered after 1 retry", states
    failed = next(line for line in screen.display if line.startswith(f"  {failing} "))
    assert failed.rstrip().endswith("  failed: HTTP 404: no such model") and "(HTTP 404)" not in failed
    assert f"- {failing}: HTTP 404: no such model" in out and "(HTTP 404)" not in out
