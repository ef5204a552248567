"""The console's ASGI application: one route per view, the approve/reject and abort
actions, login.

Pages are rendered on the server (Jinja2). A page's live part is also served alone when
the request carries `X-Console-Fragment: 1`; a few lines of inline script fetch it every
few seconds, so pages update without a reload and without a JavaScript build.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from sync.cloud.console import auth, formats
from sync.cloud.console.auth import Refused
from sync.cloud.console.fleet import Fleet
from sync.cloud.console.tokens import Holder, TokenFile
from sync.cloud.decisions import MAX_APPROVAL_ID, DecisionError

FRAGMENT = "x-console-fragment"
SESSION_S = 12 * 3600
LOOPBACK = ["127.0.0.1", "localhost", "::1", "[::1]"]  # Host names an insecure console answers


class Console:
    """The routes over one fleet; `tokens` None means served with insecure = true."""

    def __init__(self, fleet: Fleet, tokens: TokenFile | None, *, poll_s: float = 3.0) -> None:
        self.fleet = fleet
        self.tokens = tokens
        self.poll_s = poll_s
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
            autoescape=True, undefined=jinja2.ChainableUndefined)
        formats.install(self.templates)

    def render(self, request: Request, name: str, holder: Holder | None,
               status: int = 200, **context: Any) -> Response:
        """The page, or only its live part when the page's script asks for it."""
        nonce = secrets.token_urlsafe(12)
        fragment = request.headers.get(FRAGMENT) == "1"
        ctx = {"holder": holder, "csrf": auth.csrf_token(request), "nonce": nonce,
               "poll_ms": int(self.poll_s * 1000), "fragment": fragment,
               "flash": request.session.pop("flash", None), "path": request.url.path,
               "status_code": status,
               **context}
        template = self.templates.get_template(name)
        live = template.render({**ctx, "request": request, "fragment": True})
        digest = hashlib.sha256(live.encode()).hexdigest()[:16]
        body = live if fragment else template.render({**ctx, "request": request,
                                                      "digest": digest})
        response = HTMLResponse(body, status_code=status)
        response.headers["X-Fragment-Digest"] = digest
        response.headers["Content-Security-Policy"] = (
            f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'self' "
            "'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    def who(self, request: Request) -> Holder:
        holder = auth.holder_of(request, self.tokens)
        if holder is None:
            raise Refused(401, "log in first")
        return holder

    def page(self, template: str, load: Callable[[Request], dict[str, Any]],
             missing: str | None = None) -> Callable[[Request], Any]:
        """A GET route: who is asking, then the view's data into its template; the page of
        an id the cloud does not hold (its `missing` key None) answers 404."""
        def route(request: Request) -> Response:
            try:
                holder = self.who(request)
            except Refused:
                if request.headers.get(FRAGMENT) == "1":
                    return Response("log in again", status_code=401)
                return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
            data = load(request)
            status = 404 if missing is not None and data.get(missing) is None else 200
            return self.render(request, template, holder, status=status, **data)
        return route

    # --- login -----------------------------------------------------------------------------
    def login_form(self, request: Request) -> Response:
        if self.tokens is None:
            return RedirectResponse("/", status_code=303)
        return self.render(request, "login.html", None, next=_next(request), error=None)

    async def login(self, request: Request) -> Response:
        if self.tokens is None:
            return RedirectResponse("/", status_code=303)
        form = await auth.check_csrf(request)
        holder = self.tokens.holder(form.get("token", ""))
        if holder is None:
            return self.render(request, "login.html", None, status=401, next=_next(request),
                               error="unknown token")
        auth.log_in(request, holder)
        return RedirectResponse(_next(request), status_code=303)

    async def logout(self, request: Request) -> Response:
        await auth.check_csrf(request)
        request.session.clear()
        return RedirectResponse("/login" if self.tokens is not None else "/", status_code=303)

    # --- the action ------------------------------------------------------------------------
    async def decide(self, request: Request) -> Response:
        """Approve or reject a pending approval: the same signed command as the CLI's."""
        holder = self.who(request)
        form = await auth.check_csrf(request)
        auth.require_operator(holder)
        approve = form.get("decision") == "approve"
        if form.get("decision") not in ("approve", "reject"):
            raise Refused(400, f"decision: approve or reject (got {form.get('decision')!r})")
        device, run_id = form.get("device", ""), form.get("run_id", "")
        try:
            approval_id = int(form.get("approval_id", ""))
        except ValueError:
            approval_id = 0
        if not 0 < approval_id <= MAX_APPROVAL_ID:
            raise Refused(400, f"approval_id: an approval id, 1 to {MAX_APPROVAL_ID} (got "
                          f"{form.get('approval_id')!r})")
        patch = None
        if approve and form.get("patch", "").strip():
            try:
                patch = json.loads(form["patch"])
            except ValueError as exc:
                raise Refused(400, f"patch: not valid JSON ({exc})") from None
            if not isinstance(patch, dict):
                raise Refused(400, f"patch: must be a JSON object (got {form['patch']})")
        try:
            outcome = await run_in_threadpool(
                self.fleet.decide, device=device, run_id=run_id, approval_id=approval_id,
                approve=approve, note=form.get("note") or None, patch=patch, by=holder.name)
        except DecisionError as exc:
            raise Refused(409, str(exc)) from None
        request.session["flash"] = outcome
        back = form.get("back", "/approvals")
        return RedirectResponse(back if back.startswith("/") and not back.startswith("//")
                                else "/approvals", status_code=303)

    async def abort(self, request: Request) -> Response:
        """Stop a running deployment: the same function as `deployment abort ID`."""
        holder = self.who(request)
        await auth.check_csrf(request)
        auth.require_operator(holder)
        dep_id = request.path_params["dep_id"]
        if not await run_in_threadpool(self.fleet.abort, dep_id, holder.name):
            raise Refused(409, f"deployment {dep_id} is not running")
        request.session["flash"] = f"aborted deployment {dep_id}: no further wave goes out"
        return RedirectResponse(f"/deployments/{quote(dep_id, safe='')}", status_code=303)

    def app(self, *, secret: str | None = None, https_only: bool = False) -> Starlette:
        f = self.fleet

        def runs(request: Request) -> dict[str, Any]:
            q = request.query_params
            filters = {k: q.get(k) or None for k in ("device", "group", "status",
                                                     "workflow", "since")}
            return f.runs(**filters, limit=formats.limit(q.get("limit")))

        routes = [
            Route("/", lambda r: RedirectResponse("/devices", status_code=303)),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/devices", self.page("devices.html", lambda r: f.devices())),
            Route("/runs", self.page("runs.html", runs)),
            Route("/runs/{device}/{run_id}", self.page("run.html", lambda r: f.run(
                r.path_params["device"], r.path_params["run_id"]), missing="run")),
            Route("/approvals", self.page("approvals.html", lambda r: f.approvals())),
            Route("/approvals/decide", self.decide, methods=["POST"]),
            Route("/deployments", self.page("deployments.html", lambda r: f.deployments())),
            Route("/deployments/{dep_id}", self.page("deployment.html", lambda r: f.deployment(
                r.path_params["dep_id"]), missing="deployment")),
            Route("/deployments/{dep_id}/abort", self.abort, methods=["POST"]),
            Route("/conflicts", self.page("conflicts.html", lambda r: f.conflicts())),
        ]
        session = Middleware(SessionMiddleware, secret_key=secret or secrets.token_urlsafe(32),
                             session_cookie="console_session", max_age=SESSION_S,
                             same_site="strict", https_only=https_only)
        middleware = [session]
        if self.tokens is None:  # no login: refuse a page reached through another name
            # (DNS rebinding would make an outside page same-origin with the console)
            middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK))
        app = Starlette(routes=routes, middleware=middleware,
                        exception_handlers={Refused: self.refused})
        return app

    def refused(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        if exc.status == 401:
            return RedirectResponse("/login", status_code=303)
        return self.render(request, "error.html", auth.holder_of(request, self.tokens),
                           status=exc.status, message=str(exc))


def _next(request: Request) -> str:
    target = request.query_params.get("next", "/")
    return target if target.startswith("/") and not target.startswith("//") else "/"
