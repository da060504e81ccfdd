"""``crx serve``: the registry's web catalogue and JSON API over HTTP (uvicorn running
`crx.cli.web`)."""

from __future__ import annotations

import os

import click

from crx.cli.context import State, registry

# Longer than the idle time of common HTTP clients' pools (httpx and requests keep 5 s), so the
# server does not close a connection at the moment a client reuses it (a client's ReadError
# under load; uvicorn's default is 5 s too).
KEEP_ALIVE_S = 30


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on.")  # fmt: skip
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes (each opens its own connections to the registry).",
)
def serve(host: str, port: int, workers: int) -> None:
    """Serve the registry as a web catalogue (pages at /) and a JSON API (/api/..., docs at
    /docs) until interrupted.

    It reads the same registry as every other command (--db / --store, or their environment
    variables, else the embedded default), so `crx demo` then `crx serve` shows the demo's
    results. Every response names the registry (X-Crx-Database, X-Crx-Store), credentials
    redacted. Writes are served only to API tokens (`crx token create`): approvals,
    rejections, alias moves and promotions, as the token's user. On PostgreSQL the server
    must connect as a gateway (`crx db gateway NAME`, then `--db postgresql://NAME@...`), so
    the database checks and records each token's user; as any other role it refuses writes.

    \b
    Example:
      crx serve --port 8000          # then open http://127.0.0.1:8000/
      curl 'http://127.0.0.1:8000/api/models'
      curl 'http://127.0.0.1:8000/api/plan?target=gemma3-270m&concept=happiness'
      crx --db postgresql://crx_web@db/crx serve --host 0.0.0.0
    """
    import uvicorn

    reg = registry()
    # A cheap read before listening: a registry that cannot be read (unreachable, not
    # initialised, an old schema) is one `Error:` line now, not a 503 on every request; on
    # the embedded default it also creates the registry once, before any worker starts.
    reg.list_models(limit=1)
    click.echo(f"crx serve: database {reg.db.display_url}, store {reg.store.display_url}", err=True)
    if workers == 1:
        from crx.cli.web.app import create_app

        uvicorn.run(
            create_app(reg),
            host=host,
            port=port,
            log_level="info",
            timeout_keep_alive=KEEP_ALIVE_S,
        )
        return
    # Workers are new processes: they open the registry from the environment, as given here
    # (an option or the environment; nothing set means the embedded default there too).
    state = click.get_current_context().find_object(State)
    assert state is not None
    for name, value in (
        ("CRX_DATABASE_URL", state.database_url),
        ("CRX_STORE_URL", state.store_url),
    ):
        if value:
            os.environ[name] = value
    reg.close()
    uvicorn.run(
        "crx.cli.web.app:from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        timeout_keep_alive=KEEP_ALIVE_S,
    )
