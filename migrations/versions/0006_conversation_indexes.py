"""drop two conversation indexes nothing reads: UNIQUE (workspace_id, id), which no foreign
key references (the primary key already makes id unique), and (channel_id, created_at),
which served the daily-limit count that channel_openings replaced; each cost every new
conversation an index insertion

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 12:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_conversations_channel_id_created_at", table_name="conversations")
    op.drop_constraint("uq_conversations_workspace_id_id", "conversations", type_="unique")


def downgrade() -> None:
    op.create_unique_constraint(
        "uq_conversations_workspace_id_id", "conversations", ["workspace_id", "id"]
    )
    op.create_index(
        "ix_conversations_channel_id_created_at",
        "conversations",
        ["channel_id", "created_at"],
        unique=False,
    )
