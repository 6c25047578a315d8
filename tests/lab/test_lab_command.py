"""``fusion-mcp lab`` and the lab of ``serve``: the console script as a subprocess, as a person runs it.

The printed link signs one browser in as the ``local`` principal (whose history the stdio host and ``ask`` fill),
once; its second use is refused. A server without tokens prints such a link too; one with tokens prints none;
a server of several workers says the lab needs one process.
"""

from __future__ import annotations

import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2

from fusion_mcp.http.app import build_app
from fusion_mcp.http.workers import WorkerPlace
from fusion_mcp.lab.app import SINGLE_PROCESS
from tests.conftest import API_KEY, child_env, console_script, sim_env
from tests.fakes.loopback import LoopbackServer
from tests.fakes.provider_sim import ProviderSim
from tests.lab.lab_client import ALICE, TOKENS, LabClient
from tests.servers import free_port, http_server

ONCE = re.compile(r"(http://127\.0\.0\.1:\d+/lab/signin\?once=[A-Za-z0-9_-]+)")


@contextmanager
def lab_command(env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``fusion-mcp lab --no-browser`` on a free port: the link it printed, and the process."""
    port = free_port()
    with subprocess.Popen(
        [console_script(), "lab", "--no-browser", "--port", str(port)],
        env=child_env(**env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            found = ONCE.search(line)
            assert found, f"no link in {line!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
            yield found[1], proc
        finally:
            proc.terminate()
            proc.wait(timeout=15)


def use_link(link: str) -> httpx2.Response:
    """What a browser does with the link: open it, and send its form (the script does so by itself)."""
    base = link.split("/lab/", 1)[0]
    with LabClient(base) as client:
        page = client.get(link)
        assert page.status_code == 200 and "data-autosubmit" in page.text
        token = link.split("once=", 1)[1]
        assert f'value="{token}"' in page.text
        answer = client.form("/lab/signin", {"token": token}, csrf=client.cookies["fusion_lab_signin"])
        if answer.status_code == 303:
            answer = client.get("/lab/history")
        return answer


def test_the_lab_command_signs_in_once_with_its_link_as_the_local_principal(sim: ProviderSim) -> None:
    with tempfile.TemporaryDirectory(prefix="fusion-lab-cmd-") as home:
        env = sim_env(sim, FUSION_HOME=home)
        asked = subprocess.run(
            [console_script(), "ask", "a question asked from the terminal", "--json"],
            env=child_env(**env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert asked.returncode == 0, asked.stderr
        with lab_command(env) as (link, proc):
            first = use_link(link)
            assert first.status_code == 200
            assert "Signed in as <strong>local</strong>" in first.text
            assert "a question asked from the terminal" in first.text  # the stdio principal's history
            again = use_link(link)
            assert again.status_code == 401
            assert "or a one-time token already used" in again.text
            assert "Signed in as" not in again.text
            proc.terminate()
            _, stderr = proc.communicate(timeout=15)
    assert "Traceback" not in stderr and API_KEY not in stderr
    assert "the link signs one browser in, once" in stderr


def test_a_server_without_tokens_prints_a_one_time_lab_link_and_one_with_tokens_none(sim: ProviderSim) -> None:
    with tempfile.TemporaryDirectory(prefix="fusion-lab-serve-") as home:
        with http_server(sim_env(sim, FUSION_HOME=home)) as running:
            deadline = time.monotonic() + 10
            while "lab sign-in (once):" not in running.stderr and time.monotonic() < deadline:
                time.sleep(0.05)
            found = ONCE.search(running.stderr)
            assert found and f"  web lab:                 {running.base}/lab" in running.stderr
            assert use_link(found[1]).status_code == 200
            assert use_link(found[1]).status_code == 401
        with http_server(sim_env(sim, FUSION_HOME=home, FUSION_HTTP_TOKENS=TOKENS)) as running:
            with LabClient(running.base) as client:
                assert client.sign_in(ALICE).status_code == 303
            assert "once=" not in running.stderr and "web lab:" in running.stderr


def test_a_server_of_several_workers_says_the_lab_needs_one_process(sim: ProviderSim, tmp_path: Path) -> None:
    settings_env = sim_env(sim, FUSION_HOME=str(tmp_path), FUSION_HTTP_TOKENS=TOKENS)
    from fusion_mcp.config import load_settings

    app = build_app(load_settings(environ=settings_env), place=WorkerPlace(0, 2, tmp_path))
    server = LoopbackServer(app, lifespan="on")
    try:
        for path in ("/lab", "/lab/signin", "/lab/ask"):
            answer = httpx2.get(f"http://127.0.0.1:{server.port}{path}")
            assert (answer.status_code, answer.text) == (503, SINGLE_PROCESS), path
    finally:
        server.close()


def test_a_replica_behind_a_proxy_says_the_lab_needs_one_process(sim: ProviderSim, tmp_path: Path) -> None:
    from fusion_mcp.config import load_settings

    env = sim_env(sim, FUSION_HOME=str(tmp_path), FUSION_HTTP_TOKENS=TOKENS, FUSION_REPLICA="a")
    server = LoopbackServer(build_app(load_settings(environ=env)), lifespan="on")
    try:
        answer = httpx2.get(f"http://127.0.0.1:{server.port}/lab/signin")
        assert (answer.status_code, answer.text) == (503, SINGLE_PROCESS)
    finally:
        server.close()


def test_the_lab_command_opens_the_browser_on_its_link(sim: ProviderSim, tmp_path: Path) -> None:
    """``BROWSER`` names the browser Python's ``webbrowser`` starts: here a script that writes down its URL."""
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {opened}\n')
    browser.chmod(0o755)
    port = free_port()
    env = sim_env(sim, FUSION_HOME=str(tmp_path / "home"), BROWSER=f"{browser} %s")
    with subprocess.Popen(
        [console_script(), "lab", "--port", str(port)],
        env=child_env(**env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            found = ONCE.search(proc.stdout.readline())
            assert found
            deadline = time.monotonic() + 10
            while not opened.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert opened.read_text() == found[1]
        finally:
            proc.terminate()
            proc.wait(timeout=15)


def test_the_lab_command_names_a_port_it_cannot_have(sim: ProviderSim, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [console_script(), "lab", "--no-browser", "--port", str(port)],
            env=child_env(**sim_env(sim, FUSION_HOME=str(tmp_path))),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"fusion-mcp: port {port}" in done.stderr and "Traceback" not in done.stderr
    assert "once=" not in done.stdout
