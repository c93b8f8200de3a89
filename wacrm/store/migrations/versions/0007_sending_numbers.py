"""One sender per business number (a lease), and halts that outlive a restart

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 12:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sending_numbers",
        sa.Column("phone_number_id", sa.String(length=64), nullable=False),
        sa.Column("sender", sa.String(length=120), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("halted_reason", sa.Text(), nullable=True),
        sa.Column("halted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("phone_number_id", name=op.f("pk_sending_numbers")),
    )


def downgrade() -> None:
    op.drop_table("sending_numbers")
