"""REST-hook subscriptions and deliveries; the CRM tenant of an account; contacts by crm_id,
and their tags as last synced (the base of the three-way tag merge)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 03:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("crm_tenant", sa.String(length=120), nullable=True))
        batch_op.create_unique_constraint("uq_accounts_crm_tenant", ["crm", "crm_tenant"])
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tags_synced", sa.Text(), nullable=True))
        batch_op.create_index("ix_contacts_crm_id", ["account_id", "crm_id"], unique=False)

    op.create_table(
        "hook_subscriptions",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("account_id", _ID, nullable=False),
        sa.Column("event", sa.String(length=80), nullable=False),
        sa.Column("target_url", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="active", nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("delivered_through", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_hook_subscriptions_account_id_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hook_subscriptions")),
    )
    with op.batch_alter_table("hook_subscriptions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_hook_subscriptions_account", ["account_id", "state"], unique=False
        )

    op.create_table(
        "hook_deliveries",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("account_id", _ID, nullable=False),
        sa.Column("subscription_id", _ID, nullable=False),
        sa.Column("event_id", _ID, nullable=False),
        sa.Column("state", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_hook_deliveries_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["hook_subscriptions.id"],
            name=op.f("fk_hook_deliveries_subscription_id_hook_subscriptions"),
        ),
        sa.ForeignKeyConstraint(
            ["event_id"], ["rule_events.id"], name=op.f("fk_hook_deliveries_event_id_rule_events")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hook_deliveries")),
        sa.UniqueConstraint("subscription_id", "event_id", name="uq_hook_deliveries_event"),
    )
    with op.batch_alter_table("hook_deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_hook_deliveries_due", ["state", "next_attempt_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("hook_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_hook_deliveries_due")
    op.drop_table("hook_deliveries")
    with op.batch_alter_table("hook_subscriptions", schema=None) as batch_op:
        batch_op.drop_index("ix_hook_subscriptions_account")
    op.drop_table("hook_subscriptions")
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_index("ix_contacts_crm_id")
        batch_op.drop_column("tags_synced")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_constraint("uq_accounts_crm_tenant", type_="unique")
        batch_op.drop_column("crm_tenant")
