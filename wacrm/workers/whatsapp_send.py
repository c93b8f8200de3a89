"""Send one message now (``wacrm send``): through the outbox, so it is stored, paced, checked
against the 24 h window and retried by the same rules as every other send, and its status
webhooks later find it in ``messages``. It goes through the provider of the number it is
sent from: Meta's Cloud API, or Twilio for a number registered as ``twilio``."""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from wacrm.config import Settings
from wacrm.phone import PhoneError, normalize, normalize_wa_id
from wacrm.store.schema import contacts, messages, wa_outbox
from wacrm.store.whatsapp_outbox import enqueue_send
from wacrm.whatsapp.content_policy import ContentPolicy, Finding, lint_media_file
from wacrm.whatsapp.meta_bodies import (
    MediaKind,
    body_parameters,
    media_message,
    recipient,
    template_message,
    text_message,
)
from wacrm.whatsapp.meta_send import CloudApiClient
from wacrm.whatsapp.twilio_bodies import parse_content_sids, twilio_request
from wacrm.whatsapp.twilio_send import TwilioSender, whatsapp_address
from wacrm.whatsapp.twilio_webhook import WHATSAPP_PREFIX
from wacrm.workers.whatsapp_dispatch import META, TWILIO
from wacrm.workers.whatsapp_outbox import OutboxPolicy, WhatsAppOutboxWorker


@dataclass(frozen=True, slots=True)
class Route:
    """Who sends (``meta`` | ``twilio``) and from which number: a Cloud API phone number
    id, or ``whatsapp:+E164`` for Twilio (the form its webhooks name the number by)."""

    provider: str
    phone_number_id: str


def _missing(settings: Settings) -> dict[str, list[str]]:
    return {
        META: [
            name
            for name, value in (
                ("WACRM_WHATSAPP_PHONE_NUMBER_ID", settings.whatsapp_phone_number_id),
                ("WACRM_WHATSAPP_ACCESS_TOKEN", settings.whatsapp_access_token),
            )
            if not value
        ],
        TWILIO: [
            name
            for name, value in (
                ("WACRM_TWILIO_ACCOUNT_SID", settings.twilio_account_sid),
                ("WACRM_TWILIO_AUTH_TOKEN", settings.twilio_auth_token),
            )
            if not value
        ],
    }


def choose_route(settings: Settings, provider: str | None, from_number: str | None) -> Route:
    """The provider and number ``wacrm send`` uses; ``ValueError`` (one line, naming the
    settings) when that is not configured or not decidable."""
    missing = _missing(settings)
    configured = [p for p in (META, TWILIO) if not missing[p]]
    if provider is None:
        if len(configured) > 1:
            raise ValueError(
                "both Meta and Twilio are configured: choose one with --provider meta|twilio"
            )
        if not configured:
            raise ValueError(
                f"set {' and '.join(missing[META])} to send through Meta, or "
                f"{' and '.join(missing[TWILIO])} to send through Twilio"
            )
        provider = configured[0]
    elif missing.get(provider):
        raise ValueError(f"--provider {provider}: set {' and '.join(missing[provider])}")
    if provider == META:
        if from_number:
            raise ValueError("--from is for Twilio; Meta sends from WACRM_WHATSAPP_PHONE_NUMBER_ID")
        return Route(META, settings.whatsapp_phone_number_id)
    number = from_number or settings.twilio_from_number
    if not number:
        raise ValueError(
            "set WACRM_TWILIO_FROM_NUMBER or pass --from: the Twilio WhatsApp sender to send from"
        )
    try:
        e164 = recipient(number.removeprefix(WHATSAPP_PREFIX))
    except ValueError:
        raise ValueError(
            f"Twilio sender {number!r} (--from / WACRM_TWILIO_FROM_NUMBER) is not an "
            "international number: use + and the country code"
        ) from None
    return Route(TWILIO, whatsapp_address(e164))


def recipient_e164(to: str, region: str | None = None) -> str:
    """``--to`` as E.164, validated for its country (``+44 (0)20 7946 0018`` →
    ``+442079460018``); a WhatsApp id (digits, country code first) is taken as one.
    ``ValueError`` naming the number and why it is not one."""
    try:
        return normalize_wa_id(to) if to.strip().isdigit() else normalize(to, region or None)
    except PhoneError as exc:
        raise ValueError(f"--to {exc}") from None


def contact_language(engine: Engine, account_id: int, phone: str) -> str | None:
    """The language preference of the contact with ``phone``, if there is one."""
    with engine.connect() as conn:
        found = conn.execute(
            select(contacts.c.language).where(
                contacts.c.account_id == account_id, contacts.c.phone == phone
            )
        ).scalar()
    return str(found) if found else None


def local_media_findings(media: str | None, policy: ContentPolicy) -> list[Finding]:
    """Size and type findings for a local ``--media`` file, before it is uploaded (a file
    Meta would refuse is not uploaded first); none for a URL or no media."""
    if media is None or is_url(media) or not Path(media).is_file():
        return []
    path = Path(media)
    kind = media_kind(mimetypes.guess_type(path.name)[0] or "application/octet-stream")
    return lint_media_file(path, kind, policy)


def check_sendable(route: Route, body: dict[str, Any], settings: Settings) -> None:
    """Refuse now, as ``ValueError``, a body the route's provider could never send (a
    Twilio template without a Content SID, a location…), instead of queueing a failure."""
    if route.provider == TWILIO:
        twilio_request(body, parse_content_sids(settings.twilio_content_sids))


@dataclass(frozen=True, slots=True)
class SendOutcome:
    message_id: int
    outbox_id: int
    state: str  # sent | failed | pending (will be retried by the server's worker)
    provider_message_id: str | None
    error: str | None


def media_kind(mime_type: str) -> MediaKind:
    if mime_type == "image/webp":
        return "sticker"
    if mime_type.startswith("image/"):
        return "image"
    if mime_type.startswith("video/"):
        return "video"
    if mime_type.startswith("audio/"):
        return "audio"
    return "document"


def is_url(media: str) -> bool:
    return media.startswith(("http://", "https://"))


def local_media(media: str | None) -> tuple[int | None, str | None]:
    """(size in bytes, MIME type) of a local ``--media`` file; ``(None, None)`` otherwise."""
    if media is None or is_url(media):
        return None, None
    path = Path(media)
    if not path.is_file():
        return None, None
    return path.stat().st_size, mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def build_body(
    to: str,
    *,
    client: CloudApiClient | None,
    phone_number_id: str,
    text: str | None = None,
    template: str | None = None,
    language: str = "en_US",
    params: Sequence[str] = (),
    media: str | None = None,
    caption: str | None = None,
) -> tuple[dict[str, Any], str | None]:
    """(Cloud API body, text to store) for exactly one of ``text``, ``template``, ``media``.

    ``media`` is a public http(s) URL (sent as a link) or a local file, uploaded first so
    the message carries a media id; without a Cloud API ``client`` (Twilio, which fetches
    media from a URL) only a URL will do. Raises ``ValueError`` for bad input."""
    if sum(x is not None for x in (text, template, media)) != 1:
        raise ValueError("give exactly one of --text, --template or --media")
    if text is not None:
        return text_message(to, text), text
    if template is not None:
        components = body_parameters(*params) if params else ()
        return template_message(to, template, language, components), f"[template {template}]"
    assert media is not None
    if is_url(media):
        path_part = media.split("?", 1)[0].split("#", 1)[0]
        guessed = mimetypes.guess_type(path_part)[0] or "application/octet-stream"
        kind = media_kind(guessed)
        name = path_part.rsplit("/", 1)[-1] if kind == "document" else None
        return media_message(to, kind, link=media, caption=caption, filename=name), caption
    path = Path(media)
    if not path.is_file():
        raise ValueError(f"--media {media}: no such file (or give an http(s) URL)")
    if client is None:
        raise ValueError(
            f"--media {media}: Twilio sends media from a public URL; give an http(s) URL"
        )
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    kind = media_kind(mime)
    media_id = client.upload_media(phone_number_id, path.read_bytes(), mime, path.name)
    filename = path.name if kind == "document" else None
    body = media_message(to, kind, media_id=media_id, caption=caption, filename=filename)
    return body, caption


def send_now(
    engine: Engine,
    settings: Settings,
    client: CloudApiClient | None,
    body: dict[str, Any],
    *,
    account_id: int,
    phone_number_id: str | None = None,
    twilio: TwilioSender | None = None,
    provider: str = META,
    text: str | None = None,
    timeout: float = 30.0,
    policy: OutboxPolicy | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    sleep: Callable[[float], None] = time.sleep,
) -> SendOutcome:
    """Queue ``body`` from ``phone_number_id`` (default: the configured Cloud API number) and
    run the outbox until it is sent, failed, or retrying past ``timeout``.

    The number must be registered with ``provider`` (``register_number``); ``client`` sends
    for Meta, ``twilio`` for Twilio. Other rows of that provider that are due are sent too:
    they would be by the server's worker anyway, and leases keep two senders from sending
    one row twice."""
    with engine.begin() as conn:
        contact_id = conn.execute(
            select(contacts.c.id).where(
                contacts.c.account_id == account_id, contacts.c.phone == body["to"]
            )
        ).scalar()
        message_id, outbox_id = enqueue_send(
            conn,
            account_id=account_id,
            phone_number_id=phone_number_id or settings.whatsapp_phone_number_id,
            body=body,
            contact_id=contact_id,
            text=text,
            rule="cli",
            now=clock(),
        )
    worker = WhatsAppOutboxWorker(
        engine,
        settings,
        client,
        twilio=twilio,
        providers={provider},
        policy=policy,
        clock=clock,
        sleep=sleep,
    )
    try:
        return _until_settled(engine, worker, message_id, outbox_id, timeout, clock, sleep)
    finally:
        worker.release_numbers()  # the server's sender takes over the number at once


def _until_settled(
    engine: Engine,
    worker: WhatsAppOutboxWorker,
    message_id: int,
    outbox_id: int,
    timeout: float,
    clock: Callable[[], datetime],
    sleep: Callable[[float], None],
) -> SendOutcome:
    deadline = clock().timestamp() + timeout
    while True:
        worker.process_due()
        with engine.connect() as conn:
            row = conn.execute(
                select(
                    wa_outbox.c.state,
                    wa_outbox.c.next_attempt_at,
                    wa_outbox.c.last_error,
                    messages.c.provider_message_id,
                )
                .join(messages, messages.c.id == wa_outbox.c.message_id)
                .where(wa_outbox.c.id == outbox_id)
            ).one()
        waiting = row.state in ("pending", "sending")
        # Past the deadline either way: a row left unclaimed (an earlier message to the
        # recipient still waiting, a paused provider) would otherwise be waited for forever.
        if not waiting or max(row.next_attempt_at.timestamp(), clock().timestamp()) > deadline:
            return SendOutcome(
                message_id, outbox_id, row.state, row.provider_message_id, row.last_error
            )
        sleep(max(0.05, min(1.0, row.next_attempt_at.timestamp() - clock().timestamp())))
