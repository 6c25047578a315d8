"""The ``fusion-mcp`` command: the stdio server (default), ``serve``, ``ask``, ``doctor`` and ``runs``.

Stdout belongs to JSON-RPC when serving stdio, so everything human goes to stderr. Only the server
commands import the MCP SDK: ``ask`` goes through the same request path without it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime

import anyio
from pydantic import ValidationError

from . import __version__
from .admission import FusionRefused, argument_rule, prepare
from .config import ConfigError, Settings, load_settings
from .limits import MAX_DEADLINE_S, MAX_TOOL_CALLS, MIN_DEADLINE_S, MIN_TOOL_CALLS
from .models import FusionArgs, FusionResult
from .progress import ProgressEvent
from .render import render
from .run import new_run_id
from .service import FusionService, open_store
from .terminal import LiveProgress

EXIT_CONFIG = 2
ASK_FLAGS = {
    "prompt": "PROMPT",
    "analysis_models": "--models",
    "model": "--model",
    "max_tool_calls": "--max-tool-calls",
    "deadline_s": "--deadline",
}
"""The ``ask`` option that carries each call argument, for refusals worded in the command's terms."""


class _Redact(logging.Filter):
    """Last line of defence: no secret reaches a log line, whatever formatted it."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            message = record.getMessage()
            for secret in self._secrets:
                message = message.replace(secret, "[redacted]")
            record.msg, record.args = message, None
        return True


def _setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_Redact(settings.secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for noisy in ("httpx2", "httpcore2", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="PATH", default=argparse.SUPPRESS, help="TOML file with settings (or FUSION_CONFIG)"
    )
    parser = argparse.ArgumentParser(
        prog="fusion-mcp",
        description="An MCP server that asks a panel of models and has an analyst compare their answers. "
        "With no command it serves MCP over stdio, which is what an MCP host launches.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"fusion-mcp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="serve MCP over stdio, or over HTTP: Streamable HTTP at /mcp and OpenAI-compatible "
        "/v1/chat/completions and /v1/models beside it",
    )
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio", help="default: stdio")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="HTTP port (default: 8765)")
    serve.add_argument(
        "--stateless",
        action="store_true",
        help="stateless Streamable HTTP, for several replicas behind a round-robin load balancer",
    )

    ask = commands.add_parser("ask", parents=[common], help="run one fusion from the terminal")
    ask.add_argument("prompt", help="the question, self-contained")
    ask.add_argument("--context", help="supporting material; @FILE reads it from a file")
    ask.add_argument("--models", help="comma-separated panel model ids (default: FUSION_ANALYSIS_MODELS)")
    ask.add_argument("--model", help="analyst model id (default: FUSION_MODEL)")
    ask.add_argument(
        "--max-tool-calls", type=int, help=f"tool-call budget per model, {MIN_TOOL_CALLS}-{MAX_TOOL_CALLS}"
    )
    ask.add_argument(
        "--deadline",
        type=float,
        metavar="SECONDS",
        help=f"bound the run, {MIN_DEADLINE_S:g}-{MAX_DEADLINE_S:g} s "
        "(default: none; the server uses FUSION_DEADLINE_S)",
    )
    ask.add_argument("--json", action="store_true", help="print the structured result as JSON")
    ask.add_argument(
        "--analysis-only", action="store_true", help="skip the analyst's final answer; print the analysis only"
    )
    commands.add_parser(
        "doctor", parents=[common], help="check key, provider, model ids, web tools and cache before spending anything"
    )

    runs = commands.add_parser("runs", parents=[common], help="list recent runs, or show one (runs show ID)")
    runs.add_argument("action", nargs="?", choices=["show"], help="show one run in full")
    runs.add_argument("run_id", nargs="?", help="the run to show")
    runs.add_argument("--limit", type=int, default=20, help="how many recent runs to list (default: 20)")
    runs.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(config_path=getattr(args, "config", None))
    except ConfigError as exc:
        print(f"fusion-mcp: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    _setup_logging(settings)
    # Anything this process starts is one level deeper, so a fusion server it launches refuses to fuse.
    os.environ["FUSION_DEPTH"] = str(settings.depth + 1)

    if args.command == "ask":
        try:
            code = anyio.run(_ask, settings, args)
        except KeyboardInterrupt:
            message = "interrupted from the terminal; upstream requests closed"
            result = FusionResult.failure(new_run_id(), "cancelled", message)
            _print_result(result, args.json)
            code = 130
        raise SystemExit(code)
    if args.command == "doctor":
        raise SystemExit(anyio.run(_doctor, settings))
    if args.command == "runs":
        raise SystemExit(anyio.run(_runs, settings, args))
    if args.command == "serve" and args.transport == "http":
        from .http_app import check_bind, serve_http

        try:
            check_bind(settings, args.host)
        except ConfigError as exc:
            print(f"fusion-mcp: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG) from None
        try:
            anyio.run(lambda: serve_http(settings, args.host, args.port, stateless=args.stateless))
        except KeyboardInterrupt:
            pass
        return
    from .server import create_server

    try:
        anyio.run(create_server(settings).run_stdio_async)
    except KeyboardInterrupt:
        pass


async def _ask(settings: Settings, args: argparse.Namespace) -> int:
    context = args.context
    if context and context.startswith("@"):
        try:
            context = open(context[1:], encoding="utf-8").read()  # noqa: ASYNC230 - one small read at start
        except OSError as exc:
            print(f"fusion-mcp: cannot read --context file: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    call = FusionArgs(
        prompt=args.prompt,
        context=context,
        analysis_models=args.models.split(",") if args.models is not None else None,
        model=args.model,
        max_tool_calls=args.max_tool_calls,
        # With no host model to write the final answer, the analyst writes one (as openrouter/fusion does).
        final_answer=not args.analysis_only,
        # A terminal user can wait: no deadline unless asked for, whatever FUSION_DEADLINE_S says.
        deadline_s=args.deadline,
    )
    run_id = new_run_id()
    try:
        request = prepare(call, settings, depth=settings.depth)
    except FusionRefused as refused:
        if refused.argument is None:
            _print_result(refused.result(run_id), args.json)
            return 1
        flag = ASK_FLAGS.get(refused.argument, refused.argument)
        print(f"fusion-mcp: {flag}: must be {argument_rule(refused.argument, refused.detail)}", file=sys.stderr)
        return EXIT_CONFIG

    async def plain(event: ProgressEvent) -> None:
        print(f"[{int(event.progress)}/{event.total}] {event.message}", file=sys.stderr, flush=True)

    live = LiveProgress(sys.stderr, request.analysis_models, request.model) if sys.stderr.isatty() else None
    async with FusionService.open(settings) as service, anyio.create_task_group() as tg:
        if live is not None:
            live.draw()
            tg.start_soon(live.tick)
        result = await service.run(request, run_id=run_id, on_event=live.on_event if live is not None else plain)
        tg.cancel_scope.cancel()
    _print_result(result, args.json)
    return 0 if result.status == "ok" else 1


def _print_result(result: FusionResult, as_json: bool) -> None:
    print(json.dumps(result.to_json(), indent=2) if as_json else render(result), flush=True)


async def _runs(settings: Settings, args: argparse.Namespace) -> int:
    store = open_store(settings)
    if store is None:
        print("fusion-mcp: the run history cannot be opened (see the warning above)", file=sys.stderr)
        return 1
    try:
        if args.action == "show":
            if not args.run_id:
                print("fusion-mcp: runs show needs a run id (see 'fusion-mcp runs')", file=sys.stderr)
                return EXIT_CONFIG
            record = await store.run(args.run_id)
            if record is None:
                print(f"fusion-mcp: no run {args.run_id!r} in the history (it may have expired)", file=sys.stderr)
                return 1
            try:
                shown = render(FusionResult.model_validate(record["result"])) if not args.json else None
            except ValidationError:
                shown = None  # recorded by a release with another result shape: the JSON still says it all
            print(json.dumps(record, indent=2) if shown is None else shown)
            if shown is not None:
                print(f"\n(full record with transcripts: fusion-mcp runs show {args.run_id} --json)")
            return 0
        rows = await store.recent(args.limit)
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        if not rows:
            print("no runs yet")
        for row in rows:
            when = datetime.fromtimestamp(row["created"]).strftime("%Y-%m-%d %H:%M")
            cost = f"${row['cost']:.4f}" if row["cost"] is not None else "-"
            cached = " (cached)" if row["cached"] else ""
            print(
                f"{row['run_id']}  {when}  {row['status']:<24} {cost:>9} {row['seconds']:6.1f} s  "
                f"{row['panel']}  {row['prompt_head'][:60]!r}{cached}"
            )
        return 0
    finally:
        store.close()


async def _doctor(settings: Settings) -> int:
    from .doctor import run_checks

    checks = await run_checks(settings)
    for check in checks:
        print(check.line())
    failed = [c for c in checks if not c.ok]
    print(f"\n{len(checks) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0
