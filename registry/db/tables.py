"""ORM tables of the catalogue (``Sql*`` classes).

These classes mirror the schema that the alembic migrations in ``migrations/versions`` create;
the migrations are the only source of the schema (nothing here is ever ``create_all``-ed at run
time), and a test checks that the two agree. ORM rows never leave a session: `crx.registry.records`
turns them into `schemas` records.
"""

# No `from __future__ import annotations`: SQLAlchemy would then evaluate every `Mapped[...]`
# annotation from its string at import, about a sixth of this module's import time on every
# command (the classes here need no forward references).

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

OID = String(64)  # hex sha256 of stored bytes
NAME = String(200)


# Ids and versions are INTEGER columns: 32 bits on PostgreSQL. A number outside names no row on
# either backend, and is answered as "not found" before it reaches a query (where PostgreSQL
# would refuse it and SQLite overflow), so both backends answer alike.
MAX_ROW_ID = 2**31 - 1


def is_row_id(value: int) -> bool:
    return 0 <= value <= MAX_ROW_ID


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SqlModel(Base):
    """A language model: where it loads from, and facts read from its config."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    path: Mapped[str] = mapped_column(Text)  # local folder or hub id
    gguf_file: Mapped[str | None] = mapped_column(Text)
    revision: Mapped[str | None] = mapped_column(String(200))
    architecture: Mapped[str | None] = mapped_column(String(200))
    model_type: Mapped[str | None] = mapped_column(String(100))
    n_layers: Mapped[int] = mapped_column(Integer)
    d_model: Mapped[int] = mapped_column(Integer)
    vocab_size: Mapped[int | None] = mapped_column(Integer)
    config_sha256: Mapped[str | None] = mapped_column(OID)
    tokenizer_sha256: Mapped[str | None] = mapped_column(OID)
    weights_sha256: Mapped[str | None] = mapped_column(OID)
    family: Mapped[str | None] = mapped_column(String(100))
    role: Mapped[str | None] = mapped_column(String(20))
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SqlConcept(Base):
    """A named concept; its content lives in versions."""

    __tablename__ = "concepts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SqlConceptVersion(Base):
    """One immutable version of a concept: its contrast pairs blob and extraction recipe."""

    __tablename__ = "concept_versions"
    __table_args__ = (
        UniqueConstraint("concept_id", "version"),
        UniqueConstraint("concept_id", "content_sha256"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    concept_id: Mapped[int] = mapped_column(ForeignKey("concepts.id", ondelete="RESTRICT"))
    version: Mapped[int] = mapped_column(Integer)
    pairs_oid: Mapped[str] = mapped_column(OID, index=True)
    n_pairs: Mapped[int] = mapped_column(Integer)
    template: Mapped[str] = mapped_column(Text)
    pair_construction: Mapped[str] = mapped_column(String(100))
    extraction: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # sha256 of the canonical JSON of (pairs_oid, template, pair_construction, extraction):
    # identical content maps to the existing version instead of a new one.
    content_sha256: Mapped[str] = mapped_column(OID)
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SqlAffineMap(Base):
    """A fitted map from a source model's layer to a target model's layer."""

    __tablename__ = "affine_maps"
    __table_args__ = (
        UniqueConstraint(
            "source_model_id",
            "target_model_id",
            "source_layer",
            "target_layer",
            "fit_sha256",
            name="uq_affine_maps_pair_fit",
        ),
        Index("ix_affine_maps_pair", "source_model_id", "target_model_id", "target_layer"),
        # The resolver walks maps backwards from a target (migration 0002).
        Index("ix_affine_maps_target", "target_model_id", "source_model_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    target_model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    source_layer: Mapped[int] = mapped_column(Integer)
    target_layer: Mapped[int] = mapped_column(Integer)
    oid: Mapped[str] = mapped_column(OID, index=True)  # safetensors: "W" [d_t, d_s], "b" [d_t]
    solver: Mapped[str] = mapped_column(String(100))
    solver_settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    corpus_oid: Mapped[str | None] = mapped_column(OID)
    # sha256 of (solver, solver_settings, corpus_oid): one row per layer pair per fit recipe.
    fit_sha256: Mapped[str] = mapped_column(OID)
    n_samples: Mapped[int | None] = mapped_column(Integer)
    r2: Mapped[float | None] = mapped_column(Float)
    mse: Mapped[float | None] = mapped_column(Float)
    cosine: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SqlMapAnchor(Base):
    """One anchor of a concept-anchored map: a concept version whose native vectors on the
    map's two models were rows of its fit (lineage; a transplant of that concept refuses it)."""

    __tablename__ = "map_anchors"
    __table_args__ = (Index("ix_map_anchors_concept_version_id", "concept_version_id"),)

    map_id: Mapped[int] = mapped_column(
        ForeignKey("affine_maps.id", ondelete="CASCADE"), primary_key=True
    )
    concept_version_id: Mapped[int] = mapped_column(
        ForeignKey("concept_versions.id", ondelete="RESTRICT"), primary_key=True
    )
    source_vector_id: Mapped[int] = mapped_column(ForeignKey("vectors.id", ondelete="RESTRICT"))
    target_vector_id: Mapped[int] = mapped_column(ForeignKey("vectors.id", ondelete="RESTRICT"))


class SqlVector(Base):
    """A concept vector on one model: a ``[n_layers, d_model]`` tensor blob plus lineage."""

    __tablename__ = "vectors"
    __table_args__ = (
        UniqueConstraint(
            "concept_version_id",
            "model_id",
            "hook_point",
            "token_position",
            "estimator",
            "lineage_key",
            name="uq_vectors_identity",
        ),
        Index("ix_vectors_model_concept", "model_id", "concept_version_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    concept_version_id: Mapped[int] = mapped_column(
        ForeignKey("concept_versions.id", ondelete="RESTRICT")
    )
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    hook_point: Mapped[str] = mapped_column(String(100))
    token_position: Mapped[str] = mapped_column(String(50))
    estimator: Mapped[str] = mapped_column(String(100))
    oid: Mapped[str] = mapped_column(OID, index=True)
    n_layers: Mapped[int] = mapped_column(Integer)
    d_model: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(20))
    layers: Mapped[list[int] | None] = mapped_column(JSON)  # populated layers; None = all
    layer_norms: Mapped[list[float]] = mapped_column(JSON)
    origin: Mapped[str] = mapped_column(String(20))  # extracted | imported | mapped
    # "" for extracted/imported; for mapped vectors, what distinguishes one derivation from
    # another of the same concept on the same model (the source vector and map ids).
    lineage_key: Mapped[str] = mapped_column(String(500), default="")
    source_vector_id: Mapped[int | None] = mapped_column(
        ForeignKey("vectors.id", ondelete="RESTRICT")
    )
    map_ids: Mapped[list[int] | None] = mapped_column(JSON)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SqlEvaluation(Base):
    """One metric of one evaluation: a vector (or the bare model) on a target model and task."""

    __tablename__ = "evaluations"
    __table_args__ = (
        Index("ix_evaluations_subject", "vector_id", "model_id", "task"),
        Index("ix_evaluations_model_task", "model_id", "task"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vector_id: Mapped[int | None] = mapped_column(ForeignKey("vectors.id", ondelete="RESTRICT"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    task: Mapped[str] = mapped_column(String(100))
    dataset_oid: Mapped[str | None] = mapped_column(OID)
    layers: Mapped[list[int] | None] = mapped_column(JSON)
    alpha: Mapped[float | None] = mapped_column(Float)
    metric: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    n: Mapped[int | None] = mapped_column(Integer)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SqlAlias(Base):
    """A movable name for the vector that realises a concept on one target model
    (``honesty@prod`` on gemma3-270m). Moves are compare-and-swap on ``revision``; the database
    writes each move to `SqlAliasHistory` and guards protected ones (migration 0003)."""

    __tablename__ = "aliases"
    __table_args__ = (
        UniqueConstraint("concept_id", "model_id", "name"),
        Index("ix_aliases_model", "model_id"),
        Index("ix_aliases_vector", "vector_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    concept_id: Mapped[int] = mapped_column(ForeignKey("concepts.id", ondelete="RESTRICT"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    name: Mapped[str] = mapped_column(NAME)
    concept_version_id: Mapped[int] = mapped_column(
        ForeignKey("concept_versions.id", ondelete="RESTRICT")
    )
    vector_id: Mapped[int] = mapped_column(ForeignKey("vectors.id", ondelete="RESTRICT"))
    revision: Mapped[int] = mapped_column(Integer)  # 1 when set, +1 per move
    action: Mapped[str] = mapped_column(String(20))  # set | move | promote: the last change
    actor: Mapped[str] = mapped_column(String(200))  # PostgreSQL: stamped with crx_actor() (0005)
    label: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SqlAliasHistory(Base):
    """Every alias change, append-only, written by a database trigger (never by crx itself)."""

    __tablename__ = "alias_history"
    __table_args__ = (Index("ix_alias_history_subject", "concept_id", "model_id", "name", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alias_id: Mapped[int] = mapped_column(Integer)
    concept_id: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(NAME)
    revision: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(20))  # set | move | promote | delete
    old_vector_id: Mapped[int | None] = mapped_column(ForeignKey("vectors.id", ondelete="RESTRICT"))
    new_vector_id: Mapped[int | None] = mapped_column(ForeignKey("vectors.id", ondelete="RESTRICT"))
    old_concept_version_id: Mapped[int | None] = mapped_column(Integer)
    new_concept_version_id: Mapped[int | None] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(200))
    label: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SqlApproval(Base):
    """One approver's decision (approve or reject) on one exact vector content for one alias.

    Append-only: a later decision by the same actor supersedes an earlier one."""

    __tablename__ = "approvals"
    __table_args__ = (Index("ix_approvals_vector", "vector_id", "alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vector_id: Mapped[int] = mapped_column(ForeignKey("vectors.id", ondelete="RESTRICT"))
    vector_oid: Mapped[str] = mapped_column(OID)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    alias: Mapped[str] = mapped_column(NAME)
    decision: Mapped[str] = mapped_column(String(20))  # approve | reject
    actor: Mapped[str] = mapped_column(String(200))
    label: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SqlPolicy(Base):
    """What a vector needs before it may be promoted to ``alias``: evidence and approvals.

    ``concept`` / ``model`` None = any; the most specific matching policy governs."""

    __tablename__ = "policies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    concept: Mapped[str | None] = mapped_column(NAME)
    model: Mapped[str | None] = mapped_column(NAME)
    alias: Mapped[str] = mapped_column(NAME)
    rules: Mapped[dict[str, Any]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SqlDeprecation(Base):
    """An object taken out of use: still readable, never planned, aliased or promoted."""

    __tablename__ = "deprecations"
    __table_args__ = (UniqueConstraint("object_kind", "object_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    object_kind: Mapped[str] = mapped_column(String(50))  # concept_version | vector | map | model
    object_id: Mapped[int] = mapped_column(Integer)
    object_ref: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(200))
    label: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SqlAuditEvent(Base):
    """Append-only record of every change: who, when, what, old → new."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_object", "object_kind", "object_id"),
        Index("ix_audit_events_actor", "actor", "id"),
        Index("ix_audit_events_action", "action", "id"),
        Index("ix_audit_events_model", "model_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    object_kind: Mapped[str] = mapped_column(String(50))
    object_id: Mapped[int | None] = mapped_column(Integer)
    object_ref: Mapped[str] = mapped_column(Text)
    old: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    new: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    label: Mapped[str | None] = mapped_column(String(200))  # CRX_ACTOR: display only
    reason: Mapped[str | None] = mapped_column(Text)
    # The (target) model the event concerns, where there is one: `crx audit --model`.
    model_id: Mapped[int | None] = mapped_column(Integer)


# Columns that hold oids of blobs the store must keep: (table, column, required). A required
# reference missing from the store is corruption; an optional one (a corpus or dataset that may
# only have been hashed, not stored) is kept by gc when present but not demanded by verify.
BLOB_REFERENCES: tuple[tuple[type[Base], str, bool], ...] = (
    (SqlConceptVersion, "pairs_oid", True),
    (SqlVector, "oid", True),
    (SqlAffineMap, "oid", True),
    (SqlAffineMap, "corpus_oid", False),
    (SqlEvaluation, "dataset_oid", False),
)


class SqlApiToken(Base):
    """A per-user bearer token of ``crx serve``: only the SHA-256 of its secret is stored.

    Never deleted: revoking stamps ``revoked_at`` (the id and user stay for the audit trail)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(200))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(200))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
