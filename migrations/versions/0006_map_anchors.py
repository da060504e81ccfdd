"""Anchors of concept-anchored maps: which concept versions' native vectors a map was fitted on.

A map of the ``anchored`` solver is fitted on corpus states and on the paired native vectors of
concepts extracted on both its models. Each such concept version is one row here (with the two
vectors), so lineage can show it and a transplant of that concept can refuse the map (the
concept would be evaluated through a map fitted on it). The rows go with their map
(``ON DELETE CASCADE``); a concept version or vector that anchors a map cannot be deleted.
On PostgreSQL the roles that already exist are granted the table as the other catalogue tables.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_GRANTS = (
    ("crx_reader", "SELECT ON map_anchors"),
    ("crx_writer", "INSERT, UPDATE ON map_anchors"),
    ("crx_owner", "DELETE ON map_anchors"),
)


def upgrade() -> None:
    op.create_table(
        "map_anchors",
        sa.Column("map_id", sa.Integer(), nullable=False),
        sa.Column("concept_version_id", sa.Integer(), nullable=False),
        sa.Column("source_vector_id", sa.Integer(), nullable=False),
        sa.Column("target_vector_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["map_id"],
            ["affine_maps.id"],
            name=op.f("fk_map_anchors_map_id_affine_maps"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["concept_version_id"],
            ["concept_versions.id"],
            name=op.f("fk_map_anchors_concept_version_id_concept_versions"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["source_vector_id"],
            ["vectors.id"],
            name=op.f("fk_map_anchors_source_vector_id_vectors"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["target_vector_id"],
            ["vectors.id"],
            name=op.f("fk_map_anchors_target_vector_id_vectors"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("map_id", "concept_version_id", name=op.f("pk_map_anchors")),
    )
    op.create_index(
        "ix_map_anchors_concept_version_id", "map_anchors", ["concept_version_id"], unique=False
    )
    if op.get_context().dialect.name == "postgresql":
        for role, grant in PG_GRANTS:
            op.execute(
                f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') "
                f"THEN GRANT {grant} TO {role}; END IF; END $$"
            )


def downgrade() -> None:
    op.drop_index("ix_map_anchors_concept_version_id", table_name="map_anchors")
    op.drop_table("map_anchors")
