from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from hypothesis import HealthCheck, settings

from fusion_mcp.config import Settings, load_settings
from tests.fakes.provider_sim import ProviderSim
from tests.fakes.search_apis import SearchApis
from tests.fakes.web import Canary, Site

# Property-based tests: a bounded number of examples in the default suite, more in CI. Each example may be a
# request over loopback (no deadline: the machine may be busy), and they share module-scoped servers.
settings.register_profile(
    "default", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.register_profile("ci", settings.get_profile("default"), max_examples=150)
settings.load_profile("ci" if os.environ.get("CI") else "default")

API_KEY = "sk-or-v1-TESTKEY-0123456789abcdef-do-not-leak"
PANEL = ("~anthropic/claude-opus-latest", "~openai/gpt-latest", "~google/gemini-pro-latest")
ANALYST = "~anthropic/claude-opus-latest"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def _sim() -> Iterator[ProviderSim]:
    sim = ProviderSim().start()
    yield sim
    sim.stop()


@pytest.fixture
def sim(_sim: ProviderSim) -> Iterator[ProviderSim]:
    _sim.reset()
    yield _sim
    _sim.reset()


@pytest.fixture(scope="session")
def site() -> Iterator[Site]:
    """The loopback web site that ``example.test`` (a public fake address) leads to."""
    s = Site()
    yield s
    s.close()


@pytest.fixture(scope="session")
def canary() -> Iterator[Canary]:
    """Where every connection the guard should have refused would land; tests assert it saw none."""
    c = Canary()
    yield c
    c.close()


@pytest.fixture(scope="session")
def _apis() -> Iterator[SearchApis]:
    apis = SearchApis()
    yield apis
    apis.close()


@pytest.fixture
def apis(_apis: SearchApis) -> Iterator[SearchApis]:
    _apis.reset()
    yield _apis
    _apis.reset()


HOME_DIR = tempfile.mkdtemp(prefix="fusion-test-home-")
"""The run history of the whole test session; the cache is off unless a test turns it on."""


def sim_env(sim: ProviderSim, **extra: str) -> dict[str, str]:
    env = {
        "FUSION_HOME": HOME_DIR,
        "FUSION_CACHE": "off",
        "OPENROUTER_API_KEY": API_KEY,
        "OPENROUTER_BASE_URL": sim.base_url,
        "FUSION_ANALYSIS_MODELS": ",".join(PANEL),
        "FUSION_MODEL": ANALYST,
    }
    env.update(extra)
    return env


def shared_env(sim: ProviderSim, **extra: str) -> dict[str, str]:
    """``sim_env`` for a server that outlives a test (module or session scope): it reaches the simulator
    through the address that lists no catalogue, so no test's catalogue stays in its cache for the next."""
    return sim_env(sim, OPENROUTER_BASE_URL=sim.shared_base_url, **extra)


@pytest.fixture
def settings(sim: ProviderSim) -> Settings:
    return load_settings(environ=sim_env(sim))


def console_script() -> str:
    """The installed ``fusion-mcp`` entry point beside this interpreter (what a host would launch)."""
    candidate = Path(sys.executable).parent / "fusion-mcp"
    found = str(candidate) if candidate.exists() else shutil.which("fusion-mcp")
    if not found:
        pytest.fail("the fusion-mcp console script is not installed: pip install -e '.[test]'")
    return found


def child_env(**extra: str) -> dict[str, str]:
    """A minimal environment for subprocesses: PATH and HOME only, plus what the test says."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "SYSTEMROOT") if k in os.environ}
    env.update(extra)
    return env


_COLLECTOR = gc.get_threshold()
"""CPython's collector thresholds, before a test module imports ``fusion_mcp.cli`` (which raises them)."""


def pytest_collection_finish(session: pytest.Session) -> None:
    """Tests run at CPython's collector thresholds, not the command's (``fusion_mcp.cli``), as they did before it
    raised them. Each test runs its own event loop; at the command's threshold, garbage one test leaves in
    reference cycles (an abandoned stream's async generators) is collected much later, in another test. Once in
    four CI runs that failed the soak test with an unraisable "async generator already executing" from an
    httpcore2 stream. A server has one loop for its life; the command's setting is checked in a
    process of its own (``tests/mcp_server/test_server_start.py``)."""
    gc.set_threshold(*_COLLECTOR)


def run_python(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter (what loads in a process that runs only it), its output captured."""
    command = [sys.executable, "-c", code, *args]
    return subprocess.run(command, env=child_env() if env is None else env, capture_output=True, text=True, timeout=60)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow soak tests run under CI (``CI`` set) or with ``FUSION_SLOW=1``; skipped otherwise."""
    if os.environ.get("CI") or os.environ.get("FUSION_SLOW"):
        return
    skip = pytest.mark.skip(reason="slow: runs in CI, or set FUSION_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def _http_server(_sim: ProviderSim) -> Iterator[Any]:
    from tests import servers  # it imports this module's helpers

    with servers.http_server(shared_env(_sim)) as running:
        yield running


@pytest.fixture
def http_server(sim: ProviderSim, _http_server: Any) -> Iterator[str]:
    """The base URL of ``fusion-mcp serve --transport http`` against the simulator.

    One server for the session (starting one costs ~1.5 s); each test checks what the server logged while
    it ran: never the key, never a traceback.
    """
    logged = len(_http_server.stderr)
    yield _http_server.base
    new = _http_server.stderr[logged:]
    assert API_KEY not in new
    assert "Traceback" not in new, new


TEST_DATABASE = "FUSION_TEST_DATABASE_URL"
"""An admin URL of a PostgreSQL server whose role may create databases (``.ci/run`` starts one)."""


@pytest.fixture(scope="session")
def pg_admin() -> str:
    """``FUSION_TEST_DATABASE_URL``; without it the PostgreSQL tests skip, except under CI, where they fail."""
    url = os.environ.get(TEST_DATABASE, "").strip()
    if not url:
        reason = f"{TEST_DATABASE} is not set: the PostgreSQL store tests need a server (.ci/postgres.sh starts one)"
        if os.environ.get("CI"):
            pytest.fail(f"CI runs every store test on PostgreSQL too, but {reason}")
        pytest.skip(reason)
    return url


def database(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextmanager
def fresh_database(admin: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped on exit (a unique name: xdist-safe)."""
    import psycopg
    from psycopg import sql

    name = f"fusion_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database(admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def database_url(pg_admin: str) -> Iterator[str]:
    """A new, empty PostgreSQL database of this test's own, dropped afterwards."""
    with fresh_database(pg_admin) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The settings of a fresh store, once for each backend: a new ``FUSION_HOME``, or a new database."""
    if request.param == "sqlite":
        return {"FUSION_HOME": str(tmp_path / "home")}
    return {"FUSION_DATABASE_URL": request.getfixturevalue("database_url")}
