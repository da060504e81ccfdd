"""``crx serve``'s web skin: a read-only JSON API over the `Registry` facade (FastAPI).

Like the CLI it calls only the facade, its errors and the schemas: `app.create_app` builds the
application for one registry, `api` holds the routes, `errors` turns every error into JSON.
"""
