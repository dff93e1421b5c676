"""The PostgreSQL schema, as SQLAlchemy Core tables.

Migrations under ``migrations/versions`` create exactly this; the constraints
here are the last guard of SPEC 5's invariants.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSON, JSONB, UUID
from sqlalchemy.sql.schema import SchemaItem

# Python None must be SQL NULL, not JSON 'null', for IS NULL checks to mean "absent".
NullableJSONB = JSONB(none_as_null=True)
# Documents stored to be read back whole, never queried inside: ``json`` keeps their text
# (validated on the way in) where ``jsonb`` would decompose every one and rebuild its text
# on every read.
StoredJSON = JSON(none_as_null=True)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _created_at() -> Column[object]:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


def _workspace_id() -> Column[object]:
    return Column(
        "workspace_id",
        UUID(as_uuid=True),
        ForeignKey("workspaces.id", ondelete="CASCADE"),
        nullable=False,
    )


workspaces = Table(
    "workspaces",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("name", String(200), nullable=False),
    _created_at(),
    # Bumped by every catalog import, so that workers read the catalog they keep again.
    Column("catalog_version", BigInteger, nullable=False, server_default="0"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_hash", String(64), primary_key=True),
    _workspace_id(),
    _created_at(),
)


def _catalog_table(name: str, *columns: SchemaItem) -> Table:
    """A catalog table: global UUID id, owned by one workspace.

    ``UNIQUE (workspace_id, id)`` lets other tables reference a row *within the
    same workspace*, so a cross-workspace reference cannot even be stored.
    """
    return Table(
        name,
        metadata,
        Column("id", UUID(as_uuid=True), primary_key=True),
        _workspace_id(),
        *columns,
        UniqueConstraint("workspace_id", "id"),
    )


def _same_workspace_fk(column: str, target: str) -> ForeignKeyConstraint:
    return ForeignKeyConstraint(
        ["workspace_id", column], [f"{target}.workspace_id", f"{target}.id"]
    )


brands = _catalog_table("brands", Column("name", String(200), nullable=False))

users = _catalog_table(
    "users",
    Column("name", String(200), nullable=False),
    Column("email", String(320), nullable=True),
    Column("role", String(16), nullable=False),
    Column("active", Boolean, nullable=False),
    CheckConstraint("role IN ('advisor', 'admin')", name="role"),
)

agents = _catalog_table(
    "agents",
    Column("name", String(200), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("active", Boolean, nullable=False),
    CheckConstraint("kind IN ('prospection', 'support')", name="kind"),
)

channels = _catalog_table(
    "channels",
    Column("type", String(16), nullable=False),
    Column("phone_number", String(32), nullable=False),
    Column("brand_id", UUID(as_uuid=True), nullable=True),
    Column("agent_id", UUID(as_uuid=True), nullable=True),
    Column("default_advisor_id", UUID(as_uuid=True), nullable=True),
    Column("active", Boolean, nullable=False),
    Column("daily_limit", Integer, nullable=False),
    Column("priority", Integer, nullable=False),
    CheckConstraint("type IN ('whatsapp', 'sms', 'email')", name="type"),
    CheckConstraint("daily_limit >= 0", name="daily_limit"),
    _same_workspace_fk("brand_id", "brands"),
    _same_workspace_fk("agent_id", "agents"),
    _same_workspace_fk("default_advisor_id", "users"),
)

templates = _catalog_table(
    "templates",
    Column("name", String(512), nullable=False),
    Column("language", String(16), nullable=False),
    Column("category", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("body", Text, nullable=False),
    Column("brand_id", UUID(as_uuid=True), nullable=True),
    CheckConstraint(
        "status IN ('APPROVED', 'PENDING', 'REJECTED', 'PAUSED', 'DISABLED')", name="status"
    ),
    _same_workspace_fk("brand_id", "brands"),
)

contacts = _catalog_table(
    "contacts",
    Column("name", String(200), nullable=False),
    Column("phone", String(32), nullable=False),
    Column("email", String(320), nullable=True),
    Column("opted_out", Boolean, nullable=False),
)

conversations = Table(
    "conversations",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    _workspace_id(),
    # Exact creation order for sticky-sender selection (SPEC 4.1).
    Column("seq", BigInteger, Identity(always=True), nullable=False),
    Column("channel_id", UUID(as_uuid=True), nullable=False),
    Column("contact_id", UUID(as_uuid=True), nullable=False),
    Column("agent_id", UUID(as_uuid=True), nullable=True),
    Column("status", String(8), nullable=False),
    Column("control", String(8), nullable=False),
    Column("assigned_user_id", UUID(as_uuid=True), nullable=True),
    Column("brand_id", UUID(as_uuid=True), nullable=True),
    Column("campaign_id", String(128), nullable=True),
    Column("context", NullableJSONB, nullable=True),
    Column("opt_in", NullableJSONB, nullable=True),
    Column("command_id", UUID(as_uuid=True), nullable=False),
    _created_at(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("status IN ('active', 'closed')", name="status"),
    CheckConstraint("control IN ('ai', 'human')", name="control"),
    _same_workspace_fk("channel_id", "channels"),
    _same_workspace_fk("contact_id", "contacts"),
    _same_workspace_fk("agent_id", "agents"),
    _same_workspace_fk("assigned_user_id", "users"),
    _same_workspace_fk("brand_id", "brands"),
    # Invariant 1: at most one active conversation per (channel, contact).
    Index(
        "uq_conversations_one_active",
        "channel_id",
        "contact_id",
        unique=True,
        postgresql_where=text("status = 'active'"),
    ),
    Index("ix_conversations_contact_id_seq", "contact_id", "seq"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column(
        "conversation_id",
        UUID(as_uuid=True),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("seq", BigInteger, Identity(always=True), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("body", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("template_id", UUID(as_uuid=True), nullable=True),
    Column("command_id", UUID(as_uuid=True), nullable=False),
    _created_at(),
    Index("ix_messages_conversation_id_seq", "conversation_id", "seq"),
)

follow_ups = Table(
    "follow_ups",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column(
        "conversation_id",
        UUID(as_uuid=True),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("position", Integer, nullable=False),
    Column("content", JSONB, nullable=False),
    Column("status", String(16), nullable=False),
    Column("command_id", UUID(as_uuid=True), nullable=False),
    _created_at(),
    UniqueConstraint("conversation_id", "position"),
    CheckConstraint("position >= 1", name="position"),
)

batches = Table(
    "batches",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    _workspace_id(),
    Column("campaign_id", String(128), nullable=False),
    Column("total", Integer, nullable=False),
    # SPEC 4.3 idempotency: a replay answers the stored batch, its invalid items included.
    Column("idempotency_key", String(255), nullable=True),
    Column("request_hash", String(64), nullable=True),
    Column("invalid", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    _created_at(),
    Index(
        "uq_batches_workspace_id_idempotency_key",
        "workspace_id",
        "idempotency_key",
        unique=True,
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
)

commands = Table(
    "commands",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    _workspace_id(),
    Column("idempotency_key", String(255), nullable=True),
    Column("request_hash", String(64), nullable=False),
    Column("payload", StoredJSON, nullable=False),
    Column("status", String(16), nullable=False, server_default="accepted"),
    Column("result", StoredJSON, nullable=True),
    Column("error", StoredJSON, nullable=True),
    Column("error_code", String(64), nullable=True),
    Column("batch_id", UUID(as_uuid=True), ForeignKey("batches.id"), nullable=True),
    _created_at(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("status IN ('accepted', 'processing', 'succeeded', 'failed')", name="status"),
    # A finished command carries exactly its outcome: result on success, error on failure.
    CheckConstraint(
        "(status = 'succeeded') = (result IS NOT NULL)"
        " AND (status = 'failed') = (error IS NOT NULL)",
        name="outcome",
    ),
    Index(
        "uq_commands_workspace_id_idempotency_key",
        "workspace_id",
        "idempotency_key",
        unique=True,
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
    Index(
        "ix_commands_unfinished",
        "created_at",
        postgresql_where=text("status IN ('accepted', 'processing')"),
    ),
    Index("ix_commands_batch_id_status", "batch_id", "status"),
    # The single initiations still queued, for a worker that is behind (commands.take_backlog).
    Index(
        "ix_commands_waiting_singles",
        "workspace_id",
        "created_at",
        postgresql_where=text("status = 'accepted' AND batch_id IS NULL"),
    ),
)

# A fencing token per channel: whoever takes the channel lock bumps it, and a
# write commits only while its token is still the newest (SPEC 5.1).
channel_fences = Table(
    "channel_fences",
    metadata,
    Column("channel_id", UUID(as_uuid=True), ForeignKey("channels.id"), primary_key=True),
    Column("token", BigInteger, nullable=False),
)

# Fresh conversations opened per channel and hour, written in the conversation's own
# transaction: the daily quota (SPEC 4.1) sums at most 25 rows whatever the day's volume.
channel_openings = Table(
    "channel_openings",
    metadata,
    Column(
        "channel_id",
        UUID(as_uuid=True),
        ForeignKey("channels.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("hour", DateTime(timezone=True), primary_key=True),
    Column("n", Integer, nullable=False),
    CheckConstraint("n > 0", name="n"),
)

# One row per transaction that wrote outbox rows: the relay and the workers' fast path mark
# a write published, not each of its rows. A mark per row rewrote every row, its 1.3 KB
# payload and its index entries, a second time.
outbox_writes = Table(
    "outbox_writes",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("events", Integer, nullable=False),
    _created_at(),
    Column("published_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("events > 0", name="events"),
    Index("ix_outbox_writes_unpublished", "id", postgresql_where=text("published_at IS NULL")),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
    Column("event_type", String(64), nullable=False),
    Column("workspace_id", UUID(as_uuid=True), nullable=False),
    Column("command_id", UUID(as_uuid=True), nullable=True),
    Column("payload", StoredJSON, nullable=False),
    _created_at(),
    # Every row belongs to a write, or no relay would ever send it.
    Column(
        "write_id",
        BigInteger,
        ForeignKey("outbox_writes.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    # Invariant 4: one initiation event per command.
    Index(
        "uq_outbox_command_id",
        "command_id",
        unique=True,
        postgresql_where=text("command_id IS NOT NULL"),
    ),
)

# The reporting subscriber's read model (SPEC 4.5), built from events only. One row per
# (workspace, campaign, outcome, detail): ``detail`` is the channel id for created/reused and
# the error code for rejected, so a campaign's stats are one primary-key range read. No
# foreign keys: the counts follow the event stream, not the tables that produced it.
campaign_stats = Table(
    "campaign_stats",
    metadata,
    Column("workspace_id", UUID(as_uuid=True), primary_key=True),
    Column("campaign_id", String(128), primary_key=True),
    Column("outcome", String(16), primary_key=True),
    Column("detail", String(64), primary_key=True),
    Column("n", BigInteger, nullable=False),
    CheckConstraint("outcome IN ('created', 'reused', 'rejected')", name="outcome"),
    CheckConstraint("n > 0", name="n"),
)

# Event ids already added to campaign_stats, written in the same transaction as the counts:
# a redelivered or duplicated stream entry finds its id here and adds nothing.
campaign_events_counted = Table(
    "campaign_events_counted",
    metadata,
    Column("event_id", UUID(as_uuid=True), primary_key=True),
    Column("counted_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_campaign_events_counted_counted_at", "counted_at"),  # retention prunes by age
)
