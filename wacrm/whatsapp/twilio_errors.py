"""What a sender does about each Twilio error code: a table, like :mod:`wacrm.whatsapp.errors`
is for Meta, using the same :class:`~wacrm.whatsapp.errors.SendAction` so the outbox worker
handles both providers with one set of reactions.

Twilio's REST errors are ``{"code", "message", "more_info", "status"}`` with an HTTP status;
branch on ``code``. A code not in the table is judged by the HTTP status: 429 and 5xx (and no
answer at all) are retried with backoff, 401 means the credentials, and any other 4xx is our
request (Twilio's REST API validates synchronously; retrying the same request cannot help).

Sources, each read on twilio.com/docs/api/errors/<code> (stored copies, 2026):

=====  ====================================================  =================================
code   Twilio's title                                        what the page says to do
=====  ====================================================  =================================
20429  Too many requests (HTTP 429)                          "never processed and always safe
                                                             to retry"; back off
63017  Rate limit exceeded (account > 2000 msg/s)            slow down
63018  Rate limit exceeded for Channel                       WhatsApp's rate or messaging
                                                             limit; wait (up to 24 h)
63016  Outside messaging window                              send an approved template with
                                                             ContentSid (WhatsApp's 470)
21211  Invalid 'To' Phone Number                             fix the number
21614  'To' number is not a valid mobile number              landline or invalid
63003  Channel could not find To address                     inactive or invalid To (WhatsApp
                                                             1006/1013/1021: not on WhatsApp)
63024  Invalid message recipient                             (WhatsApp 1002/1026)
63014  Channel message blocked by user action                recipient blocked or opted out
20003  Permission Denied (HTTP 401)                          wrong Account SID / Auth Token
20403  403 Forbidden                                         account suspended or closed
63007  No Channel with the specified 'From' address         From is not a WhatsApp sender
                                                             of this account (or pending)
21655  The ContentSid is Invalid                             wrong/deleted HX sid
21619  A Message Body, Media URL or Content SID is required  fix the request
21617  The concatenated message body exceeds the 1600        shorten Body to 1,600 characters
       character limit                                       (every channel, WhatsApp too)
21658  Parameter exceeded character limit                    shorten Body, or each
                                                             ContentVariables value, to 1,600
63021  Channel invalid content error                        unsupported media / too long
63012  (WhatsApp 500/1011/1014/1023, internal errors)        retry
=====  ====================================================  =================================

The WhatsApp ↔ Twilio code correspondences are from Twilio's "List of Corresponding Twilio
and WhatsApp Error Codes" (twilio.com/docs/whatsapp/api/error-code-mapping).
"""

from __future__ import annotations

from collections.abc import Mapping

from wacrm.whatsapp.errors import ErrorRule, SendAction, error_table

A = SendAction

# Codes that mean the sender (number or account) is over its rate: the whole number pauses.
THROTTLE_CODES = frozenset({20429, 63017, 63018})
CREDENTIALS_HINT = "set valid WACRM_TWILIO_ACCOUNT_SID and WACRM_TWILIO_AUTH_TOKEN"


TWILIO_ERROR_TABLE: Mapping[int, ErrorRule] = error_table(
    (
        (20429,),
        A.RETRY_BACKOFF,
        "Too many requests",
        "Too many concurrent requests to Twilio's API; the request was not processed and is "
        "retried after a backoff.",
    ),
    (
        (63017,),
        A.RETRY_BACKOFF,
        "Rate limit exceeded",
        "The Twilio account sends faster than its combined limit; sends back off.",
    ),
    (
        (63018,),
        A.RETRY_BACKOFF,
        "Rate limit exceeded for Channel",
        "The WhatsApp sender is over WhatsApp's rate or messaging limit; the number backs "
        "off. If it repeats, the messaging-limit tier is exhausted until 24 h have passed.",
    ),
    (
        (63016,),
        A.SWITCH_TO_TEMPLATE,
        "Outside messaging window",
        "More than 24 h since the user last wrote: only an approved template (ContentSid) can "
        "be sent. The template fallback is sent if the rule supplied one.",
    ),
    (
        (21211, 21614, 63003, 63024),
        A.NEVER_RETRY_FLAG_CONTACT,
        "Invalid 'To' address",
        "The recipient's number is invalid or not reachable on WhatsApp. Not retried; the "
        "contact is flagged.",
    ),
    (
        (63014,),
        A.NEVER_RETRY_FLAG_CONTACT,
        "Blocked by user action",
        "The recipient blocked the sender or withdrew consent. Not retried; the contact is "
        "flagged.",
    ),
    (
        (20003,),
        A.REFRESH_CREDENTIALS,
        "Permission denied",
        f"Twilio rejected the credentials: {CREDENTIALS_HINT}. Twilio sends pause instead of "
        "retrying in a loop.",
    ),
    (
        (20403,),
        A.HALT_ALERT,
        "Account suspended or closed",
        "The Twilio account lacks permission to use the API (suspended or closed); sending "
        "from the number is halted until ops resolve it with Twilio Support.",
    ),
    (
        (63007,),
        A.HALT_ALERT,
        "No WhatsApp sender for the From address",
        "The From number is not a (approved) WhatsApp sender of this Twilio account; sending "
        "from it is halted until the sender is set up, then resumed.",
    ),
    (
        (21655,),
        A.FIX_REQUEST,
        "The ContentSid is invalid",
        "The Content template SID does not exist in this account; fix WACRM_TWILIO_CONTENT_SIDS.",
    ),
    (
        (21619,),
        A.FIX_REQUEST,
        "Body, MediaUrl or ContentSid required",
        "The request had nothing to send; fix the request.",
    ),
    # twilio.com/docs/api/errors/21617 and support.twilio.com/hc/en-us/articles/
    # 360033806753: "Body" is at most 1,600 characters on every channel, WhatsApp included.
    (
        (21617,),
        A.FIX_REQUEST,
        "Body over 1,600 characters",
        "The message Body is longer than Twilio's 1,600-character limit (WhatsApp included); "
        "shorten the message. Not retried: the same request would be refused again.",
    ),
    # twilio.com/docs/api/errors/21658: Body, or a Content template's ContentVariables value,
    # over its limit (1,600 characters; lower for some template fields).
    (
        (21658,),
        A.FIX_REQUEST,
        "Parameter over its character limit",
        "Body or a ContentVariables value is longer than Twilio allows (1,600 characters, less "
        "for some template fields); shorten it. Not retried.",
    ),
    (
        (63021,),
        A.FIX_REQUEST,
        "Channel invalid content",
        "WhatsApp rejected the content (unsupported media type, or a template over 1024 "
        "characters); fix the message.",
    ),
    (
        (63012,),
        A.RETRY_BACKOFF,
        "Channel provider internal error",
        "WhatsApp returned an internal error through Twilio; retried with backoff.",
    ),
)

_RETRY_UNKNOWN = ErrorRule(
    None,
    A.RETRY_BACKOFF,
    "Twilio error",
    "Twilio was busy, failed, or did not answer; retried with backoff a bounded number of "
    "times, then marked failed.",
)
_AUTH_UNKNOWN = ErrorRule(
    None,
    A.REFRESH_CREDENTIALS,
    "Not authorised",
    f"Twilio answered 401: {CREDENTIALS_HINT}.",
)
_REFUSED_UNKNOWN = ErrorRule(
    None,
    A.FIX_REQUEST,
    "Twilio refused the request",
    "A Twilio error code wacrm does not know, on a request Twilio validated and refused; "
    "not retried (the same request would be refused again).",
)


def classify_twilio(code: int | None, http_status: int | None) -> ErrorRule:
    """The rule for a Twilio error ``code``; unknown codes are judged by ``http_status``
    (``None``: no answer at all, e.g. a timeout)."""
    if code is not None and code in TWILIO_ERROR_TABLE:
        return TWILIO_ERROR_TABLE[code]
    if http_status is None or http_status == 429 or http_status >= 500:
        return _RETRY_UNKNOWN
    if http_status == 401:
        return _AUTH_UNKNOWN
    return _REFUSED_UNKNOWN
