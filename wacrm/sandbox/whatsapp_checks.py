"""What the WhatsApp sandbox refuses, and how: Graph error envelopes, request validation and
the sending limits (throughput, pair rate).

This is written independently of wacrm's own sender (:mod:`wacrm.whatsapp.meta_bodies`, the
outbox worker's pacing): the sandbox is the oracle the sender is tested against, so sharing
code would let one bug hide another. Codes and shapes follow facts/whatsapp.md §2; where Meta
documents no exact message text the wording here is ours.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any

MAX_TEXT_BODY = 4096
MAX_CAPTION = 1024
MAX_CALLBACK_DATA = 512
MESSAGE_TYPES = frozenset(
    {
        "audio",
        "contacts",
        "document",
        "image",
        "interactive",
        "location",
        "reaction",
        "sticker",
        "template",
        "text",
        "video",
    }
)
MEDIA_TYPES = frozenset({"audio", "document", "image", "sticker", "video"})


class GraphError(Exception):
    """A refusal, rendered as Meta's Graph error envelope."""

    def __init__(
        self,
        http_status: int,
        code: int,
        message: str,
        *,
        details: str | None = None,
        subcode: int | None = None,
        error_type: str = "OAuthException",
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message
        self.details = details
        self.subcode = subcode
        self.error_type = error_type

    def body(self, fbtrace_id: str) -> dict[str, Any]:
        err: dict[str, Any] = {
            "message": f"(#{self.code}) {self.message}" if self.code != 190 else self.message,
            "type": self.error_type,
            "code": self.code,
        }
        if self.details is not None:
            err["error_data"] = {"messaging_product": "whatsapp", "details": self.details}
        if self.subcode is not None:
            err["error_subcode"] = self.subcode
        err["fbtrace_id"] = fbtrace_id
        return {"error": err}


def invalid_token() -> GraphError:
    return GraphError(401, 190, "Invalid OAuth access token - Cannot parse access token")


def unknown_object(object_id: str) -> GraphError:
    # Graph's answer for an id the token can't see: HTTP 400, code 100, subcode 33.
    return GraphError(
        400,
        100,
        f"Unsupported post request. Object with ID '{object_id}' does not exist, cannot be "
        "loaded due to missing permissions, or does not support this operation.",
        subcode=33,
        error_type="GraphMethodException",
    )


def check_bearer(header: str | None, expected: str) -> None:
    import hmac

    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token or not expected:
        raise invalid_token()
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise invalid_token()


def _missing(param: str) -> GraphError:
    return GraphError(
        400, 131008, "Required parameter is missing", details=f"The parameter {param} is required."
    )


def _invalid(details: str) -> GraphError:
    return GraphError(400, 131009, "Parameter value is not valid", details=details)


def _bad_param(message: str) -> GraphError:
    return GraphError(400, 100, "Invalid parameter", details=message)


_NUMBER_PUNCTUATION = re.compile(r"[\s\-().]")


def recipient_digits(to: Any) -> str:
    """The wa_id for ``to``: digits with the country code first (``+`` optional)."""
    if not isinstance(to, str) or not to.strip():
        raise _bad_param("The parameter to is required.")
    digits = _NUMBER_PUNCTUATION.sub("", to).removeprefix("+")
    if not digits.isdigit() or digits.startswith("0") or not 8 <= len(digits) <= 15:
        raise _invalid(f"Recipient phone number {to!r} is not valid: send + and the country code.")
    return digits


@dataclass(frozen=True, slots=True)
class ValidMessage:
    to: str
    wa_id: str
    type: str
    callback_data: str | None
    template: tuple[str, str] | None  # (name, language code)


def _obj(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    if value is None:
        raise _missing(key)
    if not isinstance(value, dict):
        raise _bad_param(f"Param {key} must be an object.")
    return value


def _text(obj: dict[str, Any], key: str, where: str, limit: int, required: bool = True) -> None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _missing(f"{where}['{key}']")
        return
    if not isinstance(value, str) or (required and not value):
        raise _invalid(f"Param {where}['{key}'] must be a non-empty string.")
    if len(value) > limit:
        raise _invalid(f"Param {where}['{key}'] must be at most {limit} characters long.")


def _check_media(kind: str, obj: dict[str, Any]) -> None:
    if ("id" in obj) == ("link" in obj):
        raise _invalid(f"Param {kind} must have exactly one of id or link.")
    link = obj.get("link")
    if link is not None and not (
        isinstance(link, str) and link.startswith(("http://", "https://"))
    ):
        raise _invalid(f"Param {kind}['link'] must be an http(s) URL.")
    _text(obj, "caption", kind, MAX_CAPTION, required=False)


def _check_interactive(obj: dict[str, Any]) -> None:
    kind = obj.get("type")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise _missing("interactive['body']")
    _text(body, "text", "interactive['body']", 1024)
    action = obj.get("action")
    if not isinstance(action, dict):
        raise _missing("interactive['action']")
    if kind == "button":
        buttons = action.get("buttons")
        if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
            raise _invalid("Param interactive['action']['buttons'] must have 1 to 3 buttons.")
        for button in buttons:
            reply = button.get("reply") if isinstance(button, dict) else None
            if not isinstance(reply, dict):
                raise _missing("interactive['action']['buttons'][]['reply']")
            _text(reply, "title", "button['reply']", 20)
            _text(reply, "id", "button['reply']", 256)
    elif kind == "list":
        sections = action.get("sections")
        if not isinstance(sections, list) or not sections:
            raise _missing("interactive['action']['sections']")
        rows = [r for s in sections if isinstance(s, dict) for r in s.get("rows") or []]
        if not 1 <= len(rows) <= 10:
            raise _invalid("Param interactive['action']['sections'] must have 1 to 10 rows.")
        _text(action, "button", "interactive['action']", 20)
    elif kind not in ("cta_url", "flow", "product", "product_list", "location_request_message"):
        raise _bad_param(f"Param interactive['type'] is not valid: {kind!r}.")


def validate_message(doc: Any) -> ValidMessage:
    """Check a send body the way the Cloud API does; raise :class:`GraphError` if refused."""
    if not isinstance(doc, dict):
        raise _bad_param("The request body must be a JSON object.")
    if doc.get("messaging_product") != "whatsapp":
        if "messaging_product" not in doc:
            raise GraphError(400, 100, "The parameter messaging_product is required.")
        raise GraphError(400, 100, "Param messaging_product must be one of {WHATSAPP}.")
    if doc.get("recipient_type", "individual") != "individual":
        raise _invalid("The sandbox serves recipient_type 'individual' only.")
    if "to" not in doc:
        raise GraphError(400, 100, "The parameter to is required.")
    wa_id = recipient_digits(doc["to"])
    kind = doc.get("type", "text")  # Meta defaults a missing type to text
    if kind not in MESSAGE_TYPES:
        raise _bad_param(f"Param type must be one of {sorted(MESSAGE_TYPES)} - got {kind!r}.")
    obj = _obj(doc, kind)
    template = None
    if kind == "text":
        _text(obj, "body", "text", MAX_TEXT_BODY)
    elif kind in MEDIA_TYPES:
        _check_media(kind, obj)
    elif kind == "location":
        for key in ("latitude", "longitude"):
            if not isinstance(obj.get(key), int | float | str):
                raise _missing(f"location['{key}']")
    elif kind == "template":
        _text(obj, "name", "template", 512)
        language = obj.get("language")
        if not isinstance(language, dict) or not language.get("code"):
            raise _missing("template['language']['code']")
        template = (str(obj["name"]), str(language["code"]))
    elif kind == "interactive":
        _check_interactive(obj)
    callback = doc.get("biz_opaque_callback_data")
    if callback is not None and (not isinstance(callback, str) or len(callback) > 512):
        raise _invalid("Param biz_opaque_callback_data must be a string of at most 512 characters.")
    return ValidMessage(str(doc["to"]), wa_id, kind, callback, template)


def throughput_error() -> GraphError:
    return GraphError(
        400,
        130429,
        "Rate limit hit",
        details="Cloud API message throughput has been reached.",
    )


def pair_rate_error() -> GraphError:
    return GraphError(
        400,
        131056,
        "(Business Account, Consumer Account) pair rate limit hit",
        details="Message failed to send because there were too many messages sent from this "
        "phone number to the same phone number in a short period of time.",
    )


def template_missing_error(name: str, language: str) -> GraphError:
    return GraphError(
        400,
        132001,
        "Template name does not exist in the translation",
        details=f"template name ({name}) does not exist in {language}",
    )


class Throughput:
    """Sends per number in the last second (sliding window), refused past ``mps``."""

    def __init__(self, mps: int) -> None:
        self.mps = mps
        self._times: dict[str, deque[float]] = {}

    def admit(self, phone_number_id: str, now: float) -> bool:
        times = self._times.setdefault(phone_number_id, deque())
        while times and times[0] <= now - 1.0 + 1e-6:  # a microsecond counts as "same time"
            times.popleft()
        if len(times) >= self.mps:
            return False
        times.append(now)
        return True


class PairRate:
    """≈1 message per ``interval`` to one user; a burst of up to ``burst`` within one
    interval is allowed but *borrows* future quota: afterwards the user is paced as if each
    message of the burst had been sent one interval apart (facts/whatsapp.md §2 Pair rate)."""

    def __init__(self, interval: float = 6.0, burst: int = 45) -> None:
        self.interval = interval
        self.burst = burst
        self._state: dict[tuple[str, str], tuple[float, float, int]] = {}  # tat, start, count

    def admit(self, phone_number_id: str, wa_id: str, now: float) -> bool:
        key = (phone_number_id, wa_id)
        tat, start, count = self._state.get(key, (now, now, 0))
        if now >= tat:  # quota caught up: a new burst may begin
            tat, start, count = now, now, 0
        in_burst = now - start < self.interval and count < self.burst
        if not in_burst and now < tat - self.interval:
            return False
        self._state[key] = (max(tat, now) + self.interval, start, count + 1)
        return True
