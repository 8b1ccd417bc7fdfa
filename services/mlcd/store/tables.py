"""The tables every service shares: inbox, outbox (which is also the event journal), dead letters.

Each domain adds its own tables to `metadata` in its own module (gates.py, rollouts.py, training.py).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

# PostgreSQL BIGSERIAL; SQLite only autoincrements an INTEGER PRIMARY KEY.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

inbox = Table(
    "inbox",
    metadata,
    Column("consumer_group", String(200), primary_key=True),
    Column("event_id", String(200), primary_key=True),
    Column("event_type", String(200), nullable=False),
    Column("handled_at", DateTime(timezone=True), nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("seq", _BigId, primary_key=True, autoincrement=True),
    Column("topic", String(200), nullable=False),
    Column("key", LargeBinary, nullable=True),
    Column("value", LargeBinary, nullable=False),
    Column("headers", JSON, nullable=False),
    # Journal columns; null for raw records (a DLQ replay of an undecodable record).
    Column("event_id", String(200), nullable=True),
    Column("event_type", String(200), nullable=True),
    Column("subject", String(300), nullable=True),
    Column("event_time", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    # Only the rows the relay has left to publish: a scan for them never reads the sent journal.
    Index(
        "ix_outbox_unsent_seq",
        "seq",
        postgresql_where=text("sent_at IS NULL"),
        sqlite_where=text("sent_at IS NULL"),
    ),
    Index("ix_outbox_event_id", "event_id"),
    Index("ix_outbox_subject_type", "subject", "event_type"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("consumer_group", String(200), nullable=False),
    Column("topic", String(200), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("key", LargeBinary, nullable=True),
    Column("value", LargeBinary, nullable=False),
    Column("headers", JSON, nullable=False),
    Column("event_id", String(200), nullable=True),
    Column("event_type", String(200), nullable=True),
    Column("error", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("replayed_at", DateTime(timezone=True), nullable=True),
)
