"""index campaign_events_counted by counted_at, for the retention prune

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_campaign_events_counted_counted_at", "campaign_events_counted", ["counted_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_campaign_events_counted_counted_at", table_name="campaign_events_counted")
