"""drop the unique indexes on conversations.seq and messages.seq: both columns are
GENERATED ALWAYS AS IDENTITY, so no statement can write a value the sequence did not issue,
and the indexes only cost each new conversation and message an insertion (the orderings
that read seq use (contact_id, seq) and (conversation_id, seq))

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 16:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("uq_conversations_seq", "conversations", type_="unique")
    op.drop_constraint("uq_messages_seq", "messages", type_="unique")


def downgrade() -> None:
    op.create_unique_constraint("uq_messages_seq", "messages", ["seq"])
    op.create_unique_constraint("uq_conversations_seq", "conversations", ["seq"])
