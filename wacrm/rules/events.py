"""What the engine is shown: an event, and the contact it concerns as it stands now."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import phonenumbers

from wacrm.model import MessageType, Priority

SERVICE_WINDOW = timedelta(hours=24)


def country_of(phone: str | None) -> str | None:
    """The country of an E.164 number; from its country code alone when the number itself
    is not one phonenumbers knows (+1 → US, +966 → SA)."""
    if not phone:
        return None
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return None
    region = phonenumbers.region_code_for_number(number) or (
        phonenumbers.region_code_for_country_code(number.country_code or 0)
    )
    return str(region) if region and region != "ZZ" else None


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """An inbound message (already stored; ``row_id`` is its ``messages.id`` if known)."""

    message_id: str  # provider id (wamid)
    type: MessageType
    text: str | None
    at: datetime
    row_id: int | None = None
    opened_ticket_id: int | None = None  # the ticket this message opened, if it opened one


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """A status update of a message we sent; only ``failed`` ones trigger rules."""

    message_id: str  # provider id, or "#<row id>" for a send refused before it left
    failed: bool
    at: datetime
    error_code: str | None = None
    error_title: str | None = None
    row_id: int | None = None  # messages.id of the failed message


@dataclass(frozen=True, slots=True)
class FieldChangeEvent:
    """A contact field changed on the CRM side (after the contact mirror took it)."""

    field: str
    old: str | None
    new: str | None
    at: datetime
    change_id: str | None = None  # the CRM's id for the change, when it has one


@dataclass(frozen=True, slots=True)
class NoReplyEvent:
    """Made by the timer: the conversation episode that began with ``episode_message_id``
    (the first inbound message after our last answer) is still unanswered."""

    episode_message_id: int
    since: datetime


Event = MessageEvent | StatusEvent | FieldChangeEvent | NoReplyEvent


@dataclass(frozen=True, slots=True)
class ContactView:
    """The contact fields rules read; a snapshot, so evaluation does no I/O."""

    id: int | None
    phone: str | None = None
    wa_id: str | None = None
    user_id: str | None = None
    name: str | None = None
    language: str | None = None
    order_status_code: str | None = None
    priority: Priority | None = None
    unread_count: int = 0
    tags: frozenset[str] = frozenset()
    last_inbound_at: datetime | None = None
    last_outbound_at: datetime | None = None
    awaiting_since_id: int | None = None  # messages.id of the first unanswered inbound

    @property
    def country(self) -> str | None:
        """ISO 3166 region of the phone number (``SA`` for +966…), if it has one."""
        return country_of(self.phone)

    @property
    def recipient(self) -> str | None:
        """Where a reply goes: E.164 with ``+`` (Meta prepends our own country code
        to a number without it)."""
        if self.phone:
            return self.phone
        return f"+{self.wa_id}" if self.wa_id and self.wa_id.isdigit() else None

    def in_service_window(self, now: datetime) -> bool:
        """Free-form messages are allowed only within 24 h of the customer's last message."""
        return self.last_inbound_at is not None and now - self.last_inbound_at < SERVICE_WINDOW
