"""`create_app`: the FastAPI application of ``crx serve`` for one `Registry`.

The app serves the catalogue's HTML pages (`crx.cli.web.pages`, from ``/``) and the JSON API
(`crx.cli.web.api`, under ``/api``), reads only through the facade, answers every error as JSON
under the API and as an HTML page elsewhere (`crx.cli.web.errors`) and names the registry it
reads, credentials redacted, in two headers on every response (``X-Crx-Database``,
``X-Crx-Store``), at ``/api/registry`` and on every page. With several uvicorn workers each
process builds its own app from `from_environment` (uvicorn's factory), which opens the
registry ``crx serve`` was given, passed as ``CRX_DATABASE_URL`` / ``CRX_STORE_URL`` in the
workers' environment, exactly as every command resolves them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING
from urllib.parse import quote

from fastapi import FastAPI

from crx.cli.web import DEFAULT_THREADS, THREADS_VARIABLE, api, errors, pages, writes

if TYPE_CHECKING:
    from crx.registry import Registry

DESCRIPTION = """The JSON API of a crx registry: the records `crx ... --json` prints.

Reads need nothing. The four writes (`POST /api/approvals`, `/api/rejections`, `/api/aliases`,
`/api/promotions`) need `Authorization: Bearer TOKEN`, a token the registry's owner made with
`crx token create --user NAME`; they run as that user under the CLI's policies. With no token
in the registry the server is read-only (403); a missing or bad token is a 401.

Lists are keyset-paged: `{"items": [...], "next_after": ID or null}`; pass `after=ID` for the
next page. Errors are `{"error": {"type": ..., "message": ...}}` with a 400, 401, 403, 404, 405,
409 or 503 status. Every response names the registry in `X-Crx-Database` / `X-Crx-Store`.
"""


def _header(value: str) -> bytes:
    # Header values are latin-1; a path with other characters is sent percent-encoded.
    return quote(value, safe=":/@*?&=+,;~!$'()[]%").encode("latin-1")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("crx")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0"


def create_app(registry: Registry, threads: int = DEFAULT_THREADS) -> FastAPI:
    """The app serving ``registry`` (closed when the app shuts down), running at most
    ``threads`` requests at once."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        from anyio.to_thread import current_default_thread_limiter

        current_default_thread_limiter().total_tokens = threads
        yield
        registry.close()

    app = FastAPI(
        title="crx",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.registry = registry
    app.include_router(api.router)
    app.include_router(writes.router)
    app.include_router(pages.router)
    errors.install(app, html=pages.error_page)
    app.add_middleware(
        errors.ReadOnlyGuard,
        headers=[
            (b"x-crx-database", _header(registry.db.display_url)),
            (b"x-crx-store", _header(registry.store.display_url)),
        ],
        writable=writes.WRITE_PATHS + pages.ACTION_PATHS,
    )
    return app


def from_environment() -> FastAPI:
    """uvicorn's factory for worker processes: the registry of ``CRX_DATABASE_URL`` /
    ``CRX_STORE_URL`` (else the embedded default) and the threads of ``CRX_SERVE_THREADS``,
    as `crx serve` set them."""
    import os

    from crx.registry import Registry

    return create_app(Registry(), int(os.environ.get(THREADS_VARIABLE, DEFAULT_THREADS)))
