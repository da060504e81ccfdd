"""``crx token create|list|revoke``: the per-user API tokens that let ``crx serve`` take writes."""

from __future__ import annotations

from datetime import datetime

import click

from crx.cli.context import json_option, registry
from crx.cli.render import emit_json, emit_table


def _when(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S} UTC"


@click.group()
def token() -> None:
    """API tokens for `crx serve`'s writes: create (the owner), list, revoke.

    A token lets its user approve, reject, move aliases and promote over HTTP
    (`Authorization: Bearer TOKEN`), under the same policies as the CLI, recorded in the audit
    log as that user. Only its hash is stored: the token is shown once, when created. With no
    live token the server is read-only.

    \b
    Example:
      crx token create --user approver1
      crx token list
      crx token revoke 1
    """


@token.command("create")
@click.option("--user", required=True, metavar="NAME", help="Whose token (recorded as actor).")
@json_option
def create(user: str, as_json: bool) -> None:
    """Create an API token for a user and print it, once (only its hash is kept).

    Only the registry's owner may (on PostgreSQL: a member of crx_owner). Hand the token to
    its user over a private channel; it cannot be shown again (revoke it and create another).

    \b
    Example:
      crx token create --user approver1
      crx token create --user approver1 --json
    """
    created = registry().create_token(user)
    if as_json:
        emit_json(created)
        return
    click.echo(created.secret)
    click.echo(
        f"token {created.token.id} for {created.token.user}: shown once, only its hash is kept "
        "(use it as `Authorization: Bearer TOKEN`)",
        err=True,
    )


@token.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List the API tokens: id, user, who created it and when, last use, revoked (never the
    token itself).

    \b
    Example:
      crx token list
      crx token list --json
    """
    records = registry().list_tokens()
    if as_json:
        emit_json(records)
        return
    emit_table(
        ("id", "user", "created", "by", "last used", "revoked"),
        [
            (
                r.id,
                r.user,
                _when(r.created_at),
                r.created_by,
                _when(r.last_used_at),
                _when(r.revoked_at),
            )
            for r in records
        ],
        "no API tokens (crx serve is read-only; create one with `crx token create --user NAME`)",
    )


@token.command("revoke")
@click.argument("token_id", metavar="ID", type=int)
@json_option
def revoke(token_id: int, as_json: bool) -> None:
    """Revoke API token ID: the server refuses it from the next request on (its row stays).

    \b
    Example:
      crx token revoke 3
    """
    record = registry().revoke_token(token_id)
    if as_json:
        emit_json(record)
    else:
        click.echo(f"revoked token {record.id} of {record.user}")
