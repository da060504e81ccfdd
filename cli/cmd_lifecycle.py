"""``crx init`` and ``crx db upgrade|current``."""

from __future__ import annotations

import click

from crx.cli.context import json_option, registry
from crx.cli.render import emit_json


@click.command()
@json_option
def init(as_json: bool) -> None:
    """Create or upgrade the database to the newest schema, and create the store.

    Idempotent: running it again changes nothing.

    \b
    Example:
      crx init
      crx --db postgresql://crx@db/crx --store s3://team-bucket/crx init
    """
    report = registry().init()
    if as_json:
        emit_json(report)
        return
    state = (
        "created"
        if report.revision_before is None
        else ("upgraded" if report.revision_before != report.revision else "up to date")
    )
    click.echo(f"database {report.database}: {state} (schema {report.revision})")
    click.echo(f"store    {report.store}: ready")


@click.group()
def db() -> None:
    """Database schema: upgrade it, or show its revision."""


@db.command()
@json_option
def upgrade(as_json: bool) -> None:
    """Upgrade the database schema to the newest revision (back it up first).

    \b
    Example:
      cp ~/.crx/registry.db ~/.crx/registry.db.bak && crx db upgrade
    """
    report = registry().upgrade()
    if as_json:
        emit_json(report)
    else:
        click.echo(
            f"database {report.database}: {report.revision_before or 'empty'} -> {report.revision}"
        )


@db.command()
@json_option
def current(as_json: bool) -> None:
    """Show the database's schema revision and the one this crx expects.

    \b
    Example:
      crx db current
    """
    status = registry().schema_status()
    if as_json:
        emit_json(status)
        return
    note = "up to date" if status.up_to_date else "run `crx db upgrade`"
    if status.current is None:
        note = "not initialised: run `crx init`"
    click.echo(f"current {status.current or '-'}  head {status.head}  ({note})")
