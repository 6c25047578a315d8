"""Files as material: roots (the client's, else FUSION_FILES_ROOTS), containment after symlinks, size caps,
images only to members that read them, one identical prefix in every member's request."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp_types import ListRootsResult, Root

from fusion_mcp.config import load_settings
from fusion_mcp.core.models import Attachment
from fusion_mcp.engine.material import CACHE_MARKER, Material, MaterialFile
from fusion_mcp.mcp_server.server import create_server
from tests.conftest import PANEL, sim_env
from tests.fakes.provider_sim import ProviderSim, priced
from tests.helpers import TOOL, structured, text

pytestmark = pytest.mark.anyio
A, B, C = PANEL
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(32)


def tree(base: Path) -> tuple[Path, Path]:
    """A root with a text file, an image, a subdirectory and an escaping symlink; a secret outside it."""
    root, outside = base / "project", base / "elsewhere"
    (root / "src").mkdir(parents=True)
    outside.mkdir()
    (root / "notes.md").write_text("# Notes\nThe cache TTL is 42 seconds.\n", encoding="utf-8")
    (root / "src" / "app.py").write_text("print('hello')\n", encoding="utf-8")
    (root / "chart.png").write_bytes(PNG)
    (outside / "secret.txt").write_text("the launch code is 0000", encoding="utf-8")
    (root / "escape.txt").symlink_to(outside / "secret.txt")
    (root / "escape_dir").symlink_to(outside, target_is_directory=True)
    (root / "inner_link.md").symlink_to(root / "notes.md")
    return root, outside


async def call(sim: ProviderSim, args: dict[str, Any], roots: list[Path] | None = None, mode: str = "auto", **env: str):
    """The tool in memory; ``roots`` are what the client answers to roots/list (None: it declares no roots)."""
    server = create_server(load_settings(environ=sim_env(sim, **env)))

    async def list_roots(_: Any) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri=r.as_uri(), name=r.name) for r in roots or []])

    kwargs: dict[str, Any] = {"list_roots_callback": list_roots} if roots is not None else {}
    async with Client(server, mode=mode, **kwargs) as client:  # type: ignore[arg-type]
        return await client.call_tool(TOOL, args)


def user_parts(sim: ProviderSim, model: str) -> list[dict[str, Any]]:
    (request,) = [r for r in sim.requests_for(model) if "response_format" not in r.body]
    content = request.body["messages"][1]["content"]
    assert isinstance(content, list), content
    return content


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_files_inside_the_clients_roots_are_read_into_one_identical_prefix(
    sim: ProviderSim, tmp_path: Path, mode: str
) -> None:
    root, _ = tree(tmp_path)
    result = await call(
        sim, {"prompt": "What is the TTL?", "files": [str(root / "notes.md"), "src/app.py"]}, [root], mode
    )
    data = structured(result)
    assert data["status"] == "ok" and not result.is_error
    prefixes = [user_parts(sim, m)[:-1] for m in PANEL]
    assert prefixes[0] == prefixes[1] == prefixes[2]  # byte for byte the same material before the question
    (material,) = prefixes[0]
    assert material["type"] == "text" and "cache_control" not in material  # no marker off OpenRouter
    assert '<file path="notes.md">\n# Notes\nThe cache TTL is 42 seconds.\n\n</file>' in material["text"]
    assert '<file path="src/app.py">' in material["text"]
    assert user_parts(sim, A)[-1] == {"type": "text", "text": "What is the TTL?"}
    # The analyst reads the text material too (and compares answers about it).
    analyst = next(r for r in sim.requests if "response_format" in r.body)
    assert "The cache TTL is 42 seconds." in analyst.body["messages"][1]["content"]


async def test_files_outside_the_roots_are_refused_before_anything_is_sent(sim: ProviderSim, tmp_path: Path) -> None:
    root, outside = tree(tmp_path)
    cases = {
        str(outside / "secret.txt"): "outside the allowed roots",
        str(root / "escape.txt"): "outside the allowed roots",  # a symlink leading out
        str(root / "escape_dir" / "secret.txt"): "outside the allowed roots",  # a directory symlink leading out
        "../elsewhere/secret.txt": "outside the allowed roots",  # relative, climbing out of the first root
        str(root / "missing.md"): "does not exist",
        str(root / "src"): "not a regular file",
    }
    for path, why in cases.items():
        result = await call(sim, {"prompt": "q", "files": [path]}, [root])
        assert result.is_error
        assert structured(result) | {"run_id": "-"} == {
            "status": "error",
            "run_id": "-",
            "error": f"invalid argument files: must be {files_rule()} ({path}: {why})",
            "failure_reason": "invalid_arguments",
            "responses": [],
            "failed_models": [],
            "sources": [],
            "usage": {"models": [], "total": _zero_usage()},
            "timings": {"members": {}, "analyst": None, "total": 0.0, "queued": 0.0},
            "cached": False,
            "degraded": False,
        }
        assert "0000" not in text(result)
    assert sim.requests == []


async def test_a_symlink_inside_the_root_to_a_file_inside_it_is_fine(sim: ProviderSim, tmp_path: Path) -> None:
    root, _ = tree(tmp_path)
    data = structured(await call(sim, {"prompt": "q", "files": [str(root / "inner_link.md")]}, [root]))
    assert data["status"] == "ok"
    # Shown under its real name, the file it leads to.
    assert '<file path="notes.md">' in user_parts(sim, A)[0]["text"]


async def test_without_client_roots_the_configured_roots_apply_and_without_either_files_are_refused(
    sim: ProviderSim, tmp_path: Path
) -> None:
    root, _ = tree(tmp_path)
    refused = structured(await call(sim, {"prompt": "q", "files": [str(root / "notes.md")]}))
    assert refused["failure_reason"] == "invalid_arguments"
    assert refused["error"].endswith("(no roots: the client declared no MCP roots and FUSION_FILES_ROOTS is not set)")
    # A client with the roots capability but no roots counts as declaring none.
    refused = structured(await call(sim, {"prompt": "q", "files": [str(root / "notes.md")]}, []))
    assert refused["failure_reason"] == "invalid_arguments"
    data = structured(await call(sim, {"prompt": "q", "files": ["notes.md"]}, FUSION_FILES_ROOTS=str(root)))
    assert data["status"] == "ok" and "The cache TTL" in user_parts(sim, A)[0]["text"]


async def test_the_clients_roots_replace_the_configured_ones(sim: ProviderSim, tmp_path: Path) -> None:
    root, outside = tree(tmp_path)
    result = await call(
        sim, {"prompt": "q", "files": [str(root / "notes.md")]}, [outside], FUSION_FILES_ROOTS=str(root)
    )
    assert structured(result)["error"].endswith("outside the allowed roots)")


async def test_sizes_are_capped_and_binary_files_refused(sim: ProviderSim, tmp_path: Path) -> None:
    root, _ = tree(tmp_path)
    (root / "big.txt").write_text("x" * 3000, encoding="utf-8")
    (root / "blob.bin").write_bytes(b"\x00\x01\x02\xff" * 10)
    env = {"FUSION_FILES_ROOTS": str(root), "FUSION_FILES_MAX_BYTES": "2500"}
    over = structured(await call(sim, {"prompt": "q", "files": ["big.txt"]}, **env))
    assert over["error"].endswith("(big.txt: 3,000 bytes: the files of a call must fit FUSION_FILES_MAX_BYTES)")
    # The cap is for the files of a call together.
    (root / "half.txt").write_text("y" * 1500, encoding="utf-8")
    together = structured(await call(sim, {"prompt": "q", "files": ["half.txt", "notes.md", "half.txt "]}, **env))
    assert together["error"].endswith("(a path appears more than once)")
    (root / "half2.txt").write_text("z" * 1500, encoding="utf-8")
    together = structured(await call(sim, {"prompt": "q", "files": ["half.txt", "half2.txt"]}, **env))
    assert together["error"].endswith("(half2.txt: 1,500 bytes: the files of a call must fit FUSION_FILES_MAX_BYTES)")
    binary = structured(await call(sim, {"prompt": "q", "files": ["blob.bin"]}, **env))
    assert binary["error"].endswith("(blob.bin: neither UTF-8 text nor a PNG, JPEG, WebP or GIF image)")
    assert sim.requests == []


async def test_images_reach_only_members_whose_catalogue_entry_reads_images(sim: ProviderSim, tmp_path: Path) -> None:
    root, _ = tree(tmp_path)
    (root / "photo.webp").write_bytes(WEBP)
    sim.catalogue = [
        priced(A) | {"architecture": {"input_modalities": ["text", "image"], "output_modalities": ["text"]}},
        priced(B) | {"architecture": {"modality": "text+image->text"}},
        priced(C) | {"architecture": {"input_modalities": ["text"]}},
    ]
    args = {"prompt": "Describe the chart.", "files": ["notes.md", "chart.png", "photo.webp"]}
    data = structured(await call(sim, args, FUSION_FILES_ROOTS=str(root)))
    assert data["status"] == "ok"
    for model in (A, B):
        parts = user_parts(sim, model)
        urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
        assert urls == [
            "data:image/png;base64," + base64.b64encode(PNG).decode(),
            "data:image/webp;base64," + base64.b64encode(WEBP).decode(),
        ]
        assert {"type": "text", "text": '<image path="chart.png">'} in parts
    blind = user_parts(sim, C)
    assert not any(p["type"] == "image_url" for p in blind)
    notes = [p["text"] for p in blind if p["type"] == "text" and p["text"].startswith("[The image")]
    assert notes == [
        f"[The image chart.png ({len(PNG)} bytes) was left out: this model does not read images, according to the "
        "provider's catalogue.]",
        f"[The image photo.webp ({len(WEBP)} bytes) was left out: this model does not read images, according to "
        "the provider's catalogue.]",
    ]
    # Text material comes first and is the same for all three.
    assert user_parts(sim, A)[0] == user_parts(sim, C)[0]
    # The analyst compares answers; it gets no images.
    analyst = next(r for r in sim.requests if "response_format" in r.body)
    assert "image_url" not in json.dumps(analyst.body)


async def test_without_a_catalogue_no_member_gets_images(sim: ProviderSim, tmp_path: Path) -> None:
    root, _ = tree(tmp_path)
    await call(sim, {"prompt": "q", "files": ["chart.png"]}, FUSION_FILES_ROOTS=str(root))
    assert all("image_url" not in json.dumps(r.body) for r in sim.requests)


async def test_the_history_names_the_files_and_keeps_no_image_bytes(sim: ProviderSim, tmp_path: Path) -> None:
    root, _ = tree(tmp_path)
    home = tmp_path / "home"
    sim.catalogue = [priced(m) | {"architecture": {"input_modalities": ["text", "image"]}} for m in PANEL]
    data = structured(
        await call(
            sim,
            {"prompt": "q", "files": ["chart.png", "notes.md"]},
            FUSION_FILES_ROOTS=str(root),
            FUSION_HOME=str(home),
        )
    )
    with sqlite3.connect(home / "fusion.sqlite3") as db:
        (record,) = db.execute("SELECT record FROM runs WHERE run_id = ?", (data["run_id"],)).fetchone()
    assert base64.b64encode(PNG).decode() not in record
    attachments = json.loads(record)["request"]["attachments"]
    assert [(Path(a["path"]).name, a["kind"], a["media_type"], a["bytes"]) for a in attachments] == [
        ("chart.png", "image", "image/png", len(PNG)),
        ("notes.md", "text", "text/markdown", 37),
    ]
    assert "left out]" in record  # the image part's bytes are replaced by a note


async def test_changed_file_contents_are_a_cache_miss(sim: ProviderSim, tmp_path: Path) -> None:
    root, _ = tree(tmp_path)
    env = {"FUSION_FILES_ROOTS": str(root), "FUSION_CACHE": "on", "FUSION_HOME": str(tmp_path / "home")}
    first = structured(await call(sim, {"prompt": "q", "files": ["notes.md"]}, **env))
    again = structured(await call(sim, {"prompt": "q", "files": ["notes.md"]}, **env))
    assert again["cached"] is True and first["cached"] is False
    (root / "notes.md").write_text("# Notes\nThe cache TTL is 7 seconds.\n", encoding="utf-8")
    changed = structured(await call(sim, {"prompt": "q", "files": ["notes.md"]}, **env))
    assert changed["cached"] is False


def test_openrouter_gets_its_cache_marker_at_the_end_of_each_shared_prefix() -> None:
    def attached(kind: str, name: str, **kw: Any) -> MaterialFile:
        media = "image/png" if kind == "image" else "text/plain"
        return MaterialFile(Attachment(path=f"/r/{name}", kind=kind, media_type=media, bytes=3, sha256="0"), name, **kw)

    material = Material((attached("text", "a.txt", text="abc"), attached("image", "p.png", data=PNG)), True)
    seeing, blind = material.parts(images=True), material.parts(images=False)
    assert seeing[0]["cache_control"] == blind[0]["cache_control"] == CACHE_MARKER
    assert seeing[-1] == {"type": "text", "text": "(end of the attached images)", "cache_control": CACHE_MARKER}
    assert [p.get("cache_control") for p in seeing[1:-1]] == [None, None]
    assert "cache_control" not in blind[-1]
    assert "cache_control" not in json.dumps(Material(material.files, False).parts(images=True))


async def test_over_http_the_clients_roots_are_not_this_machines(http_server: str, tmp_path: Path) -> None:
    """The shared HTTP server has no FUSION_FILES_ROOTS: a remote client's roots open nothing."""
    root, _ = tree(tmp_path)

    async def list_roots(_: Any) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri=root.as_uri())])

    async with Client(f"{http_server}/mcp", mode="legacy", list_roots_callback=list_roots) as client:
        result = await client.call_tool(TOOL, {"prompt": "q", "files": [str(root / "notes.md")]})
    assert structured(result)["error"].endswith("FUSION_FILES_ROOTS is not set)")


def files_rule() -> str:
    from fusion_mcp.engine.admission import ARGUMENT_RULES

    return ARGUMENT_RULES["files"]


def _zero_usage() -> dict[str, Any]:
    return {"prompt_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0, "total_tokens": 0, "cost": None}
