"""The seed's five test messages, as Meta Cloud API webhook envelopes.

A "send 5 test messages" check proves a setup end to end: text, image, PDF document, video and
location, each from its own customer so each opens its own ticket.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

_counter = itertools.count(1)


@dataclass(frozen=True, slots=True)
class TestMessage:
    label: str
    phone: str  # E.164
    name: str
    type: str
    body: dict[str, Any]


TEST_MESSAGES: tuple[TestMessage, ...] = (
    TestMessage(
        "text",
        "+966501234567",
        "Layla",
        "text",
        {"body": "Hi! What's the price of the business plan?"},
    ),
    TestMessage(
        "image",
        "+14155552671",
        "Sam",
        "image",
        {
            "caption": "Is this one in stock?",
            "mime_type": "image/jpeg",
            "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "id": "1479537139650973",
        },
    ),
    TestMessage(
        "document",
        "+5511987654321",
        "Ana",
        "document",
        {
            "caption": "My invoice",
            "filename": "invoice-1042.pdf",
            "mime_type": "application/pdf",
            "sha256": "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752",
            "id": "1003384421372651",
        },
    ),
    TestMessage(
        "video",
        "+919876543210",
        "Ravi",
        "video",
        {
            "mime_type": "video/mp4",
            "sha256": "fd61a03af4f77d870fc21e05e7e80678095c92d808cfb3b5c279ee04c74aca13",
            "id": "1591318488389446",
        },
    ),
    TestMessage(
        "location",
        "+12025550143",
        "Jo",
        "location",
        {
            "latitude": 38.8977,
            "longitude": -77.0365,
            "name": "Head office",
            "address": "1600 Pennsylvania Ave NW, Washington, DC",
        },
    ),
)


def envelope(
    msg: TestMessage,
    *,
    phone_number_id: str,
    display_phone_number: str,
    wamid: str | None = None,
    timestamp: int | None = None,
) -> dict[str, Any]:
    """A webhook body exactly as Meta sends it for one inbound message."""
    wa_id = msg.phone.lstrip("+")
    wamid = wamid or f"wamid.DEMO{int(time.time() * 1000)}{next(_counter):04d}"
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": display_phone_number,
                                "phone_number_id": phone_number_id,
                            },
                            "contacts": [{"profile": {"name": msg.name}, "wa_id": wa_id}],
                            "messages": [
                                {
                                    "from": wa_id,
                                    "id": wamid,
                                    "timestamp": str(timestamp or int(time.time())),
                                    "type": msg.type,
                                    msg.type: msg.body,
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
