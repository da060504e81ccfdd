"""Every error a request can meet, as one JSON shape: ``{"error": {"type", "message"}}``, or
under the catalogue's page paths (anything outside `API_PATHS`) as an HTML error page with the
same status and message, drawn by the renderer `install` is given (`crx.cli.web.pages`).

A `CrxError` keeps its class name and message (the library already redacts credentials in
them) and gets the status its family means; FastAPI's validation errors are 400s; an unknown
route is a JSON 404; a write the server refuses before any facade call (no token, a bad
one: `WriteRefused`) has its own status and headers; anything else is a bug, answered with a
500 that names no detail and logged as one line, never with a traceback (which could quote a
URL with its password).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crx.registry import errors

log = logging.getLogger("crx.serve")

# Most specific first: the first class in an error's MRO found here decides its status.
STATUS: tuple[tuple[type[errors.CrxError], int], ...] = (
    (errors.AliasConflict, 409),
    (errors.NotPermitted, 403),
    (errors.ProtectedAlias, 403),
    (errors.PromotionRefused, 403),
    (errors.DatabaseRefused, 403),
    (errors.DatabaseUnavailable, 503),
    (errors.StoreUnavailable, 503),
    # A server whose database is not (yet) the schema this crx reads cannot serve it.
    (errors.DatabaseError, 503),
    (errors.NotFound, 404),
    (errors.InvalidInput, 400),
    (errors.AlreadyExists, 409),
    (errors.GovernanceError, 409),
    (errors.StoreError, 500),
)
# Not HEAD either: FastAPI's routes answer GET only, so the guard refuses what none serves.
READ_METHODS = ("GET",)
# Paths answered in JSON (the API and its documentation); every other path is a page.
API_PATHS = ("/api/", "/openapi.json", "/docs")
#: Draws an error page: (request, status, type, message, headers) -> response.
HtmlError = Callable[[Request, int, str, str, dict[str, str]], Response]


def is_api(path: str) -> bool:
    return path == "/api" or path.startswith(API_PATHS)


class WriteRefused(Exception):
    """A write refused before it reaches the facade: read-only (403), no or a bad token (401,
    with ``WWW-Authenticate: Bearer``). Its message never holds the token."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def status_of(exc: errors.CrxError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 400


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


def _json(status: int, kind: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse(error_body(kind, message), status_code=status, headers=headers or None)


def answer(request: Request, status: int, kind: str, message: str, **headers: str) -> Response:
    """The error as JSON under `API_PATHS`, else as the app's HTML error page."""
    html: HtmlError | None = getattr(request.app.state, "html_error", None)
    if html is None or is_api(request.url.path):
        return _json(status, kind, message, **headers)
    return html(request, status, kind, message, headers)


async def _crx_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.CrxError)
    return answer(request, status_of(exc), type(exc).__name__, str(exc))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    found = exc.errors()
    first = found[0] if found else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    message = str(first.get("msg", "invalid request"))
    return answer(request, 400, "InvalidInput", f"{where}: {message}" if where else message)


async def _write_refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WriteRefused)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    return answer(request, exc.status, exc.kind, exc.message, **headers)


_HTTP_TYPES = {404: "NotFound", 405: "MethodNotAllowed"}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"no route {request.url.path} (see /docs)"
    else:
        message = str(exc.detail)
    return answer(request, exc.status_code, _HTTP_TYPES.get(exc.status_code, "HTTPError"), message)


def install(app: FastAPI, html: HtmlError | None = None) -> None:
    """Register the handlers (``html`` draws the error pages outside `API_PATHS`)."""
    app.state.html_error = html
    app.add_exception_handler(errors.CrxError, _crx_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(WriteRefused, _write_refused)
    app.add_exception_handler(HTTPException, _http_error)


class ReadOnlyGuard:
    """ASGI middleware: refuses every method but GET (405, before any route runs) except a
    POST to one of ``writable`` (the token-guarded write routes), adds ``headers`` to every
    response, and answers a bug with a bare JSON 500."""

    def __init__(
        self,
        app: ASGIApp,
        headers: list[tuple[bytes, bytes]],
        writable: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.headers = headers
        self.writable = writable

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        write = scope["method"] == "POST" and scope.get("path") in self.writable
        if scope["method"] not in READ_METHODS and not write:
            allowed = (
                (*READ_METHODS, "POST") if scope.get("path") in self.writable else READ_METHODS
            )
            response = self._error(
                scope,
                405,
                "MethodNotAllowed",
                f"{scope['method']} is not allowed here: only GET, and POST with an API token "
                "to the write routes (see /docs)",
                Allow=", ".join(allowed),
            )
            await response(scope, receive, send_with_headers)
            return
        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            # One line: the class only (a message or traceback could hold a credential).
            log.error("%s %s failed: %s", scope["method"], scope.get("path"), type(exc).__name__)
            if not started:
                response = self._error(
                    scope, 500, "InternalError", "internal server error (a bug in crx)"
                )
                await response(scope, receive, send_with_headers)

    def _error(
        self, scope: Scope, status: int, kind: str, message: str, **headers: str
    ) -> Response:
        if scope.get("app") is None:  # outside the app: no page renderer to reach
            return _json(status, kind, message, **headers)
        return answer(Request(scope), status, kind, message, **headers)
