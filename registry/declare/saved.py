"""Saved diffs: ``crx diff -o FILE.json`` and the checks ``crx apply FILE.json`` makes first.

A saved diff (`SavedDiff`) records the registry's last audit event and the sha256 of every spec
file; applying it is refused when either moved, so what is applied is exactly what was read.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crx.registry.declare.reconcile import file_sha256
from crx.registry.errors import InvalidInput, first_error
from crx.registry.outputs import write_text
from crx.schemas.declare import Change, SavedDiff, SpecFileDigest

# The ``kind`` of a spec document (`crx.registry.declare.specfile`): a .json file of that kind
# is a spec file, not a saved diff.
SPEC_KINDS = ("policy",)

if TYPE_CHECKING:
    from crx.registry.catalog.service import Catalog
    from crx.registry.declare.specfile import LoadedSpecs


def make_saved_diff(
    catalog: Catalog, loaded: LoadedSpecs, changes: list[Change], prune: bool, *, source: str
) -> SavedDiff:
    return SavedDiff(
        source=str(Path(source).resolve()),
        created_at=datetime.now(UTC),
        registry=catalog.db.display_url,
        last_audit_event=last_audit_event(catalog),
        spec_files=[
            SpecFileDigest(path=str(f.resolve()), sha256=file_sha256(f)) for f in loaded.files
        ],
        prune=prune,
        changes=changes,
    )


def save_diff(
    catalog: Catalog, path: str | Path, out: str | Path, *, prune: bool = False, force: bool = False
) -> list[Change]:
    """Diff the specs at ``path`` and save the diff to ``out`` (``crx diff -o``); an existing
    ``out`` is replaced only with ``force``."""
    from crx.registry.declare import load_specs
    from crx.registry.declare.reconcile import diff

    loaded = load_specs(path)
    changes = diff(catalog, loaded).changes
    saved = make_saved_diff(catalog, loaded, changes, prune, source=str(path))
    write_text(out, saved.model_dump_json(indent=2) + "\n", force=force)
    return changes


def read_saved_diff(path: str | Path) -> SavedDiff | None:
    """The saved diff in ``path``, or None when ``path`` is not one (a spec file or folder)."""
    file = Path(path)
    if not file.is_file() or file.suffix != ".json":
        return None
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError included
        raise InvalidInput(f"cannot read {file}: {exc}") from None
    except RecursionError:
        raise InvalidInput(f"cannot read {file}: the JSON is nested too deeply") from None
    if isinstance(raw, dict) and raw.get("kind") in SPEC_KINDS:
        return None  # a spec document written as JSON
    if not isinstance(raw, dict) or raw.get("kind") != "crx.apply-plan":
        raise InvalidInput(f"{file} is not a saved diff (made by `crx diff -o FILE.json`)")
    try:
        return SavedDiff.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"{file} is not a valid saved diff: {first_error(exc)}") from None


def last_audit_event(catalog: Catalog, session: Session | None = None) -> int:
    from crx.registry.db.tables import SqlAuditEvent

    if session is not None:
        return int(session.scalar(select(func.max(SqlAuditEvent.id))) or 0)
    with catalog.db.read() as read:
        return int(read.scalar(select(func.max(SqlAuditEvent.id))) or 0)


def check_fresh(catalog: Catalog, saved: SavedDiff) -> None:
    """Refuse a saved diff when the registry or a spec file moved since it was made."""
    now_at = last_audit_event(catalog)
    if now_at != saved.last_audit_event:
        raise InvalidInput(
            f"the registry changed since this diff was made (audit event {saved.last_audit_event}"
            f" then, {now_at} now): run `crx diff -o` again"
        )
    for spec_file in saved.spec_files:
        path = Path(spec_file.path)
        if not path.is_file() or file_sha256(path) != spec_file.sha256:
            raise InvalidInput(
                f"spec file {path} changed since this diff was made: run `crx diff -o` again"
            )
