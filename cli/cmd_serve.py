"""``crx serve``: the registry's web catalogue and JSON API over HTTP (uvicorn running
`crx.cli.web`)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from crx.cli.context import State, registry
from crx.cli.web import DEFAULT_THREADS, THREADS_VARIABLE

if TYPE_CHECKING:
    import socket

    import uvicorn

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
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=DEFAULT_THREADS,
    show_default=True,
    help="Requests each worker runs at once (more only help a slow database's waits).",
)
def serve(host: str, port: int, workers: int, threads: int) -> None:
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
      curl 'http://127.0.0.1:8000/api/plan?target=gemma3-270m&concept=sadness'
      crx --db postgresql://crx_web@db/crx serve --host 0.0.0.0
    """
    import uvicorn

    reg = registry()
    # A cheap read before listening: a registry that cannot be read (unreachable, not
    # initialised, an old schema) is one `Error:` line now, not a 503 on every request; on
    # the embedded default it also creates the registry once, before any worker starts.
    reg.list_models(limit=1)
    click.echo(f"crx serve: database {reg.db.display_url}, store {reg.store.display_url}", err=True)
    from crx.cli.web.app import create_app

    if workers == 1:
        uvicorn.run(
            create_app(reg, threads),
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
        (THREADS_VARIABLE, str(threads)),
    ):
        if value:
            os.environ[name] = value
    reg.close()
    _run_workers(
        uvicorn.Config(
            "crx.cli.web.app:from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="info",
            timeout_keep_alive=KEEP_ALIVE_S,
        )
    )


def _run_workers(config: uvicorn.Config) -> None:
    """What ``uvicorn.run(..., workers=N)`` does, on `listening_socket`'s socket."""
    import inspect

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    sock = listening_socket(config)
    server = uvicorn.Server(config)
    # Multiprocess took the worker's target until uvicorn 0.5x; newer ones make their own.
    if "target" in inspect.signature(Multiprocess).parameters:
        Multiprocess(config, target=server.run, sockets=[sock]).run()  # type: ignore[call-arg]
    else:
        Multiprocess(config, sockets=[sock]).run()


def listening_socket(config: uvicorn.Config) -> socket.socket:
    """The workers' shared socket, bound by uvicorn, with Nagle's algorithm off for every
    connection it accepts.

    uvicorn releases before the fix of its issue #3149 bind it with ``proto=0``; accepted
    connections inherit that and asyncio sets ``TCP_NODELAY`` only on ``IPPROTO_TCP`` sockets,
    so with several workers every keep-alive response waited ~40 ms for the client's delayed
    ACK. The same socket, re-wrapped with its true protocol, gets ``TCP_NODELAY`` again; a
    socket uvicorn already opened as TCP is handed on as it is.
    """
    import socket

    bound = config.bind_socket()
    if bound.family not in (socket.AF_INET, socket.AF_INET6) or bound.proto != 0:
        return bound
    sock = socket.socket(bound.family, bound.type, socket.IPPROTO_TCP, fileno=bound.detach())
    sock.set_inheritable(True)
    return sock
