"""``crx serve``'s web skin: the HTML catalogue and the JSON API over the `Registry` facade.

Like the CLI it calls only the facade, its errors and the schemas: `app.create_app` builds the
application for one registry, `api` holds the read routes, `writes` the token-guarded writes,
`pages` the HTML catalogue (with `plots`), `errors` turns every error into JSON under ``/api``
and an HTML page elsewhere. This module holds only the settings `crx serve` passes to the app,
so the CLI can name them without importing FastAPI.
"""

# Requests one worker process runs at once (its thread pool). The facade is synchronous and,
# on SQLite, mostly CPU under the GIL: with AnyIO's default of 40 threads they fight for the
# GIL and every request in flight gets slower (2 cores, 50 clients without pauses: 34
# requests/s at 40 threads, 82 at 1); a few threads still overlap PostgreSQL's network waits.
DEFAULT_THREADS = 4
# How `crx serve --workers N` tells its worker processes the thread count.
THREADS_VARIABLE = "CRX_SERVE_THREADS"
