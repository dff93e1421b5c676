"""outbox_writes: the relay and the fast path mark each transaction's outbox rows published
with one row of their write, instead of rewriting every outbox row (its payload and its index
entries) a second time. Existing rows get one write each, published as they were.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 23:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outbox_writes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("events > 0", name=op.f("ck_outbox_writes_events")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_writes")),
    )
    op.create_index(
        "ix_outbox_writes_unpublished",
        "outbox_writes",
        ["id"],
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.execute(
        "INSERT INTO outbox_writes (id, events, created_at, published_at) OVERRIDING SYSTEM VALUE"
        " SELECT id, 1, created_at, published_at FROM outbox"
    )
    op.execute(
        "SELECT setval(pg_get_serial_sequence('outbox_writes', 'id'),"
        " coalesce(max(id), 0) + 1, false) FROM outbox_writes"
    )
    op.add_column("outbox", sa.Column("write_id", sa.BigInteger(), nullable=True))
    op.execute("UPDATE outbox SET write_id = id")
    op.alter_column("outbox", "write_id", nullable=False)
    op.create_foreign_key(
        op.f("fk_outbox_write_id"),
        "outbox",
        "outbox_writes",
        ["write_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_index(op.f("ix_outbox_write_id"), "outbox", ["write_id"])
    op.drop_index("ix_outbox_unpublished", table_name="outbox")
    op.drop_column("outbox", "published_at")


def downgrade() -> None:
    op.add_column("outbox", sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE outbox SET published_at = w.published_at FROM outbox_writes w"
        " WHERE w.id = outbox.write_id"
    )
    op.create_index(
        "ix_outbox_unpublished", "outbox", ["id"], postgresql_where=sa.text("published_at IS NULL")
    )
    op.drop_index(op.f("ix_outbox_write_id"), table_name="outbox")
    op.drop_constraint(op.f("fk_outbox_write_id"), "outbox", type_="foreignkey")
    op.drop_column("outbox", "write_id")
    op.drop_index("ix_outbox_writes_unpublished", table_name="outbox_writes")
    op.drop_table("outbox_writes")
