"""Device linking: links (owner, device, approving primary, approval signature) and the
rendezvous of the linking channel.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "links",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False, index=True),
        sa.Column("device_pk", sa.Integer(), sa.ForeignKey("devices.id", ondelete="CASCADE"),
                  nullable=False, unique=True),
        sa.Column("primary_pk", sa.Integer(), sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
        sa.Column("approval", sa.LargeBinary(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "rendezvous",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("slot", sa.String(8), nullable=False),
        sa.Column("data", sa.LargeBinary(2048), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.UniqueConstraint("channel", "slot"),
    )


def downgrade() -> None:
    op.drop_table("rendezvous")
    op.drop_table("links")
