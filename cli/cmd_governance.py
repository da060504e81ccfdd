"""``crx alias``, ``crx approve|reject``, ``crx approvals``, ``crx promote``, ``crx deprecate``
and ``crx deprecations``: the governance of a shared catalogue, over the facade."""

from __future__ import annotations

from datetime import datetime

import click

from crx.cli.context import When, after_option, json_option, limit_option, registry
from crx.cli.render import emit_json, emit_table, next_page_hint, shown_actor
from crx.schemas.governance import (
    PROTECTED_ALIAS,
    AliasHistoryRecord,
    AliasRecord,
    ApprovalRecord,
    PromotionReport,
)

model_option = click.option(
    "--model", "model", required=True, metavar="NAME", help="The target model the vector is on."
)
vector_option = click.option(
    "--vector",
    "vector_id",
    type=int,
    default=None,
    metavar="ID",
    help="Which vector of the version on the model (when it has several).",
)
reason_option = click.option("--reason", default=None, metavar="TEXT", help="Why (recorded).")
expect_option = click.option(
    "--expect",
    default=None,
    metavar="VECTOR_ID|none",
    help="Refuse unless the alias points at this vector now ('none': is not set yet).",
)


def _when(value: datetime) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC"


def _alias_line(record: AliasRecord) -> str:
    lock = " [protected]" if record.protected else ""
    return (
        f"{record.ref} on {record.model} -> vector {record.vector_id} "
        f"({record.concept_version_ref}), revision {record.revision}{lock}"
    )


# -- aliases --------------------------------------------------------------------------------


@click.group()
def alias() -> None:
    """Aliases per (concept, target model): set, show, list, history, delete.

    An alias names the vector that realises a concept on one target model (native or
    transplanted). `CONCEPT@ALIAS` works wherever a concept reference is accepted. `prod` (and
    any alias a policy governs) is protected: it moves only with `crx promote`.

    \b
    Example:
      crx alias set honesty@3 staging --model gemma3-270m
      crx alias history honesty --model gemma3-270m
    """


@alias.command("set")
@click.argument("ref")
@click.argument("name")
@model_option
@vector_option
@expect_option
@click.option(
    "--expect-revision", type=int, default=None, metavar="N", help="Refuse unless at revision N."
)
@reason_option
@json_option
def alias_set(
    ref: str,
    name: str,
    model: str,
    vector_id: int | None,
    expect: str | None,
    expect_revision: int | None,
    reason: str | None,
    as_json: bool,
) -> None:
    """Point alias NAME of REF's concept on a model at REF's vector there.

    A move is compare-and-swap: one based on a stale read is refused with the alias's current
    value, never silently overwritten. Scripts pass --expect (the vector they read) or
    --expect-revision.

    \b
    Example:
      crx alias set honesty@3 staging --model gemma3-270m
      crx alias set honesty@4 staging --model gemma3-270m --expect 12 --reason "new pairs"
    """
    record = registry().set_alias(
        ref,
        model,
        name,
        vector_id=vector_id,
        expect=expect,
        expect_revision=expect_revision,
        reason=reason,
    )
    if as_json:
        emit_json(record)
    else:
        click.echo(_alias_line(record))


@alias.command("show")
@click.argument("ref", metavar="CONCEPT@ALIAS")
@click.option("--model", default=None, metavar="NAME", help="The target model (if several).")
@json_option
def alias_show(ref: str, model: str | None, as_json: bool) -> None:
    """Show where an alias points, and who moved it there last.

    \b
    Example:
      crx alias show honesty@prod --model gemma3-270m
    """
    record = registry().get_alias(ref, model)
    if as_json:
        emit_json(record)
        return
    click.echo(_alias_line(record))
    moved = f"{record.action} by {shown_actor(record.actor, record.label)}"
    click.echo(f"  {moved} at {_when(record.updated_at)}" + _reason(record.reason))
    click.echo(f"  oid {record.vector_oid}")


def _reason(reason: str | None) -> str:
    return f": {reason}" if reason else ""


@alias.command("list")
@click.option("--model", default=None, metavar="NAME", help="Only aliases on this model.")
@click.option("--concept", default=None, metavar="NAME", help="Only this concept's aliases.")
@json_option
def alias_list(model: str | None, concept: str | None, as_json: bool) -> None:
    """List aliases, with the vector each points at.

    \b
    Example:
      crx alias list --model gemma3-270m
    """
    records = registry().list_aliases(model=model, concept=concept)
    if as_json:
        emit_json(records)
        return
    emit_table(
        ["alias", "model", "vector", "version", "rev", "protected", "moved by", "at"],
        [
            (
                r.ref,
                r.model,
                r.vector_id,
                r.concept_version_ref,
                r.revision,
                "yes" if r.protected else "",
                shown_actor(r.actor, r.label),
                _when(r.updated_at),
            )
            for r in records
        ],
        "no aliases",
    )


@alias.command("history")
@click.argument("concept")
@model_option
@click.option("--alias", "name", default=None, metavar="NAME", help="Only this alias.")
@click.option(
    "--at",
    type=When(end_of_day=True),
    default=None,
    help="Only the change in force then (a bare date means the end of that day, UTC).",
)
@limit_option
@after_option
@json_option
def alias_history(
    concept: str,
    model: str,
    name: str | None,
    at: datetime | None,
    limit: int,
    after: int | None,
    as_json: bool,
) -> None:
    """The append-only history of a concept's aliases on a model: who moved what, when, why.

    With --at, what each alias pointed at on that date and who had moved it there.

    \b
    Example:
      crx alias history honesty --model gemma3-270m
      crx alias history honesty --model gemma3-270m --alias prod --at 2026-11-20
    """
    rows = registry().alias_history(concept, model, name, at=at, limit=limit, after=after)
    if as_json:
        emit_json(rows)
        return
    more = rows[-1].id if limit and len(rows) == limit else None
    empty = "no alias in force then" if at is not None else "no alias changes"
    emit_table(
        ["at", "alias", "rev", "action", "from", "to", "by", "reason"],
        [_history_row(r) for r in rows],
        empty,
    )
    next_page_hint(more)


def _history_row(r: AliasHistoryRecord) -> tuple[object, ...]:
    def vector(vector_id: int | None, version: int | None) -> str:
        return "-" if vector_id is None else f"{vector_id} (v{version})"

    return (
        _when(r.at),
        f"{r.concept}@{r.name}",
        r.revision,
        r.action,
        vector(r.old_vector_id, r.old_concept_version),
        vector(r.new_vector_id, r.new_concept_version),
        shown_actor(r.actor, r.label),
        r.reason or "",
    )


@alias.command("delete")
@click.argument("ref", metavar="CONCEPT@ALIAS")
@model_option
@expect_option
@reason_option
@click.option("--force", is_flag=True, help="Delete a protected alias (the owner's role).")
@json_option
def alias_delete(
    ref: str, model: str, expect: str | None, reason: str | None, force: bool, as_json: bool
) -> None:
    """Delete an alias (its history stays).

    \b
    Example:
      crx alias delete honesty@staging --model gemma3-270m --reason "superseded"
    """
    concept, _, name = ref.partition("@")
    if not name:
        raise click.BadParameter("expected CONCEPT@ALIAS", param_hint="REF")
    record = registry().delete_alias(
        concept, model, name, expect=expect, reason=reason, force=force
    )
    if as_json:
        emit_json(record)
    else:
        click.echo(f"deleted {record.ref} on {record.model} (was vector {record.vector_id})")


# -- approvals and promotion ----------------------------------------------------------------

alias_target_option = click.option(
    "--alias",
    "alias_name",
    default=PROTECTED_ALIAS,
    show_default=True,
    metavar="NAME",
    help="The protected alias the decision is for.",
)


def _approval_line(record: ApprovalRecord) -> str:
    verb = "approved" if record.decision == "approve" else "rejected"
    return (
        f"{verb} vector {record.vector_id} ({record.concept}@{record.concept_version} on "
        f"{record.model}, oid {record.vector_oid[:12]}) for {record.alias} as "
        f"{shown_actor(record.actor, record.label)}"
    )


@click.command()
@click.argument("ref")
@model_option
@alias_target_option
@vector_option
@reason_option
@json_option
def approve(
    ref: str,
    model: str,
    alias_name: str,
    vector_id: int | None,
    reason: str | None,
    as_json: bool,
) -> None:
    """Approve REF's vector on a model for promotion to a protected alias.

    An approval is for the vector's exact content (its oid): re-extracting or re-mapping needs
    a new one. On PostgreSQL only the approver role may approve, and the database records who.

    \b
    Example:
      crx approve honesty@3 --model gemma3-270m --reason "MC1 holds, reviewed samples"
    """
    record = registry().approve(ref, model, alias=alias_name, vector_id=vector_id, reason=reason)
    if as_json:
        emit_json(record)
    else:
        click.echo(_approval_line(record))


@click.command()
@click.argument("ref")
@model_option
@alias_target_option
@vector_option
@click.option("--reason", required=True, metavar="TEXT", help="Why (recorded).")
@json_option
def reject(
    ref: str, model: str, alias_name: str, vector_id: int | None, reason: str, as_json: bool
) -> None:
    """Reject REF's vector for a protected alias: no promotion while the rejection stands
    (until the same approver approves it).

    \b
    Example:
      crx reject honesty@3 --model gemma3-270m --reason "steers off-topic at alpha 8"
    """
    record = registry().reject(ref, model, alias=alias_name, vector_id=vector_id, reason=reason)
    if as_json:
        emit_json(record)
    else:
        click.echo(_approval_line(record))


@click.group()
def approvals() -> None:
    """Approvals and rejections recorded for promotions.

    \b
    Example:
      crx approvals list --model gemma3-270m
    """


@approvals.command("list")
@click.option("--model", default=None, metavar="NAME", help="Only on this model.")
@click.option("--concept", default=None, metavar="NAME", help="Only this concept's.")
@click.option(
    "--vector", "vector_id", type=int, default=None, metavar="ID", help="Only this vector's."
)
@json_option
def approvals_list(
    model: str | None, concept: str | None, vector_id: int | None, as_json: bool
) -> None:
    """List approvals and rejections, oldest first.

    `current` says whether the vector still has the content that was approved.

    \b
    Example:
      crx approvals list --model gemma3-270m
    """
    records = registry().list_approvals(model=model, concept=concept, vector_id=vector_id)
    if as_json:
        emit_json(records)
        return
    emit_table(
        ["id", "decision", "vector", "concept", "model", "alias", "current", "by", "at", "reason"],
        [
            (
                r.id,
                r.decision,
                r.vector_id,
                f"{r.concept}@{r.concept_version}",
                r.model,
                r.alias,
                "yes" if r.current else "no (content changed)",
                shown_actor(r.actor, r.label),
                _when(r.at),
                r.reason or "",
            )
            for r in records
        ],
        "no approvals",
    )


def _print_checks(report: PromotionReport) -> None:
    policy = report.policy or "crx's default (one approval)"
    click.echo(
        f"{report.concept_version} (vector {report.vector_id}) on {report.model} -> "
        f"{report.alias}, policy {policy}:"
    )
    for check in report.checks:
        click.echo(f"  {'ok  ' if check.passed else 'FAIL'} {check.detail}")


@click.command()
@click.argument("ref")
@model_option
@click.option(
    "--to",
    "to",
    default=PROTECTED_ALIAS,
    show_default=True,
    metavar="ALIAS",
    help="The protected alias to move.",
)
@vector_option
@reason_option
@expect_option
@click.option("--check", "check_only", is_flag=True, help="Only report the checks; move nothing.")
@json_option
def promote(
    ref: str,
    model: str,
    to: str,
    vector_id: int | None,
    reason: str | None,
    expect: str | None,
    check_only: bool,
    as_json: bool,
) -> None:
    """Promote REF's vector on a model to a protected alias, if the policy allows.

    The governing policy's checks: not deprecated, the evidence it asks for (recorded
    evaluations on the target), no standing rejection, and enough approvals of that exact
    vector by others than whoever promotes. A failing check refuses the promotion with every
    failing check listed, and nothing changes.

    \b
    Example:
      crx promote honesty@3 --model gemma3-270m --check
      crx promote honesty@3 --model gemma3-270m --to prod --reason "passes prod-gate"
    """
    report = registry().promote(
        ref,
        model,
        to=to,
        vector_id=vector_id,
        reason=reason,
        expect=expect,
        check_only=check_only,
    )
    if as_json:
        emit_json(report)
        return
    _print_checks(report)
    if report.alias_record is not None:
        click.echo(f"promoted: {_alias_line(report.alias_record)}")


# -- deprecation ----------------------------------------------------------------------------


@click.command()
@click.argument("ref")
@click.option("--model", default=None, metavar="NAME", help="Deprecate REF's vector on it.")
@click.option("--reason", required=True, metavar="TEXT", help="Why (recorded).")
@json_option
def deprecate(ref: str, model: str | None, reason: str, as_json: bool) -> None:
    """Take an object out of use: it stays readable, is never planned, aliased or promoted.

    REF: NAME@V (a concept version; with --model, its vector on that model), vector:ID,
    map:ID or model:NAME.

    \b
    Example:
      crx deprecate honesty@2 --reason "pairs leaked test prompts"
      crx deprecate honesty@3 --model gemma3-270m --reason "map refitted"
      crx deprecate map:17 --reason "fit on the wrong corpus"
    """
    record = registry().deprecate(ref, model=model, reason=reason)
    if as_json:
        emit_json(record)
    else:
        click.echo(f"deprecated {record.object_ref}: {record.reason}")


@click.group()
def deprecations() -> None:
    """Deprecated objects.

    \b
    Example:
      crx deprecations list
    """


@deprecations.command("list")
@json_option
def deprecations_list(as_json: bool) -> None:
    """List deprecated objects, with who deprecated them and why.

    \b
    Example:
      crx deprecations list
    """
    records = registry().list_deprecations()
    if as_json:
        emit_json(records)
        return
    emit_table(
        ["id", "object", "by", "at", "reason"],
        [
            (r.id, r.object_ref, shown_actor(r.actor, r.label), _when(r.at), r.reason)
            for r in records
        ],
        "nothing deprecated",
    )
