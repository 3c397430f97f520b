"""`wan-batch serve`: batches, a live page per batch, their JSON under `/api/`, and `/metrics`.

A Starlette app (served by uvicorn): plain routes over the ledger, pages
rendered with Jinja2 (escaped) whose script refreshes them from the JSON API,
never by reloading. Handlers are plain functions: Starlette runs them in its
thread pool, so a Redis read never blocks the event loop. Read-only unless
`--allow-actions` (see `runner.web.access`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import httpx
import redis
from jinja2 import Environment, PackageLoader, select_autoescape
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from jobs.errors import UsageError, WebhookRejected
from jobs.status import JobStatus
from runner.batches import operations
from runner.fal.webhooks import WebhookVerifier
from runner.ledger.store import Ledger
from runner.settings import credential_from_env
from runner.steps.context import make_context
from runner.steps.gallery import thumbnail
from runner.web.access import COOKIE, Access
from runner.web.collector import registry_for
from runner.web.receiver import take_delivery
from runner.web.source import LedgerSource
from runner.web.views import batch_page, batch_rows

log = logging.getLogger(__name__)
_ENV = Environment(loader=PackageLoader("runner.web", "templates"), autoescape=select_autoescape(["j2"]))
#: Pages load nothing from elsewhere, and run no script but the app's own file.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}  # fmt: skip
#: A login form is a token and a path: anything longer is refused unread.
_LOGIN_BYTES = 4096
#: A webhook's body holds a result's JSON (output URLs, not files).
_WEBHOOK_BYTES = 5 * 1024 * 1024
#: A cancel or retry: run with the ledger, an HTTP client, the batch id and the request's JSON body.
Action = Callable[[Ledger, httpx.Client, str, dict[str, Any]], dict[str, Any]]
#: Paths anyone may reach: logging in, the pages' script and style, the health check, fal's (signed) webhooks.
_OPEN = ("/login", "/static/", "/healthz", "/favicon.ico", "/fal/webhook")


def create_app(source: LedgerSource, access: Access, webhooks: WebhookVerifier | None = None) -> Starlette:
    """The app; with `webhooks`, it also receives fal's webhooks at `/fal/webhook` (checked with those keys)."""
    web = _Web(source, access, webhooks)
    routes = [
        Route("/", web.index),
        Route("/batches/{batch_id}", web.batch),
        Route("/batches/{batch_id}/files/{path:path}", web.file),
        Route("/batches/{batch_id}/thumbs/{path:path}", web.thumb),
        Route("/api/batches", web.api_batches),
        Route("/api/batches/{batch_id}", web.api_batch),
        Route("/api/batches/{batch_id}/cancel", web.cancel, methods=["POST"]),
        Route("/api/batches/{batch_id}/retry", web.retry, methods=["POST"]),
        Route("/metrics", web.metrics),
        Route("/healthz", web.healthz),
        Route("/favicon.ico", lambda _request: Response(status_code=204)),
        Route("/login", web.login, methods=["GET", "POST"]),
        Route("/logout", web.logout, methods=["POST"]),
        *([Route("/fal/webhook", web.webhook, methods=["POST"])] if webhooks is not None else []),
        Mount("/static", StaticFiles(packages=[("runner.web", "static")]), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=web.guard)],
                     exception_handlers={redis.ConnectionError: _no_redis, redis.TimeoutError: _no_redis})  # fmt: skip


class _Web:
    def __init__(self, source: LedgerSource, access: Access, webhooks: WebhookVerifier | None) -> None:
        self.source = source
        self.access = access
        self.webhooks = webhooks
        self.registry = registry_for(source)
        #: Lent to the steps a delivery moves (a move makes no call to fal).
        self.http = httpx.Client(timeout=30.0) if webhooks is not None else None

    async def guard(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Every path but the open ones needs the token where reads are not open; every answer gets the headers."""
        path = request.url.path
        if not path.startswith(_OPEN) and not self.access.may_read(request):
            if path.startswith(("/api/", "/metrics")):
                response: Response = JSONResponse({"error": "this needs the serve token"}, 401,
                                                  {"WWW-Authenticate": "Bearer"})  # fmt: skip
            else:
                response = RedirectResponse(f"/login?next={quote(path, safe='/')}", 303)
        else:
            response = await call_next(request)
        response.headers.update(_HEADERS)
        return response

    # --- pages ---------------------------------------------------------------

    def index(self, request: Request) -> Response:
        rows = self.source.read(lambda ledger: batch_rows(ledger, time.time()))
        return self._page("batches.html.j2", request, batches=rows, where=self.source.where)

    def batch(self, request: Request) -> Response:
        data = self._batch_data(request.path_params["batch_id"])
        if data is None:
            return self._page("missing.html.j2", request, status=404, batch_id=request.path_params["batch_id"])
        return self._page("batch.html.j2", request, batch=data, actions=self._actions(request))

    def file(self, request: Request) -> Response:
        found = self._output_file(request)
        return found if isinstance(found, Response) else FileResponse(found[1])

    def thumb(self, request: Request) -> Response:
        """The thumbnail `report.html` shows, made now if it is not there yet."""
        found = self._output_file(request)
        if isinstance(found, Response):
            return found
        folder, image = found
        made = thumbnail(image, folder, f"out-{image.stem}")
        return FileResponse(folder / made if made else image)

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self._page("login.html.j2", request, next=_safe_next(request.query_params.get("next")))
        body = await _read_capped(request, _LOGIN_BYTES)
        if body is None:
            return JSONResponse({"error": "too large"}, 413)
        form = parse_qs(body.decode("utf-8", "replace"))
        next_path = _safe_next((form.get("next") or ["/"])[0])
        if not self.access.check_token((form.get("token") or [""])[0]):
            return self._page("login.html.j2", request, status=401, next=next_path, wrong=True)
        response = RedirectResponse(next_path, 303)
        response.set_cookie(COOKIE, self.access.session_value(), httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")  # fmt: skip
        return response

    def logout(self, request: Request) -> Response:
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE)
        return response

    # --- JSON ----------------------------------------------------------------

    def api_batches(self, request: Request) -> Response:
        return JSONResponse(self.source.read(lambda ledger: batch_rows(ledger, time.time())))

    def api_batch(self, request: Request) -> Response:
        data = self._batch_data(request.path_params["batch_id"])
        if data is None:
            return JSONResponse({"error": f"no batch {request.path_params['batch_id']!r}"}, 404)
        return JSONResponse({**data, "actions": self._actions(request)})

    async def cancel(self, request: Request) -> Response:
        """Cancel the batch; made here with the batch's credential in this process's environment, else by
        its workers (or the `wan-batch run` serving its folder)."""

        def cancel_batch(ledger: Ledger, http: httpx.Client, batch_id: str, _asked: dict[str, Any]) -> dict[str, Any]:
            info = ledger.batch(batch_id)
            here = info is not None and credential_from_env(info.auth_scheme) is not None
            return {"cancel": operations.cancel_batch(make_context(ledger, http), batch_id, here)}

        return await self._act(request, cancel_batch)

    async def retry(self, request: Request) -> Response:
        """Retry the batch's failed jobs (`{"error_types": [...]}`: only those that failed so)."""

        def retry_failed(ledger: Ledger, http: httpx.Client, batch_id: str, asked: dict[str, Any]) -> dict[str, Any]:
            types = asked.get("error_types")
            chosen = [str(t) for t in types] if isinstance(types, list) and types else None
            requeued = operations.retry_jobs(make_context(ledger, http), batch_id, [JobStatus.FAILED], chosen)
            return {"requeued": len(requeued)}

        return await self._act(request, retry_failed)

    async def webhook(self, request: Request) -> Response:
        """fal's delivery: checked to be fal's by its signature (it needs no serve token), answered at once."""
        body = await _read_capped(request, _WEBHOOK_BYTES)
        if body is None:
            return JSONResponse({"error": "too large"}, 413)
        return await run_in_threadpool(self._take_webhook, dict(request.headers), body)

    def _take_webhook(self, headers: dict[str, str], body: bytes) -> Response:
        assert self.webhooks is not None and self.http is not None
        http = self.http
        try:
            request_id = self.webhooks.verify(headers, body)
            delivered = self.source.read(lambda ledger: take_delivery(make_context(ledger, http), request_id, body))
        except WebhookRejected as exc:
            log.warning("webhook refused: %s", exc)
            return JSONResponse({"error": str(exc)}, exc.status_code)
        return JSONResponse(delivered.as_json())

    def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def healthz(self, request: Request) -> Response:
        """200 `{"redis": true}`, or 503 `{"redis": false}` within seconds when Redis does not answer."""
        try:
            return JSONResponse({"redis": bool(self.source.read(lambda ledger: ledger.redis.ping()))})
        except (redis.ConnectionError, redis.TimeoutError):
            return JSONResponse({"redis": False}, 503)

    # --- helpers -------------------------------------------------------------

    def _batch_data(self, batch_id: str) -> dict[str, Any] | None:
        try:
            return self.source.read(lambda ledger: batch_page(ledger, batch_id, time.time()))
        except UsageError:  # recorded by an earlier version: its jobs cannot be read
            return None

    def _actions(self, request: Request) -> bool:
        return self.access.allow_actions and self.access.authorized(request)

    async def _act(self, request: Request, action: Action) -> Response:
        refused = self.access.may_act(request)
        if refused is not None:
            return JSONResponse({"error": refused}, 403)
        try:
            asked = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, 400)
        batch_id = request.path_params["batch_id"]
        return await run_in_threadpool(self._act_now, batch_id, action, asked if isinstance(asked, dict) else {})

    def _act_now(self, batch_id: str, action: Action, asked: dict[str, Any]) -> Response:
        if self.source.read(lambda ledger: ledger.batch(batch_id)) is None:
            return JSONResponse({"error": f"no batch {batch_id!r}"}, 404)
        try:
            with httpx.Client(timeout=30.0) as http:
                return JSONResponse(self.source.read(lambda ledger: action(ledger, http, batch_id, asked)))
        except UsageError as exc:
            return JSONResponse({"error": str(exc)}, 409)

    def _output_file(self, request: Request) -> tuple[Path, Path] | Response:
        """The batch's folder and an output image of it (under its `images/`), or the answer that refuses it."""
        batch_id, path = request.path_params["batch_id"], str(request.path_params["path"])
        info = self.source.read(lambda ledger: ledger.batch(batch_id))
        if info is None:
            return JSONResponse({"error": f"no batch {batch_id!r}"}, 404)
        images = (Path(info.folder) / "images").resolve()
        try:
            found = (Path(info.folder) / path).resolve()  # as the job's record names it: `images/<name>`
            if found.is_relative_to(images) and found.is_file():
                return Path(info.folder), found
        except (OSError, ValueError):  # a NUL in the path, say
            pass
        return JSONResponse({"error": "no such output"}, 404)

    def _page(self, template: str, request: Request, status: int = 200, **values: Any) -> Response:
        html = _ENV.get_template(template).render(
            signed_in=self.access.authorized(request), needs_login=self.access.token is not None, **values
        )
        return HTMLResponse(html, status)


async def _read_capped(request: Request, most: int) -> bytes | None:
    """The request's body, or None once it is longer than `most` bytes (the rest is not read)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > most:
            return None
    return body


def _no_redis(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "Redis does not answer; try again shortly"}, 503, {"Retry-After": "5"})


def _safe_next(value: str | None) -> str:
    """A path on this app only: never `//host` or a URL elsewhere."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"
