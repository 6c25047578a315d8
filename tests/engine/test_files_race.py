"""Files opened beneath their root: a directory flipped to a symlink while calls read through it never leads
out of the root; ``openat2`` and the component-by-component walk each refuse a symlink at any component; a
path that is not a file name (a NUL, a lone surrogate) is an argument refused by name, without a traceback."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mcp import Client

from fusion_mcp.config import load_settings
from fusion_mcp.engine.material import open_beneath, openat2_beneath, walk_beneath
from fusion_mcp.mcp_server.server import create_server
from tests.conftest import PANEL, sim_env
from tests.engine.test_files import call, files_rule, tree
from tests.fakes.provider_sim import ProviderSim
from tests.helpers import TOOL, structured

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(os.open not in os.supports_dir_fd, reason="needs descriptor-relative opens (POSIX)"),
]
RACE_S = 8.0
"""The most each flip runs while calls read through it; a loaded machine races less often, so it stops sooner..."""
WINDOWS = 30
"""...once this many calls were resolved inside and then met the symlink when opening (about a second's worth
on an idle machine): the window the stat-then-open check of the past let the outside file through."""
INSIDE = "the inside file\n"
CHANGED = "changed while it was being read"


FLIP = """
import os, sys
parent, real, link = sys.argv[1:]
d = os.path.join(parent, "d")
while True:
    os.rename(d, real)
    os.rename(link, d)
    os.rename(d, link)
    os.rename(real, d)
"""
"""The flipper: a process of its own, so that it flips while the server's threads hold the GIL."""


@contextmanager
def flipping(parent: Path, outside: Path) -> Iterator[None]:
    """``parent/d`` flips, in another process, between a real directory and a symlink to ``outside`` (which holds
    a file of the same name), by renames: at each moment ``d`` is the directory, the symlink, or absent."""
    real, link = parent / ".d-real", parent / ".d-link"
    link.symlink_to(outside, target_is_directory=True)
    with subprocess.Popen([sys.executable, "-c", FLIP, str(parent), str(real), str(link)]) as flipper:
        try:
            yield
        finally:
            flipper.kill()


async def read_while_flipping(sim: ProviderSim, tmp_path: Path, depth: int) -> Counter[str]:
    """Calls reading ``d/file.txt`` (``d`` at ``depth`` below the root) through the tool while ``d`` flips;
    asserts nothing of the outside file reached the provider; what the calls came to
    (``ok``, or the detail of a refusal)."""
    root, outside = tmp_path / "project", tmp_path / "elsewhere"
    parent = root / "a" if depth == 2 else root
    (parent / "d").mkdir(parents=True)
    (parent / "d" / "file.txt").write_text(INSIDE, encoding="utf-8")
    marker = f"OUTSIDE-{uuid.uuid4().hex}"
    outside.mkdir()
    (outside / "file.txt").write_text(marker, encoding="utf-8")
    given = (parent / "d" / "file.txt").relative_to(root).as_posix()
    refused = f"invalid argument files: must be {files_rule()} ({given}: "
    server = create_server(load_settings(environ=sim_env(sim, FUSION_FILES_ROOTS=str(root))))
    outcomes: Counter[str] = Counter()
    with flipping(parent, outside):
        async with Client(server) as client:
            end = time.monotonic() + RACE_S
            while time.monotonic() < end and outcomes[CHANGED] < WINDOWS:
                args = {"prompt": "q", "files": [given], "analysis_models": [PANEL[0]]}
                data = structured(await client.call_tool(TOOL, args))
                if data["status"] == "ok":
                    outcomes["ok"] += 1
                    continue
                assert data["error"].startswith(refused) and data["error"].endswith(")"), data["error"]
                outcomes[data["error"].removeprefix(refused)[:-1]] += 1
    sent = [json.dumps(r.body) for r in sim.requests]
    outside_reads = sum(marker in body for body in sent)
    assert outside_reads == 0, f"{outside_reads} requests carried the outside file; the calls came to {outcomes}"
    assert sum(INSIDE.strip() in body for body in sent) == 2 * outcomes["ok"]  # the member's and the analyst's
    return outcomes


@pytest.mark.parametrize("depth", [1, 2])
async def test_a_directory_flipped_to_a_symlink_leading_out_is_never_read_through(
    sim: ProviderSim, tmp_path: Path, depth: int
) -> None:
    outcomes = await read_while_flipping(sim, tmp_path, depth)
    refusals = set(outcomes) - {"ok"}
    assert refusals <= {
        "outside the allowed roots",  # resolved while d was the symlink
        "cannot be resolved",  # resolved while d was being renamed
        "does not exist",  # opened while d was absent
        CHANGED,  # resolved inside, then opened while d was the symlink
    }, outcomes
    assert outcomes["ok"] > 0 and outcomes[CHANGED] > 0, outcomes  # it really raced


@pytest.fixture
def root_fd(tmp_path: Path) -> Iterator[int]:
    """A descriptor of a root holding ``a/file.txt``, symlinks leading inside (``link -> a``,
    ``a/file_link.txt``) and out (``a/out -> elsewhere``), and ``elsewhere/file.txt`` beside it."""
    root, outside = tmp_path / "project", tmp_path / "elsewhere"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    (root / "a" / "file.txt").write_text(INSIDE, encoding="utf-8")
    (outside / "file.txt").write_text("outside", encoding="utf-8")
    (root / "link").symlink_to(root / "a", target_is_directory=True)
    (root / "a" / "out").symlink_to(outside, target_is_directory=True)
    (root / "a" / "file_link.txt").symlink_to(root / "a" / "file.txt")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def read_fd(fd: int) -> str:
    with os.fdopen(fd, "r", encoding="utf-8") as handle:
        return handle.read()


def errors_of(way: Callable[[int, str], int], root_fd: int, paths: list[str]) -> list[str]:
    """The errno name each path's open fails with."""
    names = []
    for path in paths:
        with pytest.raises(OSError) as info:
            way(root_fd, path)
        names.append(errno.errorcode[info.value.errno or 0])
    return names


REFUSED = ["link/file.txt", "a/out/file.txt", "a/file_link.txt", "a/missing.txt", "../elsewhere/file.txt", "/etc/hosts"]
"""A symlinked directory leading inside, one leading out, a symlinked file, a missing file, two ways out."""


def test_openat2_reads_a_file_and_refuses_a_symlink_at_any_component(root_fd: int) -> None:
    try:
        fd = openat2_beneath(root_fd, "a/file.txt")
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM):
            pytest.skip("this kernel (or its seccomp filter) has no openat2: the walk is tested on its own")
        raise
    assert read_fd(fd) == INSIDE
    assert errors_of(openat2_beneath, root_fd, REFUSED) == ["ELOOP", "ELOOP", "ELOOP", "ENOENT", "EXDEV", "EXDEV"]


def test_the_walk_reads_a_file_and_refuses_a_symlink_at_any_component(root_fd: int) -> None:
    """The fallback where there is no openat2: ``O_DIRECTORY | O_NOFOLLOW`` at a symlinked directory fails with
    ENOTDIR on Linux (ELOOP elsewhere), ``O_NOFOLLOW`` at a symlinked file with ELOOP."""
    assert read_fd(walk_beneath(root_fd, "a/file.txt")) == INSIDE
    open_before = os.listdir("/dev/fd")
    errors = errors_of(walk_beneath, root_fd, REFUSED)
    assert [e.replace("ENOTDIR", "ELOOP") for e in errors] == ["ELOOP", "ELOOP", "ELOOP", "ENOENT", "EXDEV", "EXDEV"]
    assert os.listdir("/dev/fd") == open_before  # each refusal closed the directories it had opened
    assert read_fd(walk_beneath(root_fd, "a/file.txt")) == INSIDE  # and not the root's descriptor


def test_open_beneath_takes_the_roots_path(tmp_path: Path, root_fd: int) -> None:
    root = tmp_path / "project"
    assert read_fd(open_beneath(root, "a/file.txt")) == INSIDE
    with pytest.raises(OSError) as info:
        open_beneath(root, "link/file.txt")
    assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)


@pytest.mark.parametrize("way", [openat2_beneath, walk_beneath])
def test_each_way_of_opening_never_reads_through_a_flipping_directory(
    tmp_path: Path, way: Callable[[int, str], int]
) -> None:
    """Without the tool around it: whatever turn the flip is in, the open gives the inside file or fails."""
    root, outside = tmp_path / "project", tmp_path / "elsewhere"
    (root / "d").mkdir(parents=True)
    (root / "d" / "file.txt").write_text(INSIDE, encoding="utf-8")
    outside.mkdir()
    (outside / "file.txt").write_text("outside", encoding="utf-8")
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    outcomes: Counter[str] = Counter()
    try:
        with flipping(root, outside):
            for _ in range(100_000):  # until both turns were met a few hundred times (a few thousand opens)
                try:
                    outcomes[read_fd(way(root_fd, "d/file.txt"))] += 1
                except OSError as exc:
                    if exc.errno in (errno.ENOSYS, errno.EPERM):
                        pytest.skip("this kernel (or its seccomp filter) has no openat2")
                    outcomes[errno.errorcode[exc.errno or 0]] += 1
                if outcomes[INSIDE] >= 300 and outcomes["ELOOP"] + outcomes["ENOTDIR"] >= 300:
                    break
    finally:
        os.close(root_fd)
    assert set(outcomes) <= {INSIDE, "ELOOP", "ENOTDIR", "ENOENT"}, outcomes
    assert outcomes[INSIDE] >= 300 and outcomes["ELOOP"] + outcomes["ENOTDIR"] >= 300, outcomes


def refusal(detail: str) -> str:
    return f"invalid argument files: must be {files_rule()} ({detail})"


async def test_a_path_that_no_file_can_have_is_an_invalid_argument(
    sim: ProviderSim, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, _ = tree(tmp_path)
    caplog.set_level(logging.INFO)
    for given, detail in {
        "notes\x00.md": "'notes\\x00.md': contains a NUL character",
        "notes\ud800.md": "'notes\\ud800.md': holds a lone surrogate (\\ud800-\\udfff), which is not text: it "
        "cannot be sent to any model",
    }.items():
        result = await call(sim, {"prompt": "q", "files": ["notes.md", given]}, FUSION_FILES_ROOTS=str(root))
        data = structured(result)
        assert result.is_error and data["failure_reason"] == "invalid_arguments"
        assert data["error"] == refusal(detail)
    assert sim.requests == []
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.exc_info], caplog.text


async def test_paths_that_cannot_be_resolved_or_shown_are_refused_when_read(
    sim: ProviderSim, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, _ = tree(tmp_path)
    caplog.set_level(logging.INFO)
    (root / "latin.md").symlink_to(os.fsdecode(b"caf\xe9.md"))
    (root / os.fsdecode(b"caf\xe9.md")).write_text("a name in Latin-1", encoding="utf-8")
    for given, why in {
        "~no-such-user-here/notes.md": "cannot be resolved",
        "latin.md": "leads to a name that is not UTF-8 text",
        "notes.md/inner.md": "changed while it was being read",  # ENOTDIR: a swap looks the same without a 2nd look
        "x" * 300: "cannot be read (OSError)",  # ENAMETOOLONG
    }.items():
        data = structured(await call(sim, {"prompt": "q", "files": [given]}, FUSION_FILES_ROOTS=str(root)))
        assert data["error"] == refusal(f"{given[:200]}: {why}"), data["error"]
    assert sim.requests == []
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.exc_info], caplog.text


async def test_over_http_a_nul_in_a_path_is_refused_before_the_roots_are_asked(http_server: str) -> None:
    """The shared server has no roots: the argument is refused first. Its fixture fails the test if the server
    logged a traceback."""
    async with Client(f"{http_server}/mcp", mode="legacy") as client:
        result = await client.call_tool(TOOL, {"prompt": "q", "files": ["a\x00b"]})
    data = structured(result)
    assert (data["failure_reason"], data["error"]) == (
        "invalid_arguments",
        refusal("'a\\x00b': contains a NUL character"),
    )
