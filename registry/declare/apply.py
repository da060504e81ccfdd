"""``crx apply``: make the registry match the specs, computing first and writing once.

Apply runs in two phases:

1. **Compute** what the diff says is missing (`crx.registry.declare.compute`), in dependency
   order, through the same workflow functions as the single commands, putting every blob in
   the content-addressed store. Nothing is written to the database yet.
2. **Write** every row (`crx.registry.declare.write`) in **one transaction** with its audit
   events.

A kill during compute leaves the registry as it was (at worst unreferenced blobs, which ``gc``
collects); a kill during the write rolls the transaction back. Re-running finishes the job.
A second apply of unchanged specs finds nothing to do and writes nothing. A saved diff
(`crx.registry.declare.saved`) is applied only if the registry's last audit event and every
spec file's sha256 are what they were when it was made.

Policies are the registry owner's (on PostgreSQL, only ``crx_owner`` may write them): an apply
that would create, change or prune one is refused before any compute when the connection is
not the owner's; the database would refuse the write anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from crx.registry.declare.compute import Work, compute_all
from crx.registry.declare.reconcile import diff
from crx.registry.declare.saved import check_fresh, last_audit_event, read_saved_diff
from crx.registry.declare.write import write_all
from crx.registry.errors import InvalidInput, NotPermitted
from crx.registry.progress import Stage
from crx.schemas.declare import ApplyReport, Change, FieldChange, SavedDiff

if TYPE_CHECKING:
    from crx.registry.catalog.service import Catalog
    from crx.registry.declare.specfile import LoadedSpecs
    from crx.registry.workflows.workspace import Workspace


def apply(
    ws: Workspace,
    loaded: LoadedSpecs,
    *,
    prune: bool = False,
    expect: SavedDiff | None = None,
    stage: Stage | None = None,
) -> ApplyReport:
    """Compute what the specs need, then write every row in one transaction."""
    catalog = ws.catalog
    if expect is not None:
        check_fresh(catalog, expect)
        prune = expect.prune
    desired = diff(catalog, loaded)
    changes = desired.changes
    if expect is not None and {str(f.resolve()) for f in loaded.files} != {
        f.path for f in expect.spec_files
    }:
        raise InvalidInput("the spec files are not the ones diffed: run `crx diff -o` again")
    if expect is not None and _signature(changes) != _signature(expect.changes):
        raise InvalidInput("the diff is no longer what was saved: run `crx diff -o` again")
    todo = [
        c
        for c in changes
        if c.action in ("create", "update") or c.compute or (prune and c.action == "remove")
    ]
    _require_owner(catalog, [c for c in todo if c.kind == "policy"])
    if not todo:
        return ApplyReport(
            changes=changes, applied=False, last_audit_event=last_audit_event(catalog)
        )
    work = Work(ws, desired, stage or (lambda _: None))
    compute_all(work, loaded.catalog)
    expected = expect.last_audit_event if expect is not None else None
    rows = catalog.db.write(lambda s: write_all(s, work, prune, expected))
    return ApplyReport(
        changes=changes,
        applied=True,
        rows_written=rows,
        last_audit_event=last_audit_event(catalog),
    )


def _signature(changes: list[Change]) -> list[tuple[str, str, list[FieldChange] | None]]:
    """What a saved diff must still say: each object's action and, for a policy (no compute
    stands behind it), the very field changes."""
    return [(c.key, c.action, c.changes if c.kind == "policy" else None) for c in changes]


def _require_owner(catalog: Catalog, changes: list[Change]) -> None:
    if not changes:
        return
    from crx.registry.audit import acting_as
    from crx.registry.db.session import session_is_owner

    with catalog.db.read() as session:
        if session_is_owner(session):
            return
        actor = acting_as(session)
    what = ", ".join(f"{c.action} {c.key}" for c in changes)
    raise NotPermitted(
        actor, f"change policies ({what})", "policies are the registry owner's work (crx_owner)"
    )


def apply_path(
    ws: Workspace, path: str | Path, *, prune: bool = False, stage: Stage | None = None
) -> ApplyReport:
    """``crx apply PATH``: PATH is a spec file, a folder of them, or a saved diff (applied only
    if nothing moved since it was made; it carries its own ``prune``)."""
    from crx.registry.declare.specfile import load_specs

    saved = read_saved_diff(path)
    if saved is None:
        return apply(ws, load_specs(path), prune=prune, stage=stage)
    if prune:
        raise InvalidInput("a saved diff carries its own --prune choice (set at `crx diff`)")
    return apply(ws, load_specs(saved.source), expect=saved, stage=stage)
