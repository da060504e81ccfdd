"""API tokens of ``crx serve``: per-user bearer tokens, stored only as the SHA-256 of the secret.

A token's secret is 32 random bytes (``secrets.token_urlsafe``), so a plain SHA-256 is enough to
store it: nothing can be guessed back from the hash. Rows are never deleted (a revoked token
keeps its row, so its id and user stay in the audit trail). On PostgreSQL the tables of roles
that already exist are granted here too (``crx db roles`` grants them on a fresh registry): the
owner creates and revokes tokens, every reader may read the hashes and stamp ``last_used_at``
(the server authenticating a request).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_GRANTS = (
    ("crx_reader", "SELECT, UPDATE (last_used_at) ON api_tokens"),
    ("crx_owner", "INSERT, UPDATE ON api_tokens"),
)


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user", sa.String(length=200), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_api_tokens_token_sha256")),
    )
    if op.get_context().dialect.name == "postgresql":
        for role, grant in PG_GRANTS:
            op.execute(
                f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') "
                f"THEN GRANT {grant} TO {role}; END IF; END $$"
            )


def downgrade() -> None:
    op.drop_table("api_tokens")
