"""``crx store verify|gc``."""

from __future__ import annotations

import click

from crx.cli.context import json_option, registry
from crx.cli.render import emit_json


@click.group()
def store() -> None:
    """Check and clean the tensor store.

    \b
    Example:
      crx store verify
      crx store gc --yes
    """


@store.command()
@json_option
def verify(as_json: bool) -> None:
    """Re-hash every blob the registry references; exit 1 if any is missing or corrupt.

    \b
    Example:
      crx store verify
    """
    report = registry().verify_store()
    if as_json:
        emit_json(report)
    else:
        click.echo(
            f"store {report.store}: {report.ok}/{report.checked} referenced blobs ok, "
            f"{report.unreferenced} unreferenced"
        )
        for problem in report.problems:
            click.echo(f"{problem.status} {problem.oid} <- {'; '.join(problem.referenced_by)}")
    if report.problems:
        if not as_json:
            click.echo(f"Error: {len(report.problems)} blob(s) missing or corrupt", err=True)
        raise SystemExit(1)


@store.command()
@click.option("--dry-run/--yes", "dry_run", default=True, help="List only (default), or delete.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=600,
    show_default=True,
    help="Keep blobs younger than this many seconds (a register may be in flight).",
)
@json_option
def gc(dry_run: bool, grace: float, as_json: bool) -> None:
    """List (default) or delete blobs that no registry row references.

    \b
    Example:
      crx store gc            # list what would go
      crx store gc --yes      # delete it
    """
    report = registry().gc_store(dry_run=dry_run, grace_seconds=grace)
    if as_json:
        emit_json(report)
        return
    if not report.unreferenced and not report.stale_temporary_files:
        click.echo(f"nothing to delete (no unreferenced blob older than {grace:g} s)")
        return
    for oid in report.unreferenced:
        click.echo(oid)
    verb = "deleted" if report.deleted else "would delete (run with --yes)"
    if report.unreferenced:
        click.echo(f"{len(report.unreferenced)} unreferenced blob(s): {verb}")
    if report.stale_temporary_files:
        click.echo(
            f"{report.stale_temporary_files} stale temporary file(s) of killed writers: {verb}"
        )
