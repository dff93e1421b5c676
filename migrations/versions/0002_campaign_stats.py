"""campaign stats: the reporting subscriber's counts and the event ids it has counted

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 09:12:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "campaign_stats",
        sa.Column("workspace_id", sa.UUID(), nullable=False),
        sa.Column("campaign_id", sa.String(length=128), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.String(length=64), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('created', 'reused', 'rejected')", name=op.f("ck_campaign_stats_outcome")
        ),
        sa.CheckConstraint("n > 0", name=op.f("ck_campaign_stats_n")),
        sa.PrimaryKeyConstraint(
            "workspace_id", "campaign_id", "outcome", "detail", name=op.f("pk_campaign_stats")
        ),
    )
    op.create_table(
        "campaign_events_counted",
        sa.Column("event_id", sa.UUID(), nullable=False),
        sa.Column(
            "counted_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_campaign_events_counted")),
    )


def downgrade() -> None:
    op.drop_table("campaign_events_counted")
    op.drop_table("campaign_stats")
