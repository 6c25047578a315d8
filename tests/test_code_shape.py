"""The package's shape, as the one-request-path issue fixed it: short functions, no silenced type errors."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fusion_mcp"
LONGEST = 80
A_SCREEN = 50
SCREEN_SIZED = {"create_server", "run_fusion"}


def functions() -> list[tuple[str, str, int]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                found.append(
                    (
                        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}",
                        node.name,
                        node.end_lineno - node.lineno + 1,
                    )
                )
    return found


def test_no_function_is_longer_than_80_lines() -> None:
    every = functions()
    assert len(every) > 300  # the walk found the package
    long = [(where, lines) for where, _, lines in every if lines > LONGEST]
    assert long == []


def test_create_server_and_run_fusion_fit_a_screen() -> None:
    sizes = {name: lines for _, name, lines in functions() if name in SCREEN_SIZED}
    assert set(sizes) == SCREEN_SIZED
    assert all(lines <= A_SCREEN for lines in sizes.values()), sizes


def test_no_type_error_is_silenced() -> None:
    silenced = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "type: ignore" in line
    ]
    assert silenced == []
