"""Relay envelopes stored once (issue 16, item 2): replicas share the relay's inbox subscription,
and an envelope a replica stored but had not acknowledged to the broker when it died comes back
to it after its restart. `relay_messages.digest` is SHA-256 of the sender and the envelope, unique
per recipient, so the second copy is not stored. Rows from before the upgrade have none (NULLs do
not collide).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain ADD COLUMN (no batch rebuild): SQLite keeps the table's AUTOINCREMENT (0007)
    op.add_column("relay_messages", sa.Column("digest", sa.LargeBinary(32), nullable=True))
    op.create_index("ix_relay_messages_device_digest", "relay_messages", ["device_pk", "digest"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_relay_messages_device_digest", table_name="relay_messages")
    with op.batch_alter_table("relay_messages", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("digest")
