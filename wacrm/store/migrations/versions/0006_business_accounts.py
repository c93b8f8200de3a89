"""WhatsApp Business Accounts (WABA) routed to an account: template, quality and account
updates name only the WABA

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 12:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "whatsapp_business_accounts",
        sa.Column("waba_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", _ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_whatsapp_business_accounts_account_id_accounts"),
        ),
        sa.PrimaryKeyConstraint("waba_id", name=op.f("pk_whatsapp_business_accounts")),
    )


def downgrade() -> None:
    op.drop_table("whatsapp_business_accounts")
