"""Initial catalogue: models, concepts and versions, vectors, affine maps, evaluations,
aliases and the audit trail.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=50), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_aliases")),
        sa.UniqueConstraint("kind", "name", name=op.f("uq_aliases_kind_name")),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=100), nullable=False),
        sa.Column("object_kind", sa.String(length=50), nullable=False),
        sa.Column("object_id", sa.Integer(), nullable=True),
        sa.Column("object_ref", sa.Text(), nullable=False),
        sa.Column("old", sa.JSON(), nullable=True),
        sa.Column("new", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_events_at"), ["at"], unique=False)
        batch_op.create_index("ix_audit_events_object", ["object_kind", "object_id"], unique=False)

    op.create_table(
        "concepts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_concepts")),
        sa.UniqueConstraint("name", name=op.f("uq_concepts_name")),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("gguf_file", sa.Text(), nullable=True),
        sa.Column("revision", sa.String(length=200), nullable=True),
        sa.Column("architecture", sa.String(length=200), nullable=True),
        sa.Column("model_type", sa.String(length=100), nullable=True),
        sa.Column("n_layers", sa.Integer(), nullable=False),
        sa.Column("d_model", sa.Integer(), nullable=False),
        sa.Column("vocab_size", sa.Integer(), nullable=True),
        sa.Column("config_sha256", sa.String(length=64), nullable=True),
        sa.Column("tokenizer_sha256", sa.String(length=64), nullable=True),
        sa.Column("weights_sha256", sa.String(length=64), nullable=True),
        sa.Column("family", sa.String(length=100), nullable=True),
        sa.Column("role", sa.String(length=20), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("name", name=op.f("uq_models_name")),
    )
    op.create_table(
        "affine_maps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_model_id", sa.Integer(), nullable=False),
        sa.Column("target_model_id", sa.Integer(), nullable=False),
        sa.Column("source_layer", sa.Integer(), nullable=False),
        sa.Column("target_layer", sa.Integer(), nullable=False),
        sa.Column("oid", sa.String(length=64), nullable=False),
        sa.Column("solver", sa.String(length=100), nullable=False),
        sa.Column("solver_settings", sa.JSON(), nullable=False),
        sa.Column("corpus_oid", sa.String(length=64), nullable=True),
        sa.Column("fit_sha256", sa.String(length=64), nullable=False),
        sa.Column("n_samples", sa.Integer(), nullable=True),
        sa.Column("r2", sa.Float(), nullable=True),
        sa.Column("mse", sa.Float(), nullable=True),
        sa.Column("cosine", sa.Float(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["source_model_id"],
            ["models.id"],
            name=op.f("fk_affine_maps_source_model_id_models"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["target_model_id"],
            ["models.id"],
            name=op.f("fk_affine_maps_target_model_id_models"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_affine_maps")),
        sa.UniqueConstraint(
            "source_model_id",
            "target_model_id",
            "source_layer",
            "target_layer",
            "fit_sha256",
            name="uq_affine_maps_pair_fit",
        ),
    )
    with op.batch_alter_table("affine_maps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_affine_maps_oid"), ["oid"], unique=False)
        batch_op.create_index(
            "ix_affine_maps_pair",
            ["source_model_id", "target_model_id", "target_layer"],
            unique=False,
        )

    op.create_table(
        "concept_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("concept_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("pairs_oid", sa.String(length=64), nullable=False),
        sa.Column("n_pairs", sa.Integer(), nullable=False),
        sa.Column("template", sa.Text(), nullable=False),
        sa.Column("pair_construction", sa.String(length=100), nullable=False),
        sa.Column("extraction", sa.JSON(), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["concept_id"],
            ["concepts.id"],
            name=op.f("fk_concept_versions_concept_id_concepts"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_concept_versions")),
        sa.UniqueConstraint(
            "concept_id",
            "content_sha256",
            name=op.f("uq_concept_versions_concept_id_content_sha256"),
        ),
        sa.UniqueConstraint(
            "concept_id", "version", name=op.f("uq_concept_versions_concept_id_version")
        ),
    )
    with op.batch_alter_table("concept_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_concept_versions_pairs_oid"), ["pairs_oid"], unique=False
        )

    op.create_table(
        "vectors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("concept_version_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("hook_point", sa.String(length=100), nullable=False),
        sa.Column("token_position", sa.String(length=50), nullable=False),
        sa.Column("estimator", sa.String(length=100), nullable=False),
        sa.Column("oid", sa.String(length=64), nullable=False),
        sa.Column("n_layers", sa.Integer(), nullable=False),
        sa.Column("d_model", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(length=20), nullable=False),
        sa.Column("layers", sa.JSON(), nullable=True),
        sa.Column("layer_norms", sa.JSON(), nullable=False),
        sa.Column("origin", sa.String(length=20), nullable=False),
        sa.Column("lineage_key", sa.String(length=500), nullable=False),
        sa.Column("source_vector_id", sa.Integer(), nullable=True),
        sa.Column("map_ids", sa.JSON(), nullable=True),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["concept_version_id"],
            ["concept_versions.id"],
            name=op.f("fk_vectors_concept_version_id_concept_versions"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_vectors_model_id_models"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["source_vector_id"],
            ["vectors.id"],
            name=op.f("fk_vectors_source_vector_id_vectors"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vectors")),
        sa.UniqueConstraint(
            "concept_version_id",
            "model_id",
            "hook_point",
            "token_position",
            "estimator",
            "lineage_key",
            name="uq_vectors_identity",
        ),
    )
    with op.batch_alter_table("vectors", schema=None) as batch_op:
        batch_op.create_index(
            "ix_vectors_model_concept", ["model_id", "concept_version_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_vectors_oid"), ["oid"], unique=False)

    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vector_id", sa.Integer(), nullable=True),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(length=100), nullable=False),
        sa.Column("dataset_oid", sa.String(length=64), nullable=True),
        sa.Column("layers", sa.JSON(), nullable=True),
        sa.Column("alpha", sa.Float(), nullable=True),
        sa.Column("metric", sa.String(length=100), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=True),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_evaluations_model_id_models"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["vector_id"],
            ["vectors.id"],
            name=op.f("fk_evaluations_vector_id_vectors"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
    )
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.create_index("ix_evaluations_model_task", ["model_id", "task"], unique=False)
        batch_op.create_index(
            "ix_evaluations_subject", ["vector_id", "model_id", "task"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_index("ix_evaluations_subject")
        batch_op.drop_index("ix_evaluations_model_task")

    op.drop_table("evaluations")
    with op.batch_alter_table("vectors", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vectors_oid"))
        batch_op.drop_index("ix_vectors_model_concept")

    op.drop_table("vectors")
    with op.batch_alter_table("concept_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_concept_versions_pairs_oid"))

    op.drop_table("concept_versions")
    with op.batch_alter_table("affine_maps", schema=None) as batch_op:
        batch_op.drop_index("ix_affine_maps_pair")
        batch_op.drop_index(batch_op.f("ix_affine_maps_oid"))

    op.drop_table("affine_maps")
    op.drop_table("models")
    op.drop_table("concepts")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_object")
        batch_op.drop_index(batch_op.f("ix_audit_events_at"))

    op.drop_table("audit_events")
    op.drop_table("aliases")
