"""The webhook payloads the WhatsApp sandbox posts, in Meta's shapes (facts/whatsapp.md §1):
the envelope, status updates (with pricing, and ``conversation`` before v24) and inbound
text messages."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

WINDOW_SECONDS = 24 * 3600
ERROR_CODES_URL = "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"

# Failures the sandbox reports asynchronously, as a ``failed`` status: code → (title, details)
UNDELIVERABLE = (131026, "Message undeliverable", "Message Undeliverable.")
RE_ENGAGEMENT = (
    131047,
    "Re-engagement message",
    "Message failed to send because more than 24 hours have passed since the customer last "
    "replied to this number.",
)


def business_scoped_user_id(waba_id: str, wa_id: str) -> str:
    """The user's business-scoped user id (BSUID) as Meta sends it since April 2026
    (``US.`` and 20 digits, facts/whatsapp.md): stable for one user and one business
    portfolio, different for another."""
    digest = hashlib.sha256(f"{waba_id}:{wa_id}".encode()).digest()
    return "US." + str(int.from_bytes(digest[:8], "big")).zfill(20)[-20:]


def api_major(version: str) -> int:
    """``v23.0`` → 23; anything unparsable counts as the newest."""
    match = re.match(r"v(\d+)", version)
    return int(match.group(1)) if match else 10_000


def envelope(waba_id: str, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": waba_id, "changes": [{"value": value, "field": "messages"}]}],
    }


def value_with(metadata: Mapping[str, str], key: str, items: list[Any]) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "metadata": dict(metadata), key: items}


def statuses_for(
    *,
    wamid: str,
    wa_id: str,
    callback_data: str | None,
    template: bool,
    version: str,
    accepted_at: float,
    delays: Mapping[str, float],
    failure: tuple[int, str, str] | None,
    template_category: str = "utility",
    user_id: str | None = None,
) -> list[tuple[float, dict[str, Any]]]:
    """(when, status object) for each webhook one accepted send produces; ``user_id``: the
    recipient's BSUID (``recipient_user_id``)."""
    base: dict[str, Any] = {"id": wamid, "recipient_id": wa_id}
    if user_id is not None:
        base["recipient_user_id"] = user_id
    if callback_data is not None:
        base["biz_opaque_callback_data"] = callback_data
    if failure is not None:
        code, title, details = failure
        at = accepted_at + delays.get("sent", 0.0)
        error = {
            "code": code,
            "title": title,
            "message": title,
            "error_data": {"details": details},
            "href": ERROR_CODES_URL,
        }
        return [(at, {**base, "status": "failed", "timestamp": str(int(at)), "errors": [error]})]
    category = template_category if template else "service"
    pricing = {
        "billable": template,
        "pricing_model": "PMP",
        "type": "regular" if template else "free_customer_service",
        "category": category,
    }
    out = []
    for state in ("sent", "delivered", "read"):
        if state not in delays:
            continue
        at = accepted_at + delays[state]
        status: dict[str, Any] = {**base, "status": state, "timestamp": str(int(at))}
        if state != "read":
            if api_major(version) < 24:  # v24+ omits conversation (facts §1, Status)
                conversation: dict[str, Any] = {"id": wamid[-32:], "origin": {"type": category}}
                if state == "sent":
                    conversation["expiration_timestamp"] = str(int(accepted_at) + WINDOW_SECONDS)
                status["conversation"] = conversation
            status["pricing"] = pricing
        out.append((at, status))
    return out


def inbound_text(
    *, wamid: str, wa_id: str, text: str, name: str, at: float, user_id: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(contacts, messages) for a user's text message; ``user_id``: the sender's BSUID
    (``contacts[].user_id`` and ``messages[].from_user_id``)."""
    contact: dict[str, Any] = {"profile": {"name": name}, "wa_id": wa_id}
    message: dict[str, Any] = {
        "from": wa_id,
        "id": wamid,
        "timestamp": str(int(at)),
        "type": "text",
        "text": {"body": text},
    }
    if user_id is not None:
        contact["user_id"] = message["from_user_id"] = user_id
    return [contact], [message]
