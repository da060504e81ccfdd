"""``crx init`` and ``crx db upgrade|current``."""

from __future__ import annotations

import sys

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
    """Database schema (upgrade it, or show its revision), and PostgreSQL roles and users.

    \b
    Example:
      crx db current
      crx db upgrade
    """


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


@db.command()
@json_option
def roles(as_json: bool) -> None:
    """Create the team's PostgreSQL roles and grant their privileges (idempotent).

    crx_reader reads; crx_writer also registers, extracts, fits, transplants, evaluates,
    deprecates and moves unprotected aliases; crx_approver also approves; crx_owner also
    changes policies, prunes and collects garbage. Run it as the role that owns the tables
    (the one that ran `crx init`), again after `crx db upgrade`.

    \b
    Example:
      crx --db postgresql://crx_admin@db/crx db roles
    """
    report = registry().ensure_roles()
    if as_json:
        emit_json(report)
        return
    created = ", ".join(report.created) or "none (all existed)"
    click.echo(f"roles {', '.join(report.roles)}: created {created}; privileges granted")


def _password(from_stdin: bool) -> str | None:
    """The first line of standard input, with ``--password-stdin`` (else no password)."""
    return sys.stdin.readline().rstrip("\r\n") if from_stdin else None


@db.command()
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["reader", "writer", "approver", "owner"]),
    required=True,
    help="The group the user joins (replacing any other crx group).",
)
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the user's password from the first line of standard input (never echoed).",
)
@json_option
def user(name: str, role: str, password_stdin: bool, as_json: bool) -> None:
    """Create a PostgreSQL login role NAME (or update it) as a member of a crx group.

    The password is sent as a SCRAM-SHA-256 verifier computed locally: the cleartext never
    reaches the server or its logs, and crx never prints it.

    \b
    Example:
      printf '%s\\n' "$WRITER1_PASSWORD" | crx db user writer1 --role writer --password-stdin
    """
    report = registry().add_user(name, role, _password(password_stdin))
    if as_json:
        emit_json(report)
        return
    state = "created" if report.created else "updated"
    click.echo(f"user {name}: {state}, member of {report.roles[0]}")


@db.command()
@click.argument("name")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the gateway's password from the first line of standard input (never echoed).",
)
@json_option
def gateway(name: str, password_stdin: bool, as_json: bool) -> None:
    """Create a PostgreSQL gateway login NAME (or update it) for `crx serve`'s writes.

    A gateway has no privileges of its own (NOINHERIT, in the group crx_gateway): a server
    connected as it runs each request as the API token's user (SET LOCAL ROLE), so the
    database checks that person's privileges and records that person. It may act as
    crx_reader and as every person of the crx groups; `crx db user` adds each new person.

    \b
    Example:
      printf '%s\\n' "$GATEWAY_PASSWORD" | crx db gateway crx_web --password-stdin
      crx --db postgresql://crx_web@db/crx serve --host 0.0.0.0
    """
    report = registry().add_gateway(name, _password(password_stdin))
    if as_json:
        emit_json(report)
        return
    state = "created" if name in report.created else "updated"
    people = len([g for g in report.granted if g.startswith(f"{name}: may act as ")]) - 1
    click.echo(
        f"gateway {name}: {state}, member of {report.roles[0]}; "
        f"may act as crx_reader and {people} person(s)"
    )
