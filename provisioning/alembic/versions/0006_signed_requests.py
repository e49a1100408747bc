"""Single-use signed requests: SHA-256 of every accepted signed message until its timestamp
leaves the accepted window (issue 12, finding 10).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signed_requests",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("digest", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("signed_requests")
