"""The store's tables (SQLAlchemy Core). Every row belongs to an account.

The schema is changed only through Alembic migrations in ``store/migrations/versions``;
this module is the current picture, used by queries and by the migration autogenerate check.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# BigInteger ids that are still INTEGER PRIMARY KEY (rowid) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected datetime, got {type(value).__name__}")
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware UTC datetime")
        utc: datetime = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite via raw SQL
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        result: datetime = value
        return result.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(name: str, nullable: bool = True) -> Column[datetime]:
    return Column(name, UtcDateTime(), nullable=nullable)


accounts = Table(
    "accounts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("crm", String(40), nullable=False, server_default="local"),
    # The CRM's own id for this account (HubSpot portal id, Salesforce org id, Zoho org id,
    # Dynamics organization): how a CRM change webhook finds the account it is about.
    Column("crm_tenant", String(120)),
    _ts("created_at", nullable=False),
    UniqueConstraint("crm", "crm_tenant", name="uq_accounts_crm_tenant"),
)

# A WhatsApp business number (Meta phone_number_id, or a Twilio sender) routes to one account.
whatsapp_numbers = Table(
    "whatsapp_numbers",
    metadata,
    Column("phone_number_id", String(64), primary_key=True),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("provider", String(20), nullable=False, server_default="meta"),
    Column("display_phone_number", String(32)),
)

# A WhatsApp Business Account (WABA) routes to one account: template, quality and account
# updates name only the WABA (entry.id), no phone_number_id.
whatsapp_business_accounts = Table(
    "whatsapp_business_accounts",
    metadata,
    Column("waba_id", String(64), primary_key=True),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
)

# One row per provider event id (message wamid, or wamid:status for a status update).
inbox = Table(
    "inbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("provider", String(20), nullable=False),
    # message | status | error | field:<name> (Meta field names run to 30+ characters)
    Column("kind", String(64), nullable=False),
    Column("event_id", String(255), nullable=False),
    Column("payload", Text, nullable=False),  # JSON of the element plus its envelope context
    Column("state", String(20), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("error", Text),
    _ts("received_at", nullable=False),
    _ts("processed_at"),
    UniqueConstraint("account_id", "provider", "kind", "event_id", name="uq_inbox_event"),
)
Index("ix_inbox_pending", inbox.c.state, inbox.c.id)

# Input we could not accept or process, kept with its reason so nothing is silently lost.
quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", Id, ForeignKey("accounts.id")),
    Column("source", String(40), nullable=False),
    Column("reason", Text, nullable=False),
    Column("payload", Text, nullable=False),
    _ts("created_at", nullable=False),
)

contacts = Table(
    "contacts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("phone", String(32)),
    Column("wa_id", String(64)),
    Column("user_id", String(64)),
    Column("name", String(255)),
    _ts("last_interaction_at"),
    _ts("last_inbound_at"),
    _ts("last_outbound_at"),
    Column("order_status_code", String(64)),
    Column("priority", String(10)),
    Column("language", String(16)),
    Column("unread_count", Integer, nullable=False, server_default="0"),
    Column("tags", Text, nullable=False, server_default="[]"),  # JSON array, sorted
    # The tags as last seen equal in the mirror and the CRM: the base of the three-way merge
    # that lets a removal on either side stick (NULL: never seen equal; sets are then unioned).
    Column("tags_synced", Text),
    Column("crm_id", String(64)),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
    UniqueConstraint("account_id", "phone", name="uq_contacts_phone"),
    UniqueConstraint("account_id", "user_id", name="uq_contacts_user_id"),
)
# The sync loop finds a contact by the id the CRM gave it (reads back, confirmations).
Index("ix_contacts_crm_id", contacts.c.account_id, contacts.c.crm_id)

messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("contact_id", Id, ForeignKey("contacts.id")),
    Column("direction", String(3), nullable=False),  # in | out
    Column("provider", String(20), nullable=False),
    Column("provider_message_id", String(255)),
    Column("type", String(32), nullable=False),
    Column("text", Text),
    Column("payload", Text, nullable=False),
    Column("status", String(16), nullable=False),
    _ts("status_at"),
    Column("error_code", String(32)),
    Column("error_title", Text),
    Column("rule", String(120)),  # the rule that produced an outbound message
    Column("in_reply_to", Id),  # inbound messages.id that triggered it
    _ts("created_at", nullable=False),
    _ts("sent_at"),
    UniqueConstraint("account_id", "provider_message_id", name="uq_messages_provider_id"),
)
Index("ix_messages_contact", messages.c.contact_id, messages.c.created_at)

tickets = Table(
    "tickets",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("contact_id", Id, ForeignKey("contacts.id"), nullable=False),
    Column("subject", Text, nullable=False),
    Column("status", String(16), nullable=False, server_default="open"),
    Column("source_message_id", String(255)),
    Column("crm_id", String(64)),
    _ts("created_at", nullable=False),
    _ts("closed_at"),
    UniqueConstraint("account_id", "source_message_id", name="uq_tickets_source"),
)
# At most one open ticket per contact, enforced by the database, not by a race-prone check.
Index(
    "uq_tickets_one_open",
    tickets.c.account_id,
    tickets.c.contact_id,
    unique=True,
    sqlite_where=text("status = 'open'"),
    postgresql_where=text("status = 'open'"),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("contact_id", Id, ForeignKey("contacts.id"), nullable=False),
    Column("subject", Text, nullable=False),
    Column("owner", String(120)),
    _ts("due_at", nullable=False),
    Column("status", String(16), nullable=False, server_default="not_started"),
    Column("idempotency_key", String(255), nullable=False),
    Column("crm_id", String(64)),
    _ts("created_at", nullable=False),
    UniqueConstraint("account_id", "idempotency_key", name="uq_tasks_key"),
)

# Outbound WhatsApp sends waiting for (or retrying) the provider.
wa_outbox = Table(
    "wa_outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("message_id", Id, ForeignKey("messages.id"), nullable=False, unique=True),
    Column("phone_number_id", String(64), nullable=False),
    Column("recipient", String(64), nullable=False),
    Column("request", Text, nullable=False),  # JSON body for the provider's send API
    # JSON template body sent instead when ``request`` is free-form and the user's 24 h
    # customer-service window is closed (131047); NULL: no fallback, the send fails.
    Column("fallback_request", Text),
    Column("state", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    _ts("next_attempt_at", nullable=False),
    Column("last_error", Text),
    _ts("created_at", nullable=False),
)
Index("ix_wa_outbox_due", wa_outbox.c.state, wa_outbox.c.next_attempt_at)

# Who sends from a business number now, and whether sending from it is halted. The mps and
# pair limits are per number, and two senders each pacing for itself send twice the rate, so
# one outbox worker at a time holds a number (a lease, renewed while it sends), across
# processes and machines. A halt (account restricted, number not registered…) stays until
# ops resume the number (`wacrm numbers resume`), whatever restarts in between.
sending_numbers = Table(
    "sending_numbers",
    metadata,
    Column("phone_number_id", String(64), primary_key=True),
    Column("sender", String(120)),  # the outbox worker holding the lease
    _ts("lease_until"),
    Column("halted_reason", Text),
    _ts("halted_at"),
)

# Changes waiting to be written to the CRM; one pending row per record (coalesced).
crm_outbox = Table(
    "crm_outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("object", String(40), nullable=False),  # contacts | tickets | tasks
    Column("record_key", String(255), nullable=False),  # idempotency key for the CRM write
    Column("operation", String(16), nullable=False),  # upsert | create
    Column("payload", Text, nullable=False),
    Column("state", String(16), nullable=False, server_default="pending"),
    Column("urgent", Integer, nullable=False, server_default="0"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    _ts("next_attempt_at", nullable=False),
    Column("error_code", String(64)),
    Column("last_error", Text),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
)
Index(
    "uq_crm_outbox_pending",
    crm_outbox.c.account_id,
    crm_outbox.c.object,
    crm_outbox.c.record_key,
    unique=True,
    sqlite_where=text("state = 'pending'"),
    postgresql_where=text("state = 'pending'"),
)
Index("ix_crm_outbox_due", crm_outbox.c.state, crm_outbox.c.next_attempt_at)

# Sync bookmarks per (account, CRM object, direction).
cursors = Table(
    "cursors",
    metadata,
    Column("account_id", Id, ForeignKey("accounts.id"), primary_key=True),
    Column("connector", String(40), primary_key=True),
    Column("object", String(40), primary_key=True),
    Column("direction", String(8), primary_key=True),  # in | out
    Column("value", Text, nullable=False),
    _ts("updated_at", nullable=False),
)

# The embedded CRM ("local" connector): generic objects with JSON properties, like a real CRM.
local_crm_records = Table(
    "local_crm_records",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("object", String(40), nullable=False),
    Column("external_id", String(255), nullable=False),
    Column("properties", Text, nullable=False),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
    UniqueConstraint("account_id", "object", "external_id", name="uq_local_crm_records_key"),
)
Index(
    "ix_local_crm_modified",
    local_crm_records.c.account_id,
    local_crm_records.c.object,
    local_crm_records.c.updated_at,
)

# Custom properties installed into the embedded CRM (what installers create in a real one).
local_crm_properties = Table(
    "local_crm_properties",
    metadata,
    Column("account_id", Id, ForeignKey("accounts.id"), primary_key=True),
    Column("object", String(40), primary_key=True),
    Column("name", String(120), primary_key=True),
    Column("label", String(255), nullable=False),
    Column("type", String(40), nullable=False),
    Column("options", Text, nullable=False, server_default="[]"),
)

# Each time a rule fired, keyed so that it fires once per event or episode: re-running the
# engine (a restart, a redelivered webhook, the next timer tick) finds the row and does nothing.
rule_firings = Table(
    "rule_firings",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("rule", String(120), nullable=False),
    Column("firing_key", String(255), nullable=False),
    Column("contact_id", Id, ForeignKey("contacts.id")),
    Column("message_id", Id),  # messages.id the firing is about (the no-reply episode start)
    _ts("fired_at", nullable=False),
    UniqueConstraint("account_id", "rule", "firing_key", name="uq_rule_firings_key"),
)
Index("ix_rule_firings_message", rule_firings.c.rule, rule_firings.c.message_id)

# Events that rules emit for REST-hook subscribers; delivery reads them in id order.
rule_events = Table(
    "rule_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("contact_id", Id, ForeignKey("contacts.id")),
    Column("rule", String(120), nullable=False),
    Column("name", String(80), nullable=False),
    Column("payload", Text, nullable=False),
    _ts("created_at", nullable=False),
)
Index("ix_rule_events_account", rule_events.c.account_id, rule_events.c.id)
# The rule timer scans recent inbound messages for unanswered conversations.
Index("ix_messages_direction_created", messages.c.direction, messages.c.created_at)

# Inbound media (image, document, video, audio, sticker) fetched from the provider and kept
# under ``settings.media_dir``: one row per message, retried with backoff until stored or
# given up with the reason. The message itself is never held back by its attachment.
media = Table(
    "media",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("message_id", Id, ForeignKey("messages.id"), nullable=False),
    Column("provider", String(20), nullable=False),
    Column("provider_message_id", String(255), nullable=False),
    Column("media_id", String(255)),
    Column("mime_type", String(255)),
    Column("sha256", String(128)),  # as announced in the webhook; checked against the bytes
    Column("file_size", BigInteger),
    Column("path", Text),  # relative to media_dir once stored
    Column("state", String(16), nullable=False, server_default="pending"),  # stored | failed
    Column("attempts", Integer, nullable=False, server_default="0"),
    _ts("next_attempt_at", nullable=False),
    Column("error", Text),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
    UniqueConstraint("account_id", "provider_message_id", name="uq_media_message"),
)
Index("ix_media_due", media.c.state, media.c.next_attempt_at)

# REST-hook subscribers (Zapier-style): a target URL that receives the rule events it asked
# for, signed with its own secret. ``delivered_through`` is the last rule_events.id fanned out
# to it; a new subscription starts at the newest event (it gets what happens from now on).
hook_subscriptions = Table(
    "hook_subscriptions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("event", String(80), nullable=False),  # a rule event name, or "*" for all
    Column("target_url", Text, nullable=False),
    Column("secret", Text, nullable=False),  # HMAC key for X-Wacrm-Signature, encrypted
    Column("state", String(16), nullable=False, server_default="active"),  # active | disabled
    Column("disabled_reason", Text),
    Column("delivered_through", BigInteger, nullable=False, server_default="0"),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
)
Index("ix_hook_subscriptions_account", hook_subscriptions.c.account_id, hook_subscriptions.c.state)

# One delivery of one rule event to one subscription, retried with backoff until the target
# answers 2xx, or dead with the last status and error (a 410 Gone unsubscribes the target).
hook_deliveries = Table(
    "hook_deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("subscription_id", Id, ForeignKey("hook_subscriptions.id"), nullable=False),
    Column("event_id", Id, ForeignKey("rule_events.id"), nullable=False),
    Column("state", String(16), nullable=False, server_default="pending"),  # delivered | dead
    Column("attempts", Integer, nullable=False, server_default="0"),
    _ts("next_attempt_at", nullable=False),
    Column("last_status", Integer),
    Column("last_error", Text),
    _ts("created_at", nullable=False),
    _ts("delivered_at"),
    UniqueConstraint("subscription_id", "event_id", name="uq_hook_deliveries_event"),
)
Index("ix_hook_deliveries_due", hook_deliveries.c.state, hook_deliveries.c.next_attempt_at)
