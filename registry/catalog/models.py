"""Models in the catalogue: register (from config facts), look up, list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from crx.registry.audit import record_event
from crx.registry.catalog.paging import name_contains, page
from crx.registry.db.tables import SqlAffineMap, SqlModel, SqlVector, is_row_id
from crx.registry.errors import InvalidInput, ModelNotFound
from crx.registry.models.facts import ModelFacts
from crx.registry.timeutil import as_utc, now
from crx.schemas.records import FieldUpdate, ModelRecord, Page, Registered

ROLES = ("aligned", "base")
_FACT_FIELDS = (
    "path",
    "gguf_file",
    "architecture",
    "model_type",
    "n_layers",
    "d_model",
    "vocab_size",
    "config_sha256",
    "tokenizer_sha256",
    "weights_sha256",
)


def to_record(row: SqlModel) -> ModelRecord:
    return ModelRecord(
        id=row.id,
        name=row.name,
        path=row.path,
        gguf_file=row.gguf_file,
        revision=row.revision,
        architecture=row.architecture,
        model_type=row.model_type,
        n_layers=row.n_layers,
        d_model=row.d_model,
        vocab_size=row.vocab_size,
        config_sha256=row.config_sha256,
        tokenizer_sha256=row.tokenizer_sha256,
        weights_sha256=row.weights_sha256,
        family=row.family,
        role=row.role,
        tags=dict(row.tags or {}),
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
    )


def find(session: Session, ref: str | int) -> SqlModel:
    """The model named ``ref`` (or with id ``ref``), else `ModelNotFound`."""
    row = session.scalar(select(SqlModel).where(SqlModel.name == str(ref)))
    # An id is digits; one of more digits than any id (or past the column's range) names none.
    if row is None and (isinstance(ref, int) or (str(ref).isdigit() and len(str(ref)) < 12)):
        ref_id = int(ref)
        row = session.get(SqlModel, ref_id) if is_row_id(ref_id) else None
    if row is None:
        raise ModelNotFound(str(ref))
    return row


def _state(row: SqlModel) -> dict[str, Any]:
    return {
        field: getattr(row, field)
        for field in (*_FACT_FIELDS, "revision", "family", "role", "tags")
    }


def register(
    session: Session,
    name: str,
    facts: ModelFacts,
    *,
    revision: str | None,
    family: str | None,
    role: str | None,
    tags: dict[str, Any],
) -> Registered[ModelRecord]:
    """Insert the model, or update its row when facts or labels changed (audited either way)."""
    if role is not None and role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    wanted: dict[str, Any] = {field: getattr(facts, field) for field in _FACT_FIELDS}
    # A hub id's revision is the commit it resolved to, whatever branch or tag was asked for.
    wanted.update(revision=facts.revision or revision, family=family, role=role, tags=tags)
    row = session.scalar(select(SqlModel).where(SqlModel.name == name))
    if row is None:
        stamp = now()
        row = SqlModel(name=name, created_at=stamp, updated_at=stamp, **wanted)
        session.add(row)
        session.flush()
        record_event(session, "register", "model", row.id, name, new=_state(row), model_id=row.id)
        return Registered[ModelRecord](record=to_record(row), created=True)
    old = _state(row)
    # Labels not given again are kept, so re-registering a moved folder keeps family and role.
    for label in ("revision", "family", "role"):
        if wanted[label] is None:
            wanted[label] = old[label]
    if not tags:
        wanted["tags"] = old["tags"]
    if old == wanted:
        return Registered[ModelRecord](record=to_record(row), created=False)
    if (old["n_layers"], old["d_model"]) != (wanted["n_layers"], wanted["d_model"]) and _in_use(
        session, row.id
    ):
        raise InvalidInput(
            f"model {name!r} is registered with {old['n_layers']} layers x {old['d_model']}, "
            f"and {facts.path} has {facts.n_layers} x {facts.d_model}; vectors or maps use the "
            "registered shape: register the new one under another name"
        )
    for field, value in wanted.items():
        setattr(row, field, value)
    row.updated_at = now()
    session.flush()
    changed = {k: v for k, v in wanted.items() if old.get(k) != v}
    record_event(
        session,
        "update",
        "model",
        row.id,
        name,
        old={k: old[k] for k in changed},
        new=changed,
        model_id=row.id,
    )
    updates = [FieldUpdate(field=k, old=old[k], new=v) for k, v in changed.items()]
    return Registered[ModelRecord](record=to_record(row), created=False, changes=updates)


def _in_use(session: Session, model_id: int) -> bool:
    vector = select(SqlVector.id).where(SqlVector.model_id == model_id).limit(1)
    mapped = select(SqlAffineMap.id).where(
        (SqlAffineMap.source_model_id == model_id) | (SqlAffineMap.target_model_id == model_id)
    )
    return session.scalar(vector) is not None or session.scalar(mapped.limit(1)) is not None


def listing(
    session: Session, *, limit: int | None, after: int | None, name: str | None = None
) -> Page[ModelRecord]:
    def convert(rows: Sequence[Any]) -> list[ModelRecord]:
        return [to_record(row[0]) for row in rows]

    statement = name_contains(select(SqlModel), SqlModel.name, name)
    return page(session, statement, SqlModel.id, convert, limit=limit, after=after)
