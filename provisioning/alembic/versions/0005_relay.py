"""HTTP relay: clients that receive through the service and their undelivered envelopes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "relay_clients",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("device_pk", sa.Integer(), sa.ForeignKey("devices.id", ondelete="CASCADE"),
                  nullable=False, unique=True),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "relay_messages",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("device_pk", sa.Integer(), sa.ForeignKey("devices.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("sender", sa.String(64), nullable=False),
        sa.Column("envelope", sa.LargeBinary(8192), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("relay_messages")
    op.drop_table("relay_clients")
