"""``fusion-mcp eval``'s arguments, apart from the command (:mod:`fusion_mcp.cli.evaluate`): every command line
builds the whole parser, and the eval's engine is not to be imported for ``fusion-mcp`` to start a server."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..config import PRESET_NAMES
from ..evals.questions import SAMPLE

DEFAULT_CONCURRENCY = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "questions",
        nargs="?",
        metavar="QUESTIONS",
        help=f"a .jsonl file, a GPQA or SimpleQA .csv file, or '{SAMPLE}' (the built-in set); not needed with --resume",
    )
    parser.add_argument("--panel", help="comma-separated panel model ids (default: the configured panel)")
    parser.add_argument("--preset", choices=PRESET_NAMES, help="panel and analyst preset instead of --panel")
    parser.add_argument("--analyst", help="the analyst model id (default: the configured one)")
    parser.add_argument(
        "--writer", help="a model that writes fusion's final answer from the analysis (default: the analyst does)"
    )
    parser.add_argument(
        "--grader",
        help="the model that grades short and open answers (default: a preset model that is not under test)",
    )
    parser.add_argument("--max-cost", type=_usd, metavar="USD", help="stop before the eval's spending passes this")
    parser.add_argument(
        "--concurrency", type=_count, default=DEFAULT_CONCURRENCY, metavar="N", help="answers at once, 1-32 (default 4)"
    )
    parser.add_argument("--max-tool-calls", type=int, help="tool-call budget per model")
    parser.add_argument("--out", type=Path, help="where results go (default: ./fusion-eval-ID)")
    parser.add_argument(
        "--resume", metavar="RUN", help="go on with an interrupted eval (its id); nothing is paid twice"
    )
    parser.add_argument("--yes", action="store_true", help="do not ask before spending")


def _usd(value: str) -> float:
    try:
        usd = float(value)
    except ValueError:
        usd = math.nan
    if not math.isfinite(usd) or usd <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of US dollars (got {value!r})")
    return usd


def _count(value: str) -> int:
    if not value.strip().isdigit() or not 1 <= int(value) <= 32:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 32 (got {value!r})")
    return int(value)
