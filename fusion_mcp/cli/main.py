"""The ``fusion-mcp`` command: the stdio server (default), ``serve``, ``lab``, ``ask``, ``eval``, ``doctor``,
``runs``, ``usage`` and ``host-config``.

Stdout belongs to JSON-RPC when serving stdio, so everything human goes to stderr. Only the server
commands import the MCP SDK: ``ask`` goes through the same request path without it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import select
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc
from pydantic import ValidationError

from ..config import PRESET_NAMES, ConfigError, Settings, check_bind, load_settings, unknown_variables
from ..core.about import HOMEPAGE, VERSION
from ..core.callers import LOCAL_PRINCIPAL
from ..core.errors import MIN_SECRET_CHARS, Redactor, live_secrets
from ..core.limits import MAX_DEADLINE_S, MAX_TOOL_CALLS, MIN_DEADLINE_S, MIN_TOOL_CALLS
from ..core.models import FusionArgs, FusionRequest, FusionResult, GuestAnswer, new_run_id
from ..core.render import render
from ..core.text import plural
from .terminal import LiveProgress

if TYPE_CHECKING:  # the run machinery and the store are loaded by the commands that use them (see _command)
    from ..core.progress import ProgressEvent
    from ..engine.service import FusionService
    from ..store import Store, UsageBy, UsageTotal

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_PIPE = 141
"""Stdout's reader closed the pipe: 128 + SIGPIPE (13), the status a shell reports for a program SIGPIPE ended
(``yes | head``); a literal, as Windows has no ``signal.SIGPIPE``."""
STOP_GRACE_S = 1.5
"""After SIGINT or SIGTERM, how long the stdio server may take to close its runs before it exits anyway."""
MAX_PORT = 65535
STDIO_HINT = (
    "fusion-mcp: serving MCP over stdio, for an MCP host to launch (fusion-mcp host-config HOST writes its entry); "
    'press Ctrl-C to stop. From a terminal: fusion-mcp ask "a question"; see fusion-mcp --help'
)
"""Said on stderr when the stdio server starts on a terminal."""
DOCTOR_TIMEOUT_S = 15.0
"""How long each of ``doctor``'s requests to the provider may take, unless ``--timeout`` says otherwise."""
RUNS_WIDTH = 100
"""``fusion-mcp runs`` lines stay within this many columns."""
ASK_FLAGS = {
    "prompt": "PROMPT",
    "context": "--context",
    "analysis_models": "--models",
    "model": "--model",
    "max_tool_calls": "--max-tool-calls",
    "preset": "--preset",
    "deadline_s": "--deadline",
    "answers": "--answer",
    "files": "--file",
    "temperature": "--temperature",
    "reasoning": "--reasoning-effort",
    "tools": "--no-web",
    "max_completion_tokens": "--max-completion-tokens",
}
"""The ``ask`` option that carries each call argument, for refusals worded in the command's terms."""


class _Redact(logging.Filter):
    """Last line of defence: no secret reaches a log line, whatever formatted it — the message, the traceback
    logged with it (an exception's text can quote a header it refused), or its stack.

    The secrets are the settings' and the lent keys of the requests and runs going on at the time.
    """

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self._secrets = secrets
        self._redactor = Redactor(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        lent = live_secrets()
        redactor = Redactor((*self._secrets, *lent)) if lent else self._redactor
        if not redactor:
            return True
        record.msg, record.args = redactor.text(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redactor.text(record.exc_text)
        if record.stack_info:
            record.stack_info = redactor.text(record.stack_info)
        return True


def _setup_logging(settings: Settings, worker: int | None = None, *, quiet: bool = False) -> None:
    """Logs to stderr, redacted; with replicas or workers each line says which process wrote it. ``quiet``
    (``ask`` without ``--verbose``) shows warnings and errors only."""
    where = ".".join(t for t in (settings.replica, None if worker is None else f"w{worker}") if t)
    tag = f"[{where}] " if where else ""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s"))
    handler.addFilter(_Redact(settings.secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    if quiet and root.level < logging.WARNING:
        root.setLevel(logging.WARNING)
    for noisy in ("httpx2", "httpcore2", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if worker is None:  # said once per start: a --workers server's supervisor says it for its workers
        for warning in unknown_variables(os.environ):
            logging.getLogger("fusion_mcp").warning("%s", warning)
    for name in settings.short_secrets:
        logging.getLogger("fusion_mcp").warning(
            "%s is shorter than %d characters: it looks wrong, and a secret that short is not redacted from "
            "logs and results",
            name,
            MIN_SECRET_CHARS,
        )


class Commands(Protocol):
    """What the command builders use of ``add_subparsers()``'s result (argparse names its class privately)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="PATH", default=argparse.SUPPRESS, help="TOML file with settings (or FUSION_CONFIG)"
    )
    parser = argparse.ArgumentParser(
        prog="fusion-mcp",
        description="An MCP server that asks a panel of models and has an analyst compare their answers. "
        "With no command it serves MCP over stdio, which is what an MCP host launches.",
        epilog=f'First steps: fusion-mcp doctor; fusion-mcp ask "a question"; fusion-mcp host-config HOST --write. '
        f"Settings: environment variables or --config FILE (fusion-mcp.example.toml). More: {HOMEPAGE}",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"fusion-mcp {VERSION}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    for add in (_serve_command, _lab_command, _ask_command, _eval_command, _store_commands, _host_command):
        add(commands, common)
    return parser


def _serve_command(commands: Commands, common: argparse.ArgumentParser) -> None:
    """``serve``: stdio, or HTTP with ``--workers``."""
    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="serve MCP over stdio, or over HTTP: Streamable HTTP at /mcp, OpenAI-compatible "
        "/v1/chat/completions and /v1/models, and the web lab at /lab beside it",
    )
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio", help="default: stdio")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default: 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8765, help="HTTP port, 1-65535 (default: 8765)")
    serve.add_argument(
        "--stateless",
        action="store_true",
        help="stateless Streamable HTTP, for several replicas behind a round-robin load balancer",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N|auto",
        help="HTTP: serve the port from N processes (auto: one per core); sessions of 2025-era clients are "
        "routed to the process that holds them (default: 1)",
    )
    # A --workers server starts its workers with these; they are not for people.
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-count", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-dir", type=Path, help=argparse.SUPPRESS)
    serve.add_argument("--worker-supervisor", type=int, help=argparse.SUPPRESS)


def _lab_command(commands: Commands, common: argparse.ArgumentParser) -> None:
    """``lab``: the web lab on a loopback server of its own."""
    from .lab import add_arguments

    lab = commands.add_parser(
        "lab",
        parents=[common],
        help="open the web lab (ask, watch the panel live, read, history, usage) on a loopback server, signed in "
        "by a one-time link",
    )
    add_arguments(lab, _port)


def _ask_command(commands: Commands, common: argparse.ArgumentParser) -> None:
    """``ask``: one fusion from the terminal."""
    from ..engine.admission import REASONING_EFFORTS

    ask = commands.add_parser("ask", parents=[common], help="run one fusion from the terminal")
    ask.add_argument("prompt", help="the question, self-contained")
    ask.add_argument("--context", help="supporting material; @FILE reads it from a file")
    ask.add_argument("--models", help="comma-separated panel model ids (default: FUSION_ANALYSIS_MODELS)")
    ask.add_argument("--model", help="analyst model id (default: FUSION_MODEL)")
    ask.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        help="panel and analyst preset (default: FUSION_PRESET): quality, budget, fast, or self (the analyst's "
        "model under three lenses); --models and --model override it",
    )
    ask.add_argument(
        "--answer",
        action="append",
        metavar="LABEL=TEXT|@FILE",
        help="an answer you already have, compared with the panel's as guest:LABEL (repeatable, up to 4)",
    )
    ask.add_argument(
        "--file",
        action="append",
        metavar="PATH",
        help="a text file or image the panel reads as material (repeatable); inside FUSION_FILES_ROOTS, or "
        "the current directory when that is not set",
    )
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
    ask.add_argument(
        "--temperature", type=float, metavar="T", help="the panel's sampling temperature, 0-2 (the analyst runs at 0)"
    )
    ask.add_argument(
        "--reasoning-effort",
        metavar="EFFORT",
        help=f"the panel's reasoning effort ({', '.join(REASONING_EFFORTS)}), and the analyst's where its catalogue "
        "entry lists reasoning",
    )
    ask.add_argument(
        "--reasoning-tokens",
        type=int,
        metavar="N",
        help="the panel's reasoning budget in tokens (reasoning.max_tokens)",
    )
    ask.add_argument(
        "--no-web", action="store_true", help="a panel without web tools: answers from the models' own knowledge"
    )
    ask.add_argument(
        "--max-completion-tokens",
        type=int,
        metavar="N",
        help="each answer's token cap (default and most: FUSION_MAX_COMPLETION_TOKENS)",
    )
    ask.add_argument("--json", action="store_true", help="print the structured result as JSON")
    ask.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show the server's log lines (FUSION_LOG_LEVEL, default INFO); without it only warnings and errors",
    )
    ask.add_argument(
        "--analysis-only", action="store_true", help="skip the analyst's final answer; print the analysis only"
    )
    ask.add_argument(
        "--no-cache",
        action="store_true",
        help="run even if an identical question was answered recently (the cache is refreshed with this run)",
    )


def _eval_command(commands: Commands, common: argparse.ArgumentParser) -> None:
    """``eval``: a panel against each of its members on the user's own questions."""
    from .eval_args import add_arguments

    evaluate = commands.add_parser(
        "eval",
        parents=[common],
        help="measure fusion against each panel member alone on your own questions (accuracy, cost, time)",
        description="Ask every question to each panel member alone and to fusion, grade every answer, and report "
        "accuracy with a 95%% interval, cost and median time per system (results.jsonl, summary.json, chart.svg). "
        "Shows the worst-case cost and asks before spending.",
    )
    add_arguments(evaluate)
    evaluate.add_argument(
        "-v", "--verbose", action="store_true", help="show the server's log lines; without it only warnings and errors"
    )


def _store_commands(commands: Commands, common: argparse.ArgumentParser) -> None:
    """``doctor``, ``runs`` and ``usage``."""
    doctor = commands.add_parser(
        "doctor",
        parents=[common],
        help="check key, provider, model ids, web tools and the store (cache or database) before spending anything",
    )
    doctor.add_argument(
        "--timeout",
        type=_timeout,
        default=DOCTOR_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long each request to the provider may take, 0.1-300 (default: {DOCTOR_TIMEOUT_S:g})",
    )

    runs = commands.add_parser("runs", parents=[common], help="list recent runs, or show one (runs ID)")
    runs.add_argument("target", nargs="*", metavar="ID", help="the run to show in full ('runs show ID' works too)")
    runs.add_argument("--limit", type=int, default=20, help="how many recent runs to list (default: 20)")
    runs.add_argument("--json", action="store_true", help="print JSON")

    usage = commands.add_parser(
        "usage",
        parents=[common],
        help="what each principal, model or day spent: runs, requests, tokens, cost (from the store, every replica)",
    )
    usage.add_argument(
        "--since",
        default="7d",
        metavar="WHEN",
        help="from this long ago (30m, 24h, 7d) or this UTC date (YYYY-MM-DD); default: 7d",
    )
    usage.add_argument("--by", choices=USAGE_GROUPS, default="principal", help="group by (default: principal)")
    usage.add_argument("--principal", metavar="NAME", help="only this principal's usage")
    usage.add_argument("--json", action="store_true", help="print JSON")


def _host_command(commands: Commands, common: argparse.ArgumentParser) -> None:
    """``host-config``."""
    from .host_config import HOSTS, add_arguments

    host = commands.add_parser(
        "host-config",
        parents=[common],
        help=f"print (or --write) the config entry of an MCP host: {', '.join(HOSTS)}",
        description="Print the entry that makes an MCP host start this server, for that host's config format, "
        "with the absolute path of this fusion-mcp and the settings in force here (secrets as references the host "
        "expands, or placeholders). "
        "--write merges it into the host's config file, keeping a backup and every other server.",
    )
    add_arguments(host)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command; a reader that went away (``fusion-mcp runs --json | head -1``) ends it quietly with
    :data:`EXIT_PIPE`, with no traceback."""
    try:
        try:
            _command(argv)
        except SystemExit:
            sys.stdout.flush()  # what is still buffered meets a closed pipe here, not in the interpreter's exit
            raise
        sys.stdout.flush()
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # a pipe of some other kind broke: an error of its own, not a reader that left
        # Nothing more can be written there; stdout points at /dev/null so the interpreter's exit is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(EXIT_PIPE) from None


def _stdout_closed() -> bool:
    """Whether stdout's reader is gone (its pipe reports an error); True where that cannot be asked."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() (Windows), or no stdout to ask
        return True


def _command(argv: Sequence[str] | None) -> None:
    # Bare `fusion-mcp` is what a host spawns, and waits on before it can list tools: it serves stdio without
    # building the parser (every command's options and help) or loading what only other commands use.
    given = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(given) if given else argparse.Namespace(command=None)
    try:
        settings = load_settings(config_path=getattr(args, "config", None))
    except ConfigError as exc:
        print(f"fusion-mcp: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    quiet = args.command in ("ask", "eval") and not args.verbose
    _setup_logging(settings, getattr(args, "worker_index", None), quiet=quiet)
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
    if args.command == "eval":
        from .evaluate import run_eval

        try:
            raise SystemExit(anyio.run(run_eval, settings, args))
        except KeyboardInterrupt:
            print("fusion-mcp: eval: interrupted; what was answered is kept: --resume goes on", file=sys.stderr)
            raise SystemExit(130) from None
    if args.command == "doctor":
        raise SystemExit(anyio.run(_doctor, settings, args.timeout))
    if args.command == "runs":
        raise SystemExit(anyio.run(_runs, settings, args))
    if args.command == "usage":
        raise SystemExit(anyio.run(_usage, settings, args))
    if args.command == "host-config":
        from .host_config import main as host_config

        raise SystemExit(host_config(args, settings))
    if args.command == "lab":
        from .lab import run as run_lab

        raise SystemExit(run_lab(settings, args))
    if args.command == "serve" and args.transport == "http":
        try:
            check_bind(settings, args.host)
        except ConfigError as exc:
            print(f"fusion-mcp: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG) from None
        raise SystemExit(_serve_http(settings, args))
    if args.command == "serve" and args.workers > 1:
        print("fusion-mcp: --workers needs --transport http", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)
    _serve_stdio(settings)


def _serve_http(settings: Settings, args: argparse.Namespace) -> int:
    """``serve --transport http``: one process, the supervisor of ``--workers``, or one of its workers.

    A port that cannot be had is said in one line (the same with and without workers), exit 1.
    """
    from ..http.app import base_url, serve_http, served_urls
    from ..http.workers import PortUnavailable, WorkerPlace, follow_supervisor, serve_workers
    from ..lab import SignIns

    sign_ins = once = None
    lab = args.workers == 1 and settings.replica is None
    if lab and args.worker_index is None:
        sign_ins = SignIns(settings.principals)
        if not sign_ins.has_tokens:  # the lab of a server without tokens takes a one-time link, like `lab`'s
            once = sign_ins.one_time(LOCAL_PRINCIPAL)

    def started() -> None:
        print(served_urls(args.host, args.port, args.workers, lab=lab), file=sys.stderr, flush=True)
        if once is not None:
            link = f"{base_url(args.host, args.port)}/lab/signin?once={once}"
            print(f"  lab sign-in (once):      {link}", file=sys.stderr, flush=True)

    try:
        if args.workers > 1 and args.worker_index is None:
            return serve_workers(_worker_argv(args), args.host, args.port, args.workers, settings.depth, started)
        place = None
        if args.worker_index is not None:
            follow_supervisor(args.worker_supervisor or os.getppid())
            place = WorkerPlace(args.worker_index, args.worker_count, args.worker_dir)
        anyio.run(
            lambda: serve_http(
                settings,
                args.host,
                args.port,
                stateless=args.stateless,
                place=place,
                on_started=started if place is None else None,
                sign_ins=sign_ins,
            )
        )
    except PortUnavailable as exc:
        print(f"fusion-mcp: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        pass
    return 0


def _workers(value: str) -> int:
    from ..http.workers import parse_workers

    try:
        return parse_workers(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--workers ")) from None


def _port(value: str) -> int:
    """``--port``: a whole number from 1 to 65535 (argparse names the option and exits 2 otherwise)."""
    if not value.strip().isdigit() or not 1 <= int(value) <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_PORT} (got {value!r})")
    return int(value)


def _timeout(value: str) -> float:
    """``doctor --timeout``: seconds from 0.1 to 300."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0.1 <= seconds <= 300:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 0.1 to 300 (got {value!r})")
    return seconds


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """A worker's command line: this server's, one process of it."""
    argv = ["serve", "--transport", "http", "--host", args.host, "--port", str(args.port)]
    if args.stateless:
        argv.append("--stateless")
    if getattr(args, "config", None):
        argv += ["--config", str(args.config)]
    return argv


def _serve_stdio(settings: Settings) -> None:
    """The stdio server until the host closes stdin, or until SIGINT or SIGTERM (hosts send one, then the other).

    On a signal every run is cancelled (its upstream requests closed) and the service closes; then the
    process exits. It exits rather than unwinding further because the SDK reads stdin in a worker thread
    that nothing can interrupt until the host writes or closes the pipe (the SDK's issue #3551).
    """
    from ..mcp_server.server import create_server

    stopped = threading.Event()
    server = create_server(settings, on_stopped=stopped.set)

    async def serve() -> None:
        async with anyio.create_task_group() as tg:
            if sys.platform != "win32":  # asyncio on Windows has no signal handlers; Ctrl-C stays KeyboardInterrupt
                await tg.start(_stop_on_signal, tg.cancel_scope, stopped)
            if sys.stdin.isatty():  # a person typed the command (and Ctrl-C now stops it): no host writes here
                print(STDIO_HINT, file=sys.stderr, flush=True)
            await server.run_stdio_async()
            tg.cancel_scope.cancel()

    try:
        anyio.run(serve)
    except KeyboardInterrupt:
        pass


def _text_or_file(value: str, flag: str) -> str:
    """``value``, or the text of the file it names as ``@FILE``; ``OSError`` names the flag."""
    if not value.startswith("@"):
        return value
    try:
        with open(value[1:], encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise OSError(f"cannot read {flag} file {value[1:]!r}: {exc}") from None


def _answers(values: list[str] | None) -> list[GuestAnswer] | None:
    """``--answer LABEL=TEXT`` or ``LABEL=@FILE``, as the host's own answers."""
    if values is None:
        return None
    answers = []
    for value in values:
        label, sep, content = value.partition("=")
        if not sep:
            raise OSError(f"--answer {value[:40]!r}: give it as LABEL=TEXT or LABEL=@FILE")
        answers.append(GuestAnswer(label=label, content=_text_or_file(content, "--answer")))
    return answers


async def _stop_on_signal(
    scope: anyio.CancelScope, stopped: threading.Event, *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for number in signals:
            logging.getLogger("fusion_mcp").info(
                "stopping on %s: runs in progress are cancelled", signal.Signals(number).name
            )
            threading.Thread(target=_exit_when_stopped, args=(stopped,), daemon=True).start()
            scope.cancel()
            return


def _exit_when_stopped(stopped: threading.Event) -> None:
    if not stopped.wait(STOP_GRACE_S):
        logging.getLogger("fusion_mcp").warning("the service did not close within %g s; exiting", STOP_GRACE_S)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(0)


def _reasoning(effort: str | None, tokens: int | None) -> dict[str, Any] | None:
    """``--reasoning-effort`` and ``--reasoning-tokens`` as OpenRouter's ``reasoning`` object (checked by prepare)."""
    found: dict[str, Any] = {}
    if effort is not None:
        found["effort"] = effort
    if tokens is not None:
        found["max_tokens"] = tokens
    return found or None


async def _ask(settings: Settings, args: argparse.Namespace) -> int:
    from ..engine.admission import FusionRefused, argument_rule, prepare
    from ..engine.service import FusionService

    try:
        context = _text_or_file(args.context, "--context") if args.context else args.context
        answers = _answers(args.answer)
    except OSError as exc:
        print(f"fusion-mcp: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    call = FusionArgs(
        prompt=args.prompt,
        context=context,
        analysis_models=args.models.split(",") if args.models is not None else None,
        model=args.model,
        max_tool_calls=args.max_tool_calls,
        preset=args.preset,
        answers=answers,
        files=args.file,
        # A terminal user may name files where they are; FUSION_FILES_ROOTS narrows that when set.
        file_roots=None if settings.files_roots else [os.getcwd()],
        # With no host model to write the final answer, the analyst writes one (as openrouter/fusion does).
        final_answer=not args.analysis_only,
        # A terminal user can wait: no deadline unless asked for, whatever FUSION_DEADLINE_S says.
        deadline_s=args.deadline,
        temperature=args.temperature,
        reasoning=_reasoning(args.reasoning_effort, args.reasoning_tokens),
        tools=[] if args.no_web else None,
        max_completion_tokens=args.max_completion_tokens,
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
    async with FusionService.open(settings) as service:
        if live is None:
            result = await service.run(request, run_id=run_id, on_event=plain, fresh=args.no_cache)
        else:
            with live.logging_above():
                result = await _run_live(service, request, run_id, live, fresh=args.no_cache)
    if result.cached:
        print(
            "fusion-mcp: answered from the cache (an identical question ran recently; no new cost). "
            "--no-cache runs it again.",
            file=sys.stderr,
        )
    _print_result(result, args.json)
    return 0 if result.status == "ok" else 1


async def _run_live(
    service: FusionService, request: FusionRequest, run_id: str, live: LiveProgress, *, fresh: bool
) -> FusionResult:
    async with anyio.create_task_group() as tg:
        live.draw()
        tg.start_soon(live.tick)
        result = await service.run(request, run_id=run_id, on_event=live.on_event, fresh=fresh)
        if result.cached:
            live.cached()
        tg.cancel_scope.cancel()
    return result


def _print_result(result: FusionResult, as_json: bool) -> None:
    print(json.dumps(result.to_json(), indent=2) if as_json else render(result), flush=True)


async def _runs(settings: Settings, args: argparse.Namespace) -> int:
    target = args.target[1:] if args.target[:1] == ["show"] else args.target
    if len(target) > 1 or (args.target[:1] == ["show"] and not target):
        print("fusion-mcp: runs takes one run id: 'fusion-mcp runs ID' (see 'fusion-mcp runs')", file=sys.stderr)
        return EXIT_CONFIG
    run_id = target[0] if target else None

    async def show(store: Store) -> int:
        if run_id is not None:
            record = await store.run(run_id)
            if record is None:
                print(f"fusion-mcp: no run {run_id!r} in the history (it may have expired)", file=sys.stderr)
                return 1
            try:
                shown = render(FusionResult.model_validate(record["result"])) if not args.json else None
            except ValidationError:
                shown = None  # recorded by a release with another result shape: the JSON still says it all
            print(json.dumps(record, indent=2) if shown is None else shown)
            if shown is not None:
                print(f"\n(full record with transcripts: fusion-mcp runs {run_id} --json)")
            return 0
        rows = await store.recent(args.limit)
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        if not rows:
            print("no runs yet")
        for row in rows:
            print(run_line(row))
        return 0

    return await _with_store(settings, show)


async def _with_store(settings: Settings, work: Callable[[Store], Awaitable[int]]) -> int:
    """``work``'s exit code on the opened store; 1 when the store fails (said on stderr, without secrets)."""
    from ..store import StoreError, open_store

    store = open_store(settings)
    try:
        await store.open()
        return await work(store)
    except StoreError as exc:
        print(f"fusion-mcp: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.aclose()


USAGE_GROUPS: tuple[UsageBy, ...] = ("principal", "model", "provider", "day")
"""What ``usage --by`` takes."""
_SINCE = re.compile(r"(\d+(?:\.\d+)?)\s*([mhd])")


def since_epoch(value: str, now: float) -> float:
    """``--since``: ``30m``, ``24h``, ``7d`` before ``now``, or the start of a UTC date ``YYYY-MM-DD``;
    ``ValueError`` otherwise."""
    text = value.strip().lower()
    match = _SINCE.fullmatch(text)
    if match:
        return now - float(match[1]) * {"m": 60, "h": 3600, "d": 86400}[match[2]]
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise ValueError(
            f"--since {value[:40]!r}: give 30m, 24h, 7d (minutes, hours, days ago) or a date YYYY-MM-DD"
        ) from None


async def _usage(settings: Settings, args: argparse.Namespace) -> int:
    now = time.time()
    try:
        since = since_epoch(args.since, now)
    except ValueError as exc:
        print(f"fusion-mcp: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    from ..store import UsageTotal

    async def report(store: Store) -> int:
        rows = await store.usage(since, args.by, args.principal)
        total = (await store.usage(since, "all", args.principal)) or [UsageTotal(key="total")]
        _print_usage(rows, total[0], args, since)
        return 0

    return await _with_store(settings, report)


def _print_usage(rows: list[UsageTotal], total: UsageTotal, args: argparse.Namespace, since: float) -> None:
    if args.json:
        report = {
            "since": datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds"),
            "by": args.by,
            "principal": args.principal,
            "rows": [row.model_dump() for row in rows],
            "total": total.model_dump(exclude={"key"}),
        }
        print(json.dumps(report, indent=2))
    else:
        print(usage_table(rows, total, args.by, since))


def usage_table(rows: list[UsageTotal], total: UsageTotal, by: UsageBy, since: float) -> str:
    """``fusion-mcp usage`` as a table: a line per group, then the total."""
    when = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%d %H:%M UTC")
    if not rows:
        return f"no usage since {when}"
    width = max(len(by), *(len(r.key) for r in rows), len("total"))
    columns = f"{'runs':>6}  {'requests':>8}  {'prompt tokens':>13}  {'completion tokens':>17}  {'cost':>10}"
    head = f"{by:<{width}}  {columns}"

    def line(r: UsageTotal) -> str:
        return (
            f"{r.key:<{width}}  {r.runs:>6,}  {r.requests:>8,}  {r.prompt_tokens:>13,}  {r.completion_tokens:>17,}  "
            f"{'$' + format(r.cost, '.4f'):>10}"
        )

    lines = [f"usage since {when}", head, *map(line, rows), line(total)]
    return "\n".join(lines)


def run_line(row: dict[str, Any], width: int = RUNS_WIDTH) -> str:
    """One run of ``fusion-mcp runs``: id, time, cost, seconds, panel size, status, then as much of the prompt
    as fits in ``width`` columns (``runs ID`` shows the rest)."""
    when = datetime.fromtimestamp(row["created"]).strftime("%m-%d %H:%M")
    cost = f"${row['cost']:.4f}" if row["cost"] is not None else "-"
    status = str(row["status"]).removeprefix("error:") + (" (cached)" if row["cached"] else "")
    members = plural(len(str(row["panel"]).split(",")), "model")
    head = f"{row['run_id']}  {when}  {cost:>8} {row['seconds']:6.1f} s  {members:<8}  {status}  "
    prompt = " ".join(str(row["prompt_head"]).split())
    room = width - len(head)
    if len(prompt) > room:
        prompt = prompt[: max(0, room - 3)] + "..."
    return (head + prompt)[:width]


async def _doctor(settings: Settings, timeout_s: float) -> int:
    from .doctor import run_checks

    checks = await run_checks(settings, timeout_s)
    for check in checks:
        print(check.line())
    failed = [c for c in checks if not c.ok]
    print(f"\n{len(checks) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0
