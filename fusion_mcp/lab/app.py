"""The web lab's routes (``/lab``): ask, watch, read, history, compare, usage; sign-in and its session.

Pages are rendered on the server (Jinja2, autoescaped; answers through :mod:`~fusion_mcp.lab.markup`), with
one small script for the live columns (SSE from ``/lab/runs/{id}/events``) and one stylesheet, both served
from the package: the Content-Security-Policy allows nothing else. A run goes the one request path every
front end takes: :meth:`FusionService.prepare` (the same refusals), :meth:`FusionService.start` (run slots,
caps, the history), :meth:`FusionService.stop` to cancel, :meth:`FusionService.result` to read it back, which
finds only the signed-in principal's runs.

The HTTP guard has checked Host, Origin and the body's size before a request gets here; the lab checks its
session cookie on every page, and on every POST a CSRF token and an ``Origin`` header naming this server.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

import anyio
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route, Router
from starlette.types import Message, Receive, Scope, Send

from ..config import Settings
from ..config.presets import PRESET_NAMES
from ..core.callers import LOCAL_PRINCIPAL
from ..core.errors import Redactor
from ..core.lenses import BUILTIN
from ..core.limits import MAX_TOOL_CALLS, MIN_TOOL_CALLS
from ..core.models import FusionArgs, FusionRequest, FusionResult, new_run_id
from ..engine.admission import FusionRefused, incoming_depth
from ..engine.service import FusionService
from . import charts
from .auth import FAILURE_WINDOW_S, MAX_FAILURES, SignIns, same_token
from .watch import Cursor, Watched, Watches

if TYPE_CHECKING:
    from starlette.templating import Jinja2Templates

log = logging.getLogger(__name__)

PREFIX = "/lab"
SESSION_COOKIE = "fusion_lab_session"
SIGNIN_COOKIE = "fusion_lab_signin"
"""The sign-in form's own CSRF token (no session exists yet): the form and this cookie must agree."""
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    # same-origin, not no-referrer: under no-referrer Chromium sends a form POST with "Origin: null", which the
    # lab must refuse; no other site gets a referrer either way (and answers' links say noreferrer too).
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}
ASSETS = {
    "lab.js": "text/javascript; charset=utf-8",
    "lab.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
KEEPALIVE_S = 15.0
POLL_S = 1.0
RECORD_WAIT_S = 5.0
"""How long a finished run's stream waits for its record (written just after its answer) before saying done."""
"""How often a watcher's stream checks whether its run has ended (its text and steps come at once)."""
HISTORY_SCAN = 1000
"""Most recent runs a history search lists before its model and date filters (the text is searched by the store)."""
HISTORY_SHOWN = 200
USAGE_DAYS = (7, 30, 90, 365)
SINGLE_PROCESS = (
    "the web lab is served by single-process servers: this one is one of several processes (--workers, or "
    "replicas behind a proxy: FUSION_REPLICA), and a lab session lives in one process; serve without --workers "
    "or FUSION_REPLICA, or run fusion-mcp lab"
)
FORM_FIELDS = ("prompt", "context", "files", "panel", "preset", "analyst", "max_tool_calls")


def lab_path(path: str) -> bool:
    """Whether ``path`` is the lab's (the guard lets the lab authenticate it)."""
    return path == PREFIX or path.startswith(f"{PREFIX}/")


def _templates() -> Jinja2Templates:
    """The lab's templates, made at its first page: a server nobody opens the lab on loads no Jinja2 or markdown."""
    import jinja2
    from starlette.templating import Jinja2Templates

    from .markup import inline, markdown

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fusion_mcp.lab", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["md"] = markdown
    env.filters["md_inline"] = inline
    env.filters["usd"] = _usd
    env.filters["when"] = _when
    env.filters["anchor"] = _anchor
    env.filters["seconds"] = lambda s: "" if s is None else f"{s:.1f} s"
    env.filters["http_url"] = _http_url
    return Jinja2Templates(env=env)


def _usd(value: float | None) -> str:
    if value is None:
        return "—"
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _http_url(url: str) -> bool:
    """Whether a source's URL may be a link: http(s) only (a provider's citation could say ``javascript:``)."""
    return urlsplit(url).scheme.lower() in ("http", "https")


def _anchor(model: str) -> str:
    """A member's answer's id in the page (``model#lens`` ids hold characters an id should not)."""
    return "member-" + "".join(c if c.isalnum() else "-" for c in model)


class LabApp:
    """The lab as one ASGI app; ``service`` is lent by the HTTP app's lifespan, as to the chat routes."""

    def __init__(self, settings: Settings, sign_ins: SignIns | None = None, *, enabled: bool = True) -> None:
        """``enabled`` False: one of several processes (workers, replicas), whose lab sessions could not follow a
        browser from one process to the next; every lab path then says so (503)."""
        self.settings = settings
        self.enabled = enabled
        self.service: FusionService | None = None
        self.sign_ins = sign_ins or SignIns(settings.principals)
        self.watches = Watches()
        self._templates: Jinja2Templates | None = None
        self.redactor = Redactor(settings.secrets)
        page = self._page
        self.router = Router(
            routes=[
                Route(PREFIX, page(self._home)),
                Route(f"{PREFIX}/", page(self._home)),
                Route(f"{PREFIX}/signin", self._signin_form, methods=["GET"]),
                Route(f"{PREFIX}/signin", self._signin, methods=["POST"]),
                Route(f"{PREFIX}/signout", self._signout, methods=["POST"]),
                Route(f"{PREFIX}/static/{{name}}", self._asset, methods=["GET"]),
                Route(f"{PREFIX}/ask", page(self._ask), methods=["GET"]),
                Route(f"{PREFIX}/estimate", page(self._estimate), methods=["POST"]),
                Route(f"{PREFIX}/runs", page(self._start), methods=["POST"]),
                Route(f"{PREFIX}/runs/{{run_id}}", page(self._run), methods=["GET"]),
                Route(f"{PREFIX}/runs/{{run_id}}/events", self._events, methods=["GET"]),
                Route(f"{PREFIX}/runs/{{run_id}}/cancel", page(self._cancel), methods=["POST"]),
                Route(f"{PREFIX}/history", page(self._history), methods=["GET"]),
                Route(f"{PREFIX}/compare", page(self._compare), methods=["GET"]),
                Route(f"{PREFIX}/usage", page(self._usage), methods=["GET"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode().lower() not in SECURITY_HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = dict(message, headers=headers)
            await send(message)

        if not self.enabled:
            await PlainTextResponse(SINGLE_PROCESS, 503)(scope, receive, secured)
            return
        await self.router(scope, receive, secured)

    # -- sessions and forms --------------------------------------------------------------------------------

    def _page(
        self, handler: Callable[[Request, str, str], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A page for signed-in browsers only: without a session, the sign-in page; a POST must carry the
        session's CSRF token and an Origin naming this server."""

        async def page(request: Request) -> Response:
            session = self.sign_ins.session(request.cookies.get(SESSION_COOKIE))
            if session is None:
                if request.method == "POST":
                    return self._render(request, "signin.html", self._signin_context(request), status=403)
                return RedirectResponse(f"{PREFIX}/signin", 303)
            if request.method == "POST":
                form = await _form(request)
                refusal = _origin_refusal(request) or (
                    None
                    if same_token(_one(form, "csrf"), session.csrf)
                    else "the form's CSRF token is missing or stale: reload the page and submit it again"
                )
                if refusal is not None:
                    return self._render(request, "error.html", {"message": refusal, "csrf": session.csrf}, status=403)
                request.state.form = form
            return await handler(request, session.principal, session.csrf)

        return page

    def _render(self, request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        context.setdefault("principal", None)
        context.setdefault("csrf", "")
        context.setdefault("nav", "")
        if self._templates is None:
            self._templates = _templates()
        response = self._templates.TemplateResponse(request, name, context, status_code=status)
        response.headers["cache-control"] = "no-store"
        return response

    def _signin_context(self, request: Request, **extra: Any) -> dict[str, Any]:
        token = request.cookies.get(SIGNIN_COOKIE) or ""
        base = {"signin_csrf": token, "has_tokens": self.sign_ins.has_tokens, "once": "", "error": None}
        return {**base, "signed_in": None, **extra}

    async def _signin_form(self, request: Request) -> Response:
        session = self.sign_ins.session(request.cookies.get(SESSION_COOKIE))
        if session is not None and "once" not in request.query_params:
            return RedirectResponse(f"{PREFIX}/ask", 303)
        token = secrets.token_urlsafe(24)
        once = request.query_params.get("once", "")
        # A link followed by a browser already signed in is not sent by itself: it would swap the session.
        signed_in = session.principal if session is not None else None
        context = self._signin_context(request, signin_csrf=token, once=once, signed_in=signed_in)
        response = self._render(request, "signin.html", context)
        _cookie(response, request, SIGNIN_COOKIE, token)
        return response

    async def _signin(self, request: Request) -> Response:
        form = await _form(request)
        address = request.client.host if request.client else "unknown"
        refusal = _origin_refusal(request)
        cookie = request.cookies.get(SIGNIN_COOKIE)
        if refusal is None and (cookie is None or not same_token(_one(form, "csrf"), cookie)):
            refusal = "the sign-in form has expired: reload the page and sign in again"
        if refusal is not None:
            return self._render(request, "signin.html", self._signin_context(request, error=refusal), status=403)
        wait = self.sign_ins.wait_s(address)
        if wait > 0:
            message = (
                f"too many failed sign-ins from your address: try again in {math.ceil(wait)} s "
                f"(at most {MAX_FAILURES} attempts a {FAILURE_WINDOW_S:g} s)"
            )
            return self._render(request, "signin.html", self._signin_context(request, error=message), status=429)
        once = _one(form, "once")
        if once is not None:  # the one-time link's form: that field takes one-time tokens only
            principal = self.sign_ins.redeem(once, address)
        else:
            principal = self.sign_ins.sign_in(_one(form, "token") or "", address)
        if principal is None:
            log.info("lab: a failed sign-in from %s", address)
            message = (
                "that token is not a token of this server, or a one-time token already used: check it and try again"
            )
            return self._render(request, "signin.html", self._signin_context(request, error=message), status=401)
        log.info("lab: %s signed in from %s", principal, address)
        response = RedirectResponse(f"{PREFIX}/ask", 303)
        _cookie(response, request, SESSION_COOKIE, self.sign_ins.open(principal))
        response.delete_cookie(SIGNIN_COOKIE, path=PREFIX, httponly=True, samesite="strict")
        return response

    async def _signout(self, request: Request) -> Response:
        session_id = request.cookies.get(SESSION_COOKIE)
        session = self.sign_ins.session(session_id)
        form = await _form(request)
        if session is None or _origin_refusal(request) or not same_token(_one(form, "csrf"), session.csrf):
            return RedirectResponse(f"{PREFIX}/signin", 303)
        self.sign_ins.close(session_id or "")
        response = RedirectResponse(f"{PREFIX}/signin", 303)
        response.delete_cookie(SESSION_COOKIE, path=PREFIX, httponly=True, samesite="strict")
        return response

    async def _asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return PlainTextResponse("not found", 404)
        data = resources.files("fusion_mcp.lab").joinpath("static", name).read_bytes()
        return Response(data, media_type=ASSETS[name], headers={"cache-control": "no-cache"})

    # -- ask -----------------------------------------------------------------------------------------------

    def _service(self) -> FusionService:
        if self.service is None:
            raise RuntimeError("the fusion service is not open: the HTTP app's lifespan opens it first")
        return self.service

    async def _home(self, request: Request, principal: str, csrf: str) -> Response:
        return RedirectResponse(f"{PREFIX}/ask", 303)

    def _ask_context(self, principal: str, csrf: str, values: dict[str, str], **extra: Any) -> dict[str, Any]:
        settings = self.settings
        return {
            "principal": principal,
            "csrf": csrf,
            "nav": "ask",
            "values": values,
            "presets": PRESET_NAMES,
            "lenses": sorted(BUILTIN),
            "default_panel": ", ".join(settings.analysis_models),
            "default_analyst": settings.model,
            "min_tools": MIN_TOOL_CALLS,
            "max_tools": MAX_TOOL_CALLS,
            "default_tools": settings.max_tool_calls,
            "roots": [str(r) for r in settings.files_roots],
            "error": None,
            "error_field": None,
            "estimate": None,
            **extra,
        }

    async def _ask(self, request: Request, principal: str, csrf: str) -> Response:
        """The ask form; ``?again=RUN`` fills it with one of the principal's runs (to ask it of another panel)."""
        values = {k: "" for k in FORM_FIELDS}
        again = request.query_params.get("again")
        asked = await self._request_of(again, principal) if again else None
        if asked is not None:
            values |= {
                "prompt": asked.prompt,
                "context": asked.context or "",
                "files": "\n".join(asked.files),
                "panel": ", ".join(asked.analysis_models),
                "analyst": asked.model,
                "max_tool_calls": str(asked.max_tool_calls),
            }
        return self._render(request, "ask.html", self._ask_context(principal, csrf, values))

    def _prepared(self, form: dict[str, list[str]]) -> tuple[dict[str, str], FusionRequest]:
        """The form as the call's request, or :class:`FusionRefused` naming the field at fault."""
        values = {k: (_one(form, k) or "").strip() for k in FORM_FIELDS}
        tools = values["max_tool_calls"]
        if tools and not tools.isdigit():
            raise FusionRefused.bad_argument("max_tool_calls")
        panel = [e.strip() for e in values["panel"].replace("\n", ",").split(",") if e.strip()]
        files = [f.strip() for f in values["files"].splitlines() if f.strip()]
        args = FusionArgs(
            prompt=values["prompt"],
            context=values["context"] or None,
            analysis_models=panel or None,
            model=values["analyst"] or None,
            max_tool_calls=int(tools) if tools else None,
            preset=values["preset"] or None,
            files=files or None,
        )
        if not args.prompt:
            raise FusionRefused.bad_argument("prompt")
        return values, self._service().prepare(args, depth=incoming_depth(None, self.settings))

    async def _estimate(self, request: Request, principal: str, csrf: str) -> Response:
        form: dict[str, list[str]] = request.state.form
        values = {k: (_one(form, k) or "").strip() for k in FORM_FIELDS}
        try:
            values, prepared = self._prepared(form)
            checked = await self._service().estimate(prepared)
        except FusionRefused as refused:
            return self._refused(request, principal, csrf, values, refused)
        estimate = {
            "cost": checked.cost_estimate,
            "panel": checked.analysis_models,
            "analyst": checked.model,
            "tokens": checked.max_completion_tokens,
            "tools": checked.max_tool_calls,
        }
        return self._render(request, "ask.html", self._ask_context(principal, csrf, values, estimate=estimate))

    def _refused(
        self, request: Request, principal: str, csrf: str, values: dict[str, str], refused: FusionRefused
    ) -> Response:
        fields = {"analysis_models": "panel", "model": "analyst", "max_tool_calls": "max_tool_calls"}
        where = fields.get(refused.argument or "", refused.argument)
        context = self._ask_context(principal, csrf, values, error=refused.message, error_field=where)
        return self._render(request, "ask.html", context, status=400 if refused.reason == "invalid_arguments" else 409)

    async def _start(self, request: Request, principal: str, csrf: str) -> Response:
        form: dict[str, list[str]] = request.state.form
        values = {k: (_one(form, k) or "").strip() for k in FORM_FIELDS}
        try:
            values, prepared = self._prepared(form)
        except FusionRefused as refused:
            return self._refused(request, principal, csrf, values, refused)
        service = self._service()
        run_id = new_run_id()
        watched = Watched(run_id, principal, prepared.analysis_models, prepared.model, self.redactor)
        self.watches.add(watched)
        service.start(prepared, run_id=run_id, principal=principal, on_event=watched.event, on_delta=watched.delta)
        live = service.live(run_id, principal)
        watched.run_done = live.done if live is not None else None
        log.info("lab: %s started run %s", principal, run_id)
        return RedirectResponse(f"{PREFIX}/runs/{quote(run_id)}", 303)

    # -- watch and read ------------------------------------------------------------------------------------

    async def _run(self, request: Request, principal: str, csrf: str) -> Response:
        run_id = request.path_params["run_id"]
        service = self._service()
        live = service.live(run_id, principal)
        base = {"principal": principal, "csrf": csrf, "nav": "history", "run_id": run_id}
        if live is not None and not live.done.is_set():
            watched = self.watches.get(run_id, principal)
            texts = {m: "".join(watched.texts.get(m, [])) for m in live.request.analysis_models} if watched else {}
            context = base | {"asked": live.request, "texts": texts, "streaming": watched is not None}
            return self._render(request, "watch.html", context)
        result = await service.result(run_id, principal, wait_s=0)
        if result.failure_reason == "run_not_found":
            context = base | {"message": result.error or "no such run", "csrf": csrf}
            return self._render(request, "not_found.html", context, status=404)
        run_request = await self._request_of(run_id, principal)
        if result.status == "running":
            context = base | {"asked": run_request, "texts": {}, "streaming": False}
            return self._render(request, "watch.html", context)
        return self._render(request, "read.html", base | _read_context(result, run_request))

    async def _request_of(self, run_id: str, principal: str) -> FusionRequest | None:
        """What ``principal``'s run ``run_id`` was asked: this process's run, else its record; None for another
        principal's run, as for one that does not exist."""
        live = self._service().live(run_id, principal)
        if live is not None:
            return live.request
        store = self._service().store
        record = await store.run(run_id, principal) if store is not None else None
        try:
            return FusionRequest.model_validate(record["request"]) if record else None
        except (KeyError, ValueError):
            return None

    async def _events(self, request: Request) -> Response:
        """The live columns' stream: one ``news`` event per change (new text per member, new steps, done)."""
        session = self.sign_ins.session(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return PlainTextResponse("sign in first: /lab/signin", 401)
        run_id = request.path_params["run_id"]
        watched = self.watches.get(run_id, session.principal)
        if watched is None:
            return PlainTextResponse("no live run of yours has this id here: reload the page", 404)

        async def stream() -> AsyncIterator[bytes]:
            cursor = Cursor()
            quiet = 0.0
            while True:
                watched.over()
                news = watched.news(cursor)
                if news["text"] or news["steps"] or news["done"]:
                    quiet = 0.0
                    if news["done"]:  # said once its record is in: the history the page links to lists it
                        with anyio.move_on_after(RECORD_WAIT_S):
                            await self._service().record_written(run_id, session.principal)
                    yield b"event: news\ndata: " + json.dumps(news, ensure_ascii=False).encode() + b"\n\n"
                    if news["done"]:
                        return
                elif quiet >= KEEPALIVE_S:
                    quiet = 0.0
                    yield b": keep-alive\n\n"
                started = time.monotonic()
                await watched.changed(POLL_S)
                quiet += time.monotonic() - started

        headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def _cancel(self, request: Request, principal: str, csrf: str) -> Response:
        run_id = request.path_params["run_id"]
        if not self._service().stop(run_id, principal, "cancelled in the lab"):
            log.info("lab: %s asked to cancel run %s, which is not going here", principal, run_id)
        return RedirectResponse(f"{PREFIX}/runs/{quote(run_id)}", 303)

    # -- history, compare, usage ---------------------------------------------------------------------------

    async def _history(self, request: Request, principal: str, csrf: str) -> Response:
        service = self._service()
        store = service.store
        await service.records_written(principal)  # the runs just answered, as they ended
        query = request.query_params
        text, model = query.get("q", "").strip(), query.get("model", "").strip()
        since, until, error = _day(query.get("since", "")), _day(query.get("until", "")), None
        if (query.get("since") and since is None) or (query.get("until") and until is None):
            error = "dates must be written YYYY-MM-DD"
        rows = await store.recent(HISTORY_SCAN, principal, text=text or None) if store is not None else []
        found = [
            r
            for r in rows
            if (not model or model.lower() in str(r["panel"]).lower())
            and (since is None or r["created"] >= since)
            and (until is None or r["created"] < until + 86400)
        ]
        context = {
            "principal": principal,
            "csrf": csrf,
            "nav": "history",
            "rows": found[:HISTORY_SHOWN],
            "more": max(0, len(found) - HISTORY_SHOWN),
            "filters": {k: query.get(k, "") for k in ("q", "model", "since", "until")},
            "error": error,
            "has_store": store is not None,
        }
        return self._render(request, "history.html", context)

    async def _compare(self, request: Request, principal: str, csrf: str) -> Response:
        chosen = list(dict.fromkeys(request.query_params.getlist("run")))
        base = {"principal": principal, "csrf": csrf, "nav": "history"}
        if len(chosen) != 2:
            message = f"choose exactly two runs to compare (you chose {len(chosen)}): tick two in the history"
            return self._render(request, "error.html", base | {"message": message}, status=400)
        sides = []
        for run_id in chosen:
            result = await self._service().result(run_id, principal, wait_s=0)
            if result.failure_reason == "run_not_found":
                message = result.error or "no such run"
                return self._render(request, "not_found.html", base | {"message": message, "run_id": run_id}, 404)
            run_request = await self._request_of(run_id, principal)
            sides.append({"run_id": run_id} | _read_context(result, run_request))
        return self._render(request, "compare.html", base | {"sides": sides})

    async def _usage(self, request: Request, principal: str, csrf: str) -> Response:
        store = self._service().store
        days_text = request.query_params.get("days", "30")
        days = int(days_text) if days_text.isdigit() and int(days_text) in USAGE_DAYS else 30
        since = time.time() - days * 86400
        context: dict[str, Any] = {
            "principal": principal,
            "csrf": csrf,
            "nav": "usage",
            "days": days,
            "choices": USAGE_DAYS,
            "has_store": store is not None,
            "per_day": None,
            "per_model": None,
            "per_principal": None,
            "total": None,
        }
        if store is not None:
            by_day = await store.usage(since, "day", principal)
            by_model = await store.usage(since, "model", principal)
            context["per_day"] = charts.columns(charts.days(by_day, since, days), "spend per day (USD)")
            context["per_model"] = charts.bars([(t.key, t.cost) for t in by_model], "spend per model (USD)")
            context["tables"] = {"day": by_day, "model": by_model}
            context["total"] = sum(t.cost for t in by_day)
            if principal in self.settings.lab_operators or (
                principal == LOCAL_PRINCIPAL and not self.sign_ins.has_tokens
            ):
                by_principal = await store.usage(since, "principal")
                context["per_principal"] = charts.bars(
                    [(t.key, t.cost) for t in by_principal], "spend per principal (USD)"
                )
                context["tables"]["principal"] = by_principal
        return self._render(request, "usage.html", context)


def _read_context(result: FusionResult, request: FusionRequest | None) -> dict[str, Any]:
    """What the read view shows of a finished run: the analysis as five buckets, each point linked to the
    members it names; the full answers; sources; cost and time per member."""
    costs: dict[str, float | None] = {}
    for usage in result.usage.models:
        if usage.role == "panel":
            costs[usage.model] = usage.cost
    answered = {r.model for r in result.responses}
    members = [
        {
            "model": r.model,
            "content": r.content,
            "truncated": r.truncated_reason if r.truncated else None,
            "sources": r.sources,
            "seconds": result.timings.members.get(r.model),
            "cost": _member_cost(result, r.model),
        }
        for r in result.responses
    ]
    failed = [
        {"model": f.model, "error": f.error, "seconds": result.timings.members.get(f.model)}
        for f in result.failed_models
        if f.model not in answered
    ]
    return {
        "result": result,
        "asked": request,
        "members": members,
        "failed": failed,
        "named": answered | {f.model for f in result.failed_models},
        "analyst_cost": sum(u.cost or 0.0 for u in result.usage.models if u.role == "analyst") or None,
    }


def _member_cost(result: FusionResult, entry: str) -> float | None:
    """A panel entry's cost: usage rows name the entry's model (``model#lens`` is one model under a lens)."""
    for usage in result.usage.models:
        if usage.role == "panel" and usage.model == entry:
            return usage.cost
    return None


def _day(text: str) -> float | None:
    try:
        return datetime.strptime(text.strip(), "%Y-%m-%d").replace(tzinfo=UTC).timestamp() if text.strip() else None
    except ValueError:
        return None


async def _form(request: Request) -> dict[str, list[str]]:
    """A form POST's fields (urlencoded; anything else reads as no fields, so its CSRF check fails)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return {}
    body = await request.body()
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        return {}


def _one(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def _origin_refusal(request: Request) -> str | None:
    """Why a POST is not from a page of this server: no Origin, or one naming another host."""
    origin = request.headers.get("origin")
    host = request.headers.get("host", "")
    if not origin or origin == "null":
        return "this form must be sent by a browser from this server's own page (no Origin header came with it)"
    if urlsplit(origin).netloc.lower() != host.lower():
        return "this form came from a page of another site: open the lab at the address of this server and try again"
    return None


def _cookie(response: Response, request: Request, name: str, value: str) -> None:
    origin = request.headers.get("origin", "")
    secure = request.url.scheme == "https" or origin.startswith("https://")
    response.set_cookie(name, value, path=PREFIX, httponly=True, samesite="strict", secure=secure)
