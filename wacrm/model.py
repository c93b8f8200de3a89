"""Domain types shared by every room.

Payloads become frozen, slotted dataclasses; enums tolerate values a provider adds later
(``UNKNOWN``) so a new Meta type is stored and reported, never a crash.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class Priority(enum.StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class MessageType(enum.StrEnum):
    TEXT = "text"
    IMAGE = "image"
    DOCUMENT = "document"
    VIDEO = "video"
    AUDIO = "audio"
    STICKER = "sticker"
    LOCATION = "location"
    CONTACTS = "contacts"
    INTERACTIVE = "interactive"
    BUTTON = "button"
    REACTION = "reaction"
    ORDER = "order"
    SYSTEM = "system"
    REQUEST_WELCOME = "request_welcome"
    UNSUPPORTED = "unsupported"
    TEMPLATE = "template"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, value: str | None) -> MessageType:
        try:
            return cls(value or "unknown")
        except ValueError:
            return cls.UNKNOWN


MEDIA_TYPES = frozenset(
    {
        MessageType.IMAGE,
        MessageType.DOCUMENT,
        MessageType.VIDEO,
        MessageType.AUDIO,
        MessageType.STICKER,
    }
)


class DeliveryStatus(enum.StrEnum):
    """Outbound message status; only ever moves forward (see :func:`advance_status`)."""

    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    PLAYED = "played"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, value: str | None) -> DeliveryStatus:
        try:
            return cls(value or "unknown")
        except ValueError:
            return cls.UNKNOWN


_STATUS_RANK = {
    DeliveryStatus.UNKNOWN: -1,
    DeliveryStatus.QUEUED: 0,
    DeliveryStatus.SENT: 1,
    DeliveryStatus.DELIVERED: 2,
    DeliveryStatus.READ: 3,
    DeliveryStatus.PLAYED: 4,
}


def advance_status(current: DeliveryStatus | None, new: DeliveryStatus) -> DeliveryStatus:
    """Return the status after ``new`` arrives: forward only, ``failed`` terminal.

    Webhooks arrive in any order (a late ``sent`` must not overwrite ``delivered``), and
    ``delivered`` may never arrive at all when ``read`` comes at once.
    """
    if current is None:
        return new
    if current is DeliveryStatus.FAILED or new is DeliveryStatus.UNKNOWN:
        return current
    if new is DeliveryStatus.FAILED:
        return new
    return new if _STATUS_RANK[new] > _STATUS_RANK[current] else current


class TicketStatus(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class TaskStatus(enum.StrEnum):
    NOT_STARTED = "not_started"
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class Contact:
    """A WhatsApp contact with the seven standard CRM fields."""

    phone: str | None  # E.164; None when Meta withholds it (username users)
    wa_id: str | None = None
    user_id: str | None = None  # business-scoped user id (BSUID), e.g. "US.1349…"
    name: str | None = None
    last_interaction_at: datetime | None = None
    order_status_code: str | None = None
    priority: Priority | None = None
    language: str | None = None
    unread_count: int = 0
    tags: frozenset[str] = frozenset()
    id: int | None = None


@dataclass(frozen=True, slots=True)
class MediaRef:
    id: str | None
    mime_type: str | None = None
    sha256: str | None = None
    url: str | None = None
    caption: str | None = None
    filename: str | None = None


@dataclass(frozen=True, slots=True)
class Location:
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """One provider error (Meta ``errors[]`` element, or Twilio ``ErrorCode``/``ErrorMessage``).

    Branch on ``code`` (and ``details``), never on the title: titles change, codes do not.
    """

    code: int | None
    title: str | None = None
    message: str | None = None
    details: str | None = None
    href: str | None = None


@dataclass(frozen=True, slots=True)
class Referral:
    """Where a conversation started: a Click-to-WhatsApp ad or post (the CRM's lead source)."""

    source_url: str | None = None
    source_id: str | None = None
    source_type: str | None = None  # ad | post | unknown values kept as sent
    headline: str | None = None
    body: str | None = None
    media_type: str | None = None
    image_url: str | None = None
    video_url: str | None = None
    thumbnail_url: str | None = None
    ctwa_clid: str | None = None  # click id: ties the conversation to the ad click


@dataclass(frozen=True, slots=True)
class MessageContext:
    """What a message refers to: the message it replies to, or that it was forwarded."""

    message_id: str | None = None  # the replied-to message
    from_id: str | None = None  # who sent the replied-to message
    forwarded: bool = False
    frequently_forwarded: bool = False
    referred_product_id: str | None = None  # "message the business about this product"
    catalog_id: str | None = None


@dataclass(frozen=True, slots=True)
class Reaction:
    message_id: str | None
    emoji: str | None  # None: the reaction was removed


@dataclass(frozen=True, slots=True)
class ChoiceReply:
    """A tap on a reply button, a list row, a template quick reply, or a completed flow."""

    kind: str  # button_reply | list_reply | nfm_reply | button | unknown kinds as sent
    id: str | None  # the id (payload) we gave the choice; None for a flow reply
    title: str | None = None
    description: str | None = None
    response_json: str | None = None  # flow (nfm_reply) answers, as sent


@dataclass(frozen=True, slots=True)
class SharedContact:
    """A contact card the user sent."""

    formatted_name: str | None
    phones: tuple[str, ...] = ()
    wa_ids: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    organization: str | None = None


@dataclass(frozen=True, slots=True)
class OrderItem:
    product_retailer_id: str | None
    quantity: int | None
    item_price: float | None
    currency: str | None


@dataclass(frozen=True, slots=True)
class Order:
    catalog_id: str | None
    text: str | None
    items: tuple[OrderItem, ...] = ()


@dataclass(frozen=True, slots=True)
class SystemChange:
    """A ``system`` message: the user changed number or user id (no ``contacts`` arrive)."""

    type: str  # user_changed_number | user_changed_user_id | … as sent
    body: str | None = None
    new_wa_id: str | None = None
    new_user_id: str | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One element of ``value.messages[]`` (or a Twilio inbound form), provider-neutral."""

    provider: str
    provider_message_id: str
    phone_number_id: str  # the business number that received it: routes to the account
    from_wa_id: str | None
    from_user_id: str | None
    profile_name: str | None
    timestamp: datetime
    type: MessageType
    raw_type: str
    text: str | None = None  # body, caption or button title: what keyword rules read
    media: MediaRef | None = None
    location: Location | None = None
    context_message_id: str | None = None
    referral: dict[str, Any] | None = None
    errors: tuple[dict[str, Any], ...] = ()
    # Typed views of the parts above, and of the type-specific bodies (None when absent).
    context: MessageContext | None = None
    ad_referral: Referral | None = None
    error_details: tuple[ErrorInfo, ...] = ()
    reaction: Reaction | None = None
    choice: ChoiceReply | None = None
    shared_contacts: tuple[SharedContact, ...] = ()
    order: Order | None = None
    system: SystemChange | None = None
    identity_key_hash: str | None = None


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """One element of ``value.statuses[]``: the fate of a message we sent."""

    provider: str
    provider_message_id: str
    phone_number_id: str
    recipient_id: str | None
    status: DeliveryStatus
    raw_status: str
    timestamp: datetime
    errors: tuple[dict[str, Any], ...] = ()
    pricing: dict[str, Any] | None = None
    recipient_user_id: str | None = None  # business-scoped user id (BSUID)
    error_details: tuple[ErrorInfo, ...] = ()
    biz_opaque_callback_data: str | None = None  # echoed from our send
    conversation_id: str | None = None


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A message we intend to send; ``payload`` is the provider-neutral content."""

    to: str  # E.164 or provider id
    type: MessageType
    payload: dict[str, Any]
    reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class Ticket:
    contact_id: int
    subject: str
    status: TicketStatus = TicketStatus.OPEN
    source_message_id: str | None = None
    id: int | None = None


@dataclass(frozen=True, slots=True)
class Task:
    contact_id: int
    subject: str
    due_at: datetime
    idempotency_key: str
    owner: str | None = None
    status: TaskStatus = TaskStatus.NOT_STARTED
    id: int | None = None


@dataclass(frozen=True, slots=True)
class FieldChange:
    """A change to one contact field, from either side, with the time it was made."""

    field: str
    value: Any
    changed_at: datetime
    source: str  # "whatsapp" | "crm"


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Per-record outcome of a CRM batch write."""

    key: str
    ok: bool
    crm_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    retryable: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
