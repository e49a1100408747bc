"""Enrollment with attestation: challenges, issued certificates, revocation lists, device owner,
roles, board id and registration lock, claim owner/roles/hardware requirement.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ROLES_LEN = 8 * 33


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("roles", sa.String(_ROLES_LEN), nullable=False, server_default=""))
        batch.add_column(sa.Column("board_uid", sa.LargeBinary(32), nullable=True))
        batch.add_column(sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False,
                                   server_default=sa.func.now()))
        batch.add_column(sa.Column("lock_hash", sa.String(200), nullable=False, server_default=""))
        batch.add_column(sa.Column("lock_failures", sa.Integer(), nullable=False, server_default="0"))
        batch.create_index("ix_devices_owner", ["owner"])
    with op.batch_alter_table("enrollment_claims") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("roles", sa.String(_ROLES_LEN), nullable=False, server_default=""))
        batch.add_column(sa.Column("require_hardware", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "enrollment_challenges",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("nonce", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )
    op.create_table(
        "certificates",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("device_pk", sa.Integer(), sa.ForeignKey("devices.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("serial", sa.LargeBinary(16), nullable=False, unique=True),
        sa.Column("not_before", sa.BigInteger(), nullable=False),
        sa.Column("not_after", sa.BigInteger(), nullable=False, index=True),
        sa.Column("data", sa.LargeBinary(768), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoke_reason", sa.String(128), nullable=False),
    )
    op.create_table(
        "revocation_lists",
        sa.Column("version", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("issued_at", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(9400), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("revocation_lists")
    op.drop_table("certificates")
    op.drop_table("enrollment_challenges")
    with op.batch_alter_table("enrollment_claims") as batch:
        for column in ("require_hardware", "roles", "owner"):
            batch.drop_column(column)
    with op.batch_alter_table("devices") as batch:
        batch.drop_index("ix_devices_owner")
        for column in ("lock_failures", "lock_hash", "enrolled_at", "board_uid", "roles", "owner"):
            batch.drop_column(column)
