"""commands.payload, result and error and outbox.payload as json instead of jsonb: documents
stored to be read back whole, never queried inside; json keeps their text (validated on
the way in) where jsonb decomposed every one on the way in and rebuilt its text on every
read (about 3.5 µs per row of a COPY here)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 13:20:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("commands", "payload"),
    ("commands", "result"),
    ("commands", "error"),
    ("outbox", "payload"),
)


def upgrade() -> None:
    for table, column in COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE json USING {column}::json")


def downgrade() -> None:
    for table, column in COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE jsonb USING {column}::jsonb")
