"""The migrations build exactly the schema worker/store/tables.py describes."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, text

from worker.store.tables import metadata


def test_the_migrated_database_matches_the_tables_module(session_engine: Engine):
    with session_engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)

    assert differences == []


def test_conversations_carry_only_the_indexes_something_reads(session_engine: Engine):
    with session_engine.connect() as conn:
        names = conn.execute(
            text("SELECT indexname FROM pg_indexes WHERE tablename = 'conversations'")
        ).scalars()

        assert sorted(names) == [
            "ix_conversations_contact_id_seq",
            "pk_conversations",
            "uq_conversations_one_active",
        ]


def test_messages_carry_only_the_indexes_something_reads(session_engine: Engine):
    with session_engine.connect() as conn:
        names = conn.execute(
            text("SELECT indexname FROM pg_indexes WHERE tablename = 'messages'")
        ).scalars()

        assert sorted(names) == ["ix_messages_conversation_id_seq", "pk_messages"]
