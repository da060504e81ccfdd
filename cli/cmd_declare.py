"""``crx diff`` and ``crx apply``: reconcile the registry with spec files."""

from __future__ import annotations

import click

from crx.cli.context import json_option, registry
from crx.cli.progress import Reporter, quiet_option
from crx.cli.render import emit_json
from crx.schemas.declare import Change

SYMBOL = {"create": "+", "update": "~", "unchanged": "=", "remove": "-"}


def _render(changes: list[Change], *, show_unchanged: bool) -> None:
    shown = [c for c in changes if show_unchanged or c.action != "unchanged"]
    for c in shown:
        note = f"  ({c.note})" if c.note else ""
        click.echo(f"{SYMBOL[c.action]} {c.action:<9} {c.key}{note}")
        for f in c.changes:
            click.echo(f"      {f.field}: {f.old!r} -> {f.new!r}")
        for work in c.compute:
            click.echo(f"      compute: {work}")
    counts = {a: sum(1 for c in changes if c.action == a) for a in SYMBOL}
    compute = sum(len(c.compute) for c in changes)
    click.echo(
        f"{counts['create']} to create, {counts['update']} to update, {counts['unchanged']} "
        f"unchanged, {counts['remove']} not in the specs; {compute} compute steps"
    )


@click.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Save the diff (JSON).")
@click.option("--prune", is_flag=True, help="Record that the saved diff deletes removals too.")
@click.option("--all", "show_all", is_flag=True, help="List unchanged objects too.")
@click.option("--force", is_flag=True, help="Replace the -o file if it exists.")
@json_option
def diff(
    path: str, output: str | None, prune: bool, show_all: bool, force: bool, as_json: bool
) -> None:
    """Show what `crx apply PATH` would do: per object, create / update / unchanged / remove.

    PATH is a spec file or a folder of them (*.yaml, *.yml). Nothing is written.

    \b
    Example:
      crx diff specs/
      crx diff specs/ -o diff.json && crx apply diff.json
    """
    reg = registry()
    changes = reg.save_diff(path, output, prune=prune, force=force) if output else reg.diff(path)
    if as_json:
        emit_json({"changes": changes})
        return
    _render(changes, show_unchanged=show_all)
    if output:
        click.echo(f"diff saved to {output}; `crx apply {output}` applies exactly this")


@click.command()
@click.argument("path", type=click.Path(exists=True))
@click.option(
    "--prune",
    is_flag=True,
    help="Delete models, concepts and policies the specs no longer declare.",
)
@quiet_option
@json_option
def apply(path: str, prune: bool, quiet: bool, as_json: bool) -> None:
    """Make the registry match the spec files: compute what is missing, write in one transaction.

    PATH is a spec file, a folder of them, or a diff saved by `crx diff -o` (refused if the
    registry or a spec file changed since). A second apply of unchanged specs does nothing.

    \b
    Example:
      crx apply specs/
      crx apply specs/ --prune
      crx apply diff.json
    """
    reporter = Reporter(quiet=quiet)
    report = registry().apply(path, prune=prune, stage=lambda name: reporter(name, None, None))
    reporter.finish()
    if as_json:
        emit_json(report)
        return
    if not report.applied:
        click.echo("nothing to do: the registry matches the specs")
        return
    _render(report.changes, show_unchanged=False)
    click.echo(f"applied: {report.rows_written} rows written in one transaction")
