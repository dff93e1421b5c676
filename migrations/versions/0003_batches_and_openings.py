"""batch idempotency and hourly opening counters for the daily quota

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 09:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("idempotency_key", sa.String(length=255), nullable=True))
    op.add_column("batches", sa.Column("request_hash", sa.String(length=64), nullable=True))
    op.add_column(
        "batches",
        sa.Column(
            "invalid",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
    )
    op.create_index(
        "uq_batches_workspace_id_idempotency_key",
        "batches",
        ["workspace_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_table(
        "channel_openings",
        sa.Column("channel_id", sa.UUID(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.CheckConstraint("n > 0", name=op.f("ck_channel_openings_n")),
        sa.ForeignKeyConstraint(
            ["channel_id"],
            ["channels.id"],
            name=op.f("fk_channel_openings_channel_id"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("channel_id", "hour", name=op.f("pk_channel_openings")),
    )
    # Conversations opened before this revision keep counting against the quota.
    op.execute(
        "INSERT INTO channel_openings (channel_id, hour, n)"
        " SELECT channel_id, date_trunc('hour', created_at), count(*) FROM conversations"
        " WHERE created_at > now() - interval '25 hours'"
        " GROUP BY channel_id, date_trunc('hour', created_at)"
    )


def downgrade() -> None:
    op.drop_table("channel_openings")
    op.drop_index("uq_batches_workspace_id_idempotency_key", table_name="batches")
    op.drop_column("batches", "invalid")
    op.drop_column("batches", "request_hash")
    op.drop_column("batches", "idempotency_key")
