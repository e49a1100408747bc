"""Claim revocation (issue 14, item 2): an operator revokes an enrollment claim
(POST /claims/{id}/revoke); enrollment refuses a revoked claim.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-12
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("enrollment_claims") as batch:
        batch.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("revoke_reason", sa.String(128), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("enrollment_claims") as batch:
        batch.drop_column("revoke_reason")
        batch.drop_column("revoked_at")
