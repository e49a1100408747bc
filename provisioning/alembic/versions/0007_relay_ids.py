"""Relay message ids are never reused (issue 13, item 5).

SQLite: `relay_messages.id` was a plain INTEGER PRIMARY KEY, whose next rowid is max(id) + 1: once
a client's acknowledgement emptied the table, the next envelope got id 1 again, below the client's
`after=` cursor, and was never fetched. The table is rebuilt with AUTOINCREMENT (sqlite_sequence
keeps the highest id ever handed out). The old schema kept no such record, so the sequence starts
above every id an old client could hold: the old API took relay ids up to 2^31 - 1.
PostgreSQL: the SERIAL column becomes BIGINT GENERATED ALWAYS AS IDENTITY, continuing where its
sequence stood (a sequence never went back: ids there were not reused, but 32 bits run out).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# The first id the rebuilt SQLite table may hand out: above the old API's bound on relay ids
# (api/deps.py took 0..2^31 - 1), so no cursor kept from before the upgrade skips a new envelope.
SQLITE_FIRST_NEW_ID = 2**31


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("relay_messages", recreate="always",
                                  table_kwargs={"sqlite_autoincrement": True}) as batch:
            batch.alter_column("id", existing_type=sa.Integer(), existing_nullable=False)
        # the copied rows set sqlite_sequence to their max(id); an empty table left no row there
        op.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'relay_messages'"))
        op.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) SELECT 'relay_messages', "
                           "max(coalesce((SELECT max(id) FROM relay_messages), 0), :first - 1)")
                   .bindparams(first=SQLITE_FIRST_NEW_ID))
        return
    bind = op.get_bind()
    sequence = bind.execute(sa.text("SELECT pg_get_serial_sequence('relay_messages', 'id')")).scalar_one()
    start = bind.execute(sa.text("SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM %s"
                                 % sequence)).scalar_one()
    op.execute(sa.text("ALTER TABLE relay_messages ALTER COLUMN id DROP DEFAULT"))
    op.execute(sa.text("DROP SEQUENCE %s" % sequence))
    op.execute(sa.text("ALTER TABLE relay_messages ALTER COLUMN id TYPE BIGINT"))
    op.execute(sa.text("ALTER TABLE relay_messages ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY "
                       "(START WITH %d)" % int(start)))


def downgrade() -> None:
    """Back to 0006's columns (ids may be reused again; on PostgreSQL it fails while an id is
    beyond 32 bits)."""
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("relay_messages", recreate="always",
                                  table_kwargs={"sqlite_autoincrement": False}) as batch:
            batch.alter_column("id", existing_type=sa.Integer(), existing_nullable=False)
        return
    start = op.get_bind().execute(sa.text(
        "SELECT coalesce(max(id), 0) + 1 FROM relay_messages")).scalar_one()
    op.execute(sa.text("ALTER TABLE relay_messages ALTER COLUMN id DROP IDENTITY"))
    op.execute(sa.text("ALTER TABLE relay_messages ALTER COLUMN id TYPE INTEGER"))
    op.execute(sa.text("CREATE SEQUENCE relay_messages_id_seq AS INTEGER OWNED BY relay_messages.id "
                       "START WITH %d" % int(start)))
    op.execute(sa.text("ALTER TABLE relay_messages ALTER COLUMN id SET DEFAULT nextval('relay_messages_id_seq')"))
