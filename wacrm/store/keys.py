"""The CRM idempotency keys of records we create from WhatsApp, defined once.

The inbox processor, the rules' actions and the demo all name a contact, a ticket or a
message activity by these keys; if two of them spelled a key differently, one contact would
become two CRM records and coalescing in the CRM outbox would silently stop working.
"""

from __future__ import annotations

USER_KEY_PREFIX = "user:"
TICKET_KEY_PREFIX = "wa:"
MESSAGE_KEY_PREFIX = "msg:"


def contact_record_key(phone: str | None, user_id: str | None) -> str | None:
    """A contact's key: its E.164 phone, else ``user:`` + its WhatsApp user id (username
    users without a visible number); None when it has neither."""
    if phone:
        return phone
    return USER_KEY_PREFIX + user_id if user_id else None


def ticket_record_key(provider_message_id: str) -> str:
    """The key of the ticket an inbound message opened: ``wa:`` + its provider id."""
    return TICKET_KEY_PREFIX + provider_message_id


def message_record_key(provider_message_id: str) -> str:
    """The key of a message's CRM activity: ``msg:`` + its provider id (a wamid, a Twilio
    SID). The same for inbound and outbound messages, so each status of a reply updates the
    one activity its first status created."""
    return MESSAGE_KEY_PREFIX + provider_message_id
