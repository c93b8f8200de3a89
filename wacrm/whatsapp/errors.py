"""What a sender does about each Cloud API error code: the table is data, not ``if`` chains.

Branch on the Graph ``code`` (plus ``error_data.details`` for humans), never on the title or
the HTTP status: Meta reuses HTTP 400 for almost everything (facts/whatsapp.md §2, Errors).
A code missing from the table gets :data:`UNKNOWN_ERROR`: retry with backoff, a bounded number
of times, because an unknown error is more often transient than permanent and the bound stops
it from spinning.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


class SendAction(enum.StrEnum):
    """What the outbox worker does with a message whose send failed."""

    RETRY_BACKOFF = "retry_backoff"  # transient: exponential backoff + jitter, bounded
    DELAY_RECIPIENT = "delay_recipient"  # pair rate: hold this recipient only (4^X s)
    SWITCH_TO_TEMPLATE = "switch_to_template"  # outside the 24 h window: template or fail
    NEVER_RETRY_FLAG_CONTACT = "never_retry_flag_contact"  # the recipient can't/won't receive
    FIX_REQUEST = "fix_request"  # our request is wrong: permanent until code/config changes
    STOP_TEMPLATE = "stop_template"  # template paused/disabled: stop using it
    REFRESH_CREDENTIALS = "refresh_credentials"  # token invalid/expired: pause, don't spin
    HALT_ALERT = "halt_alert"  # the number/account is restricted: stop sending, alert ops
    WAIT_24H = "wait_24h"  # per-user marketing limit: try again no sooner than 24 h

    @property
    def permanent(self) -> bool:
        """True when retrying the same request can never succeed."""
        return self in _PERMANENT


_PERMANENT = frozenset(
    {SendAction.NEVER_RETRY_FLAG_CONTACT, SendAction.FIX_REQUEST, SendAction.STOP_TEMPLATE}
)


@dataclass(frozen=True, slots=True)
class ErrorRule:
    code: int | None
    action: SendAction
    title: str
    explanation: str  # what a human should know or do: shown in logs and on failed messages


def error_table(
    *rows: tuple[tuple[int, ...], SendAction, str, str],
) -> Mapping[int, ErrorRule]:
    """A provider's error table from rows of (codes, action, title, explanation); a code
    listed twice is a mistake in the table, caught at import."""
    table: dict[int, ErrorRule] = {}
    for codes, action, title, explanation in rows:
        for code in codes:
            if code in table:
                raise AssertionError(f"error code {code} listed twice")
            table[code] = ErrorRule(code, action, title, explanation)
    return MappingProxyType(table)


A = SendAction

# Source: facts/whatsapp.md §2 "Errors" (Meta's error-code page). The last block (100, 131008,
# 131009, 131053) is not in that table; they are the request-validation codes Meta (and our
# sandbox) return for a malformed body, and the media-type mismatch named under "Media size".
ERROR_TABLE: Mapping[int, ErrorRule] = error_table(
    (
        (130429,),
        A.RETRY_BACKOFF,
        "Rate limit hit",
        "The number's throughput (80 msg/s by default) was reached; sends back off and the "
        "worker's token bucket keeps under the limit.",
    ),
    (
        (131056,),
        A.DELAY_RECIPIENT,
        "Pair rate limit hit",
        "Too many messages to the same user in a short time (about 1 per 6 s); only this "
        "recipient is delayed (4^X s), others continue.",
    ),
    (
        (4,),
        A.RETRY_BACKOFF,
        "Application request limit reached",
        "The app's API-call rate limit was hit; sends back off.",
    ),
    (
        (80007,),
        A.RETRY_BACKOFF,
        "WABA rate limit hit",
        "The WhatsApp Business Account's rate limit was hit; sends back off. Reduce the "
        "sending frequency if this repeats.",
    ),
    (
        (131048,),
        A.HALT_ALERT,
        "Spam rate limit hit",
        "Meta restricts this number for quality (spam reports). Sending is stopped for the "
        "number so quality does not drop further: stop the campaign and check the quality "
        "rating in WhatsApp Manager, then resume.",
    ),
    (
        (131047,),
        A.SWITCH_TO_TEMPLATE,
        "Re-engagement message",
        "More than 24 h have passed since the user last wrote: only an approved template can "
        "be sent. The template fallback is sent if the rule supplied one.",
    ),
    (
        (131026,),
        A.NEVER_RETRY_FLAG_CONTACT,
        "Message undeliverable",
        "The recipient can't receive it (not on WhatsApp, old client, or terms not accepted). "
        "Not retried; the contact is flagged.",
    ),
    (
        (132000,),
        A.FIX_REQUEST,
        "Template param count mismatch",
        "The number of template parameters does not match the approved template; fix the "
        "rule or template.",
    ),
    (
        (132001,),
        A.FIX_REQUEST,
        "Template does not exist",
        "The template is not approved for this name and language; fix the template name or "
        "language code.",
    ),
    (
        (132012,),
        A.FIX_REQUEST,
        "Template parameter format mismatch",
        "A template parameter has the wrong format; fix the rule's parameters.",
    ),
    (
        (132015,),
        A.STOP_TEMPLATE,
        "Template is paused",
        "Meta paused the template for low quality; it is not used until it is resumed.",
    ),
    (
        (132016,),
        A.STOP_TEMPLATE,
        "Template is disabled",
        "Meta disabled the template for low quality; replace it with another template.",
    ),
    (
        (368,),
        A.HALT_ALERT,
        "Temporarily blocked for policies violations",
        "The WhatsApp Business Account is restricted or disabled for a policy violation; "
        "sending is halted for the number until ops resolve it in Business Manager.",
    ),
    (
        (131031,),
        A.HALT_ALERT,
        "Account has been locked",
        "The business account is locked; sending is halted until ops resolve it with Meta.",
    ),
    (
        (131050,),
        A.NEVER_RETRY_FLAG_CONTACT,
        "User stopped marketing messages",
        "The user opted out of marketing messages; never retried, and the opt-out is "
        "recorded on the contact.",
    ),
    (
        (131049,),
        A.WAIT_24H,
        "Per-user marketing limit",
        "Meta limits how many marketing messages one user gets; retried no sooner than 24 h.",
    ),
    (
        (1, 2, 131000, 131016, 131057),
        A.RETRY_BACKOFF,
        "Temporary error",
        "A temporary, unknown or maintenance error at Meta (131057: throughput upgrade in "
        "progress); retried with backoff.",
    ),
    (
        (0, 190),
        A.REFRESH_CREDENTIALS,
        "Access token invalid or expired",
        "Authentication failed: set a valid WACRM_WHATSAPP_ACCESS_TOKEN. Sending pauses "
        "instead of retrying in a loop.",
    ),
    (
        (100,),
        A.FIX_REQUEST,
        "Invalid parameter",
        "The request body has an invalid or missing parameter; fix the request.",
    ),
    (
        (131008,),
        A.FIX_REQUEST,
        "Required parameter is missing",
        "The request body lacks a required parameter; fix the request.",
    ),
    (
        (131009,),
        A.FIX_REQUEST,
        "Parameter value is not valid",
        "A parameter value is invalid (for example a phone number without its country code, "
        "or text over 4096 characters); fix the request.",
    ),
    (
        (131053,),
        A.FIX_REQUEST,
        "Media upload error",
        "The media could not be used (type does not match its content, or too large).",
    ),
)

UNKNOWN_ERROR = ErrorRule(
    None,
    SendAction.RETRY_BACKOFF,
    "Unknown error",
    "An error code wacrm does not know (or no response at all); retried with backoff a "
    "bounded number of times, then marked failed.",
)


def classify(code: int | None) -> ErrorRule:
    """The rule for a Graph error ``code``; unknown codes and ``None`` get :data:`UNKNOWN_ERROR`."""
    if code is None:
        return UNKNOWN_ERROR
    return ERROR_TABLE.get(code, UNKNOWN_ERROR)
