"""The WhatsApp outbox's knobs and small decisions: retry bounds and backoff, the 24 h
window, templates Meta paused, and the flag put on a contact that can't be reached."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, select

from wacrm.store.schema import contacts
from wacrm.whatsapp.meta_send import SendError

WINDOW = timedelta(hours=24)  # the customer-service window (facts/whatsapp.md §2)

# Tags put on a contact the provider says can't or won't receive messages (rules and agents
# see them): Meta's codes, then Twilio's (see wacrm.whatsapp.twilio_errors; the two code
# ranges do not overlap).
CONTACT_FLAGS = {
    131026: "wa-undeliverable",
    131050: "wa-marketing-opt-out",
    21211: "wa-undeliverable",
    21614: "wa-undeliverable",
    63003: "wa-undeliverable",
    63024: "wa-undeliverable",
    63014: "wa-blocked",
}


@dataclass(frozen=True, slots=True)
class OutboxPolicy:
    batch_size: int = 50
    max_attempts: int = 8  # tries per message before it is marked failed
    max_age: timedelta = timedelta(hours=24)  # a message not sent by then is failed
    backoff_base: float = 2.0  # seconds; doubles per attempt, with jitter
    backoff_cap: float = 900.0
    lease: timedelta = timedelta(seconds=60)  # a claimed row is reclaimable after this
    pair_delay_cap: float = 4.0**5  # 131056: 4^X s, X = consecutive hits (facts §2)
    credentials_pause: timedelta = timedelta(minutes=5)
    template_pause: timedelta = timedelta(hours=3)  # how long a paused template is avoided
    poll_interval: float = 1.0
    # How long this worker holds a number it sends from (sending_numbers), renewed while it
    # sends: the longest another sender waits for a number whose worker died.
    number_lease: timedelta = timedelta(seconds=30)
    mps: float | None = 80.0  # per business number; None: no local throughput limit
    # The pacer sends at mps × mps_headroom. At exactly the mps, sends leave 1/mps s apart
    # and a few ms of network jitter put mps + 1 into one of Meta's 1 s windows: 130429,
    # and the whole number pauses. Measured (BENCHMARKS.md, "Send pacing"; 10,000 sends to
    # 2,000 recipients at 80 mps): paced at 80, 57 × 130429 and 51.5 % of 80 mps; paced at
    # 0.97 × 80 = 77.6, none and 96.6 %.
    mps_headroom: float = 0.97
    pair_limit: bool = True  # ~1 msg / 6 s per recipient, bursts of 45 borrowing quota
    enforce_window: bool = True  # free-form only within 24 h of the user's last message

    def __post_init__(self) -> None:
        if not 0.0 < self.mps_headroom <= 1.0:
            raise ValueError("mps_headroom must be in (0, 1]")


def backoff_seconds(attempt: int, policy: OutboxPolicy, jitter: float) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random (``jitter`` ∈ [0, 1))."""
    ceiling = min(policy.backoff_cap, policy.backoff_base * 2.0 ** max(0, attempt - 1))
    return ceiling / 2.0 + ceiling / 2.0 * jitter


def template_key(body: dict[str, Any]) -> tuple[str, str] | None:
    if body.get("type") != "template":
        return None
    template = body.get("template")
    if not isinstance(template, dict):
        return None
    language = template.get("language")
    code = language.get("code") if isinstance(language, dict) else None
    return (str(template.get("name")), str(code))


@dataclass(frozen=True, slots=True)
class StoppedTemplate:
    code: int | None
    title: str
    reason: str
    until: datetime


class StoppedTemplates:
    """Templates Meta paused or disabled (132015/132016): later sends fail locally instead
    of each costing a request and a retry budget. Forgotten after ``until`` so a resumed
    template is tried again."""

    def __init__(self) -> None:
        self._stopped: dict[tuple[str, str], StoppedTemplate] = {}

    def stop(self, key: tuple[str, str] | None, exc: SendError, until: datetime) -> None:
        if key is not None:
            reason = f"template {key[0]}/{key[1]} is stopped: {exc.summary}"
            self._stopped[key] = StoppedTemplate(exc.code, exc.title, reason, until)

    def get(self, key: tuple[str, str] | None, now: datetime) -> StoppedTemplate | None:
        if key is None:
            return None
        found = self._stopped.get(key)
        if found is not None and now >= found.until:
            del self._stopped[key]
            return None
        return found


def flag_contact(conn: Connection, contact_id: int, code: int | None, now: datetime) -> None:
    """Add the tag for ``code`` to the contact (tags are a sorted JSON array)."""
    tag = CONTACT_FLAGS.get(code or 0)
    if tag is None:
        return
    raw = conn.execute(select(contacts.c.tags).where(contacts.c.id == contact_id)).scalar()
    try:
        tags = set(orjson.loads(raw or "[]"))
    except orjson.JSONDecodeError:
        tags = set()
    if tag in tags:
        return
    conn.execute(
        contacts.update()
        .where(contacts.c.id == contact_id)
        .values(tags=orjson.dumps(sorted(tags | {tag})).decode(), updated_at=now)
    )
