"""index the single commands still waiting in the queue, per workspace, oldest first;
workspaces.catalog_version, bumped by every catalog import

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 16:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "workspaces",
        sa.Column("catalog_version", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.create_index(
        "ix_commands_waiting_singles",
        "commands",
        ["workspace_id", "created_at"],
        postgresql_where=sa.text("status = 'accepted' AND batch_id IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_commands_waiting_singles", table_name="commands")
    op.drop_column("workspaces", "catalog_version")
