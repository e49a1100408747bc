"""Devices, enrollment claims, signed and one-time prekeys, revocations.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("device_id", sa.String(64), nullable=False, unique=True),
        sa.Column("fleet", sa.String(64), nullable=False, index=True),
        sa.Column("ik_pub", sa.LargeBinary(32), nullable=False),
        sa.Column("is_pub", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("fingerprint", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_signed_at", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "enrollment_claims",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("fleet", sa.String(64), nullable=False, index=True),
        sa.Column("label", sa.String(128), nullable=False),
        sa.Column("quota", sa.Integer(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "signed_prekeys",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("device_pk", sa.Integer(), sa.ForeignKey("devices.id", ondelete="CASCADE"),
                  nullable=False, unique=True),
        sa.Column("spk_id", sa.BigInteger(), nullable=False),
        sa.Column("spk_pub", sa.LargeBinary(32), nullable=False),
        sa.Column("spk_sig", sa.LargeBinary(64), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "one_time_prekeys",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("device_pk", sa.Integer(), sa.ForeignKey("devices.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("opk_id", sa.BigInteger(), nullable=False),
        sa.Column("opk_pub", sa.LargeBinary(32), nullable=False),
        sa.UniqueConstraint("device_pk", "opk_id"),
    )
    op.create_table(
        "revocations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("device_pk", sa.Integer(), sa.ForeignKey("devices.id", ondelete="CASCADE"),
                  nullable=False, unique=True),
        sa.Column("reason", sa.String(128), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    for table in ("revocations", "one_time_prekeys", "signed_prekeys", "enrollment_claims", "devices"):
        op.drop_table(table)
