"""Twilio WhatsApp webhooks: ``X-Twilio-Signature`` and parsing the form posts.

Twilio posts form-urlencoded parameters: an inbound message (``MessageSid``, ``From``,
``To``, ``Body``, ``NumMedia``, ``MediaUrl{N}``…) or a status callback (``MessageSid``,
``MessageStatus``, ``ErrorCode``…). Both become the same domain events as Meta's
(:class:`~wacrm.model.InboundMessage`, :class:`~wacrm.model.StatusUpdate`).

The signature is HMAC-SHA1, keyed by the Auth Token, over the full URL Twilio called
(query string included) followed by every POST parameter sorted by name as name+value, then
base64 (facts/whatsapp.md §3). Twilio adds parameters without notice: they are signed like
any other and accepted, never refused.

Stored payloads are ``{"message": params, "received_at": unix}`` or ``{"status": params,
"received_at": unix}``: a form carries no timestamp, so the time of receipt stands in.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from wacrm.model import (
    ChoiceReply,
    DeliveryStatus,
    ErrorInfo,
    InboundMessage,
    Location,
    MediaRef,
    MessageContext,
    MessageType,
    Referral,
    StatusUpdate,
)

PROVIDER = "twilio"
SIGNATURE_HEADER = "x-twilio-signature"
WHATSAPP_PREFIX = "whatsapp:"

Params = Mapping[str, str]

# Twilio's message states → ours. Everything before "sent" is still ours to lose.
_STATUS = {
    "accepted": DeliveryStatus.QUEUED,
    "scheduled": DeliveryStatus.QUEUED,
    "queued": DeliveryStatus.QUEUED,
    "sending": DeliveryStatus.QUEUED,
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.READ,
    "undelivered": DeliveryStatus.FAILED,
    "failed": DeliveryStatus.FAILED,
    "canceled": DeliveryStatus.FAILED,
}


# -- signature -------------------------------------------------------------------------------


def twilio_signature(url: str, params: Iterable[tuple[str, str]], auth_token: str) -> str:
    """The ``X-Twilio-Signature`` Twilio sends for a form POST of ``params`` to ``url``.

    Names are sorted; a name sent more than once contributes its distinct values in sorted
    order, exactly as Twilio's SDK computes it.
    """
    values: dict[str, set[str]] = {}
    for name, value in params:
        values.setdefault(name, set()).add(value)
    data = url + "".join(name + v for name in sorted(values) for v in sorted(values[name]))
    digest = hmac.digest(auth_token.encode(), data.encode(), "sha1")
    return base64.b64encode(digest).decode()


def _url_variants(url: str) -> list[str]:
    """``url`` as given, plus without its port, or with the scheme's default port added:
    Twilio may sign either form depending on how the URL was configured (its SDK's
    validator accepts both, and so do we)."""
    parts = urlsplit(url)
    if parts.hostname is None:
        return [url]
    host, sep, port = parts.netloc.rpartition(":")
    if parts.port is not None and sep and port.isdigit():
        return [url, urlunsplit(parts._replace(netloc=host))]
    default = 443 if parts.scheme == "https" else 80
    return [url, urlunsplit(parts._replace(netloc=f"{parts.netloc}:{default}"))]


def verify_twilio_signature(
    url: str, params: Iterable[tuple[str, str]], header: str | None, auth_token: str
) -> bool:
    """Constant-time check of ``header``; fails closed without a token or a header."""
    if not auth_token or not header:
        return False
    pairs = list(params)
    expected = header.strip().encode()
    return any(
        hmac.compare_digest(twilio_signature(u, pairs, auth_token).encode(), expected)
        for u in _url_variants(url)
    )


# -- events ----------------------------------------------------------------------------------


def event_kind(params: Params) -> str:
    """``status`` for a status callback (it carries ``MessageStatus``), else ``message``."""
    return "status" if "MessageStatus" in params else "message"


def business_number(params: Params) -> str | None:
    """Our number, which routes to the account: ``To`` of an inbound message, ``From`` of a
    status callback (the message was ours). Kept as sent, e.g. ``whatsapp:+14155238886``."""
    number = params.get("From" if event_kind(params) == "status" else "To")
    return number or None


def event_id(params: Params) -> str | None:
    """The inbox key: ``MessageSid``, or ``MessageSid:MessageStatus`` for a status."""
    sid = params.get("MessageSid") or params.get("SmsSid")
    if not sid:
        return None
    if event_kind(params) == "status":
        status = params.get("MessageStatus")
        return f"{sid}:{status}" if status else None
    return sid


def inbox_payload(params: Params, received_at: datetime) -> dict[str, Any]:
    return {event_kind(params): dict(params), "received_at": int(received_at.timestamp())}


# -- parsing ---------------------------------------------------------------------------------


def _digits(address: str | None) -> str | None:
    """``whatsapp:+14155238886`` → ``14155238886`` (Meta's wa_id form)."""
    if not address:
        return None
    bare = address.removeprefix(WHATSAPP_PREFIX).strip()
    return bare.removeprefix("+") or None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _received(payload: Mapping[str, Any]) -> datetime:
    try:
        return datetime.fromtimestamp(int(payload["received_at"]), tz=UTC)
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        return datetime.now(UTC)


def _media(params: Params) -> MediaRef | None:
    if (_int(params.get("NumMedia")) or 0) < 1 or not params.get("MediaUrl0"):
        return None
    # Twilio hosts the file: the URL (HTTP Basic with the account) is the reference. A
    # caption arrives as the message's Body, as Meta's does as the media's ``caption``.
    return MediaRef(
        id=None,
        url=params["MediaUrl0"],
        mime_type=params.get("MediaContentType0"),
        caption=params.get("Body") or None,
    )


def _referral(params: Params) -> tuple[dict[str, Any] | None, Referral | None]:
    raw = {k: v for k, v in params.items() if k.startswith("Referral") and k != "ReferralNumMedia"}
    if not raw:
        return None, None
    return raw, Referral(
        source_url=raw.get("ReferralSourceUrl"),
        source_id=raw.get("ReferralSourceId"),
        source_type=raw.get("ReferralSourceType"),
        headline=raw.get("ReferralHeadline"),
        body=raw.get("ReferralBody"),
        media_type=raw.get("ReferralMediaContentType"),
        image_url=raw.get("ReferralMediaUrl"),
        ctwa_clid=raw.get("ReferralCtwaClid"),
    )


def _type(params: Params, media: MediaRef | None) -> str:
    declared = params.get("MessageType")
    if declared:
        return declared
    if media is not None:  # older payloads have no MessageType: infer from the content type
        top = (media.mime_type or "").split("/")[0]
        return {"image": "image", "video": "video", "audio": "audio"}.get(top, "document")
    if params.get("Latitude") and params.get("Longitude"):
        return "location"
    if params.get("ButtonPayload") or params.get("ButtonText"):
        return "button"
    return "text"


def _context(params: Params) -> MessageContext | None:
    replied = params.get("OriginalRepliedMessageSid")
    if not replied:
        return None
    return MessageContext(
        message_id=replied, from_id=_digits(params.get("OriginalRepliedMessageSender"))
    )


def parse_twilio_message(payload: Mapping[str, Any]) -> InboundMessage:
    """Parse one stored Twilio ``message`` event into the same type as Meta's."""
    params: Params = payload["message"]
    media = _media(params)
    raw_type = _type(params, media)
    mtype = MessageType.parse(raw_type)
    body = params.get("Body")
    choice = None
    if params.get("ButtonPayload") or params.get("ButtonText"):
        choice = ChoiceReply("button", params.get("ButtonPayload"), params.get("ButtonText"))
    location = None
    lat, lon = _float(params.get("Latitude")), _float(params.get("Longitude"))
    if lat is not None and lon is not None:
        location = Location(lat, lon, params.get("Label"), params.get("Address"))
    replied = params.get("OriginalRepliedMessageSid")
    raw_referral, referral = _referral(params)
    text = body if body else (choice.title or choice.id) if choice else None
    if text is None and location is not None:
        text = ", ".join(p for p in (location.name, location.address) if p) or None
    return InboundMessage(
        provider=PROVIDER,
        provider_message_id=str(params["MessageSid"]),
        phone_number_id=params.get("To", ""),
        from_wa_id=params.get("WaId") or _digits(params.get("From")),
        from_user_id=None,
        profile_name=params.get("ProfileName") or None,
        timestamp=_received(payload),
        type=mtype,
        raw_type=raw_type,
        text=text if text is not None or mtype is not MessageType.TEXT else "",
        media=media,
        location=location,
        context_message_id=replied,
        referral=raw_referral,
        context=_context(params),
        ad_referral=referral,
        choice=choice,
    )


def parse_twilio_status(payload: Mapping[str, Any]) -> StatusUpdate:
    """Parse one stored Twilio ``status`` event; ``ErrorCode`` is kept as the error code."""
    params: Params = payload["status"]
    raw = params.get("MessageStatus") or "unknown"
    code = _int(params.get("ErrorCode"))
    errors: tuple[dict[str, Any], ...] = ()
    details: tuple[ErrorInfo, ...] = ()
    if code is not None or params.get("ErrorMessage"):
        errors = ({"code": code, "title": params.get("ErrorMessage")},)
        details = (ErrorInfo(code=code, title=params.get("ErrorMessage")),)
    return StatusUpdate(
        provider=PROVIDER,
        provider_message_id=str(params["MessageSid"]),
        phone_number_id=params.get("From", ""),
        recipient_id=_digits(params.get("To")),
        status=_STATUS.get(raw, DeliveryStatus.UNKNOWN),
        raw_status=raw,
        timestamp=_received(payload),
        errors=errors,
        error_details=details,
    )
