"""Send one message now (``wacrm send``): through the outbox, so it is stored, paced, checked
against the 24 h window and retried by the same rules as every other send, and its status
webhooks later find it in ``messages``."""

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
from wacrm.store.schema import contacts, messages, wa_outbox
from wacrm.store.whatsapp_outbox import enqueue_send
from wacrm.whatsapp.meta_bodies import (
    MediaKind,
    body_parameters,
    media_message,
    template_message,
    text_message,
)
from wacrm.whatsapp.meta_send import CloudApiClient
from wacrm.workers.whatsapp_outbox import OutboxPolicy, WhatsAppOutboxWorker


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


def build_body(
    to: str,
    *,
    client: CloudApiClient,
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
    the message carries a media id. Raises ``ValueError`` for bad input."""
    if sum(x is not None for x in (text, template, media)) != 1:
        raise ValueError("give exactly one of --text, --template or --media")
    if text is not None:
        return text_message(to, text), text
    if template is not None:
        components = body_parameters(*params) if params else ()
        return template_message(to, template, language, components), f"[template {template}]"
    assert media is not None
    if media.startswith(("http://", "https://")):
        path_part = media.split("?", 1)[0].split("#", 1)[0]
        guessed = mimetypes.guess_type(path_part)[0] or "application/octet-stream"
        kind = media_kind(guessed)
        name = path_part.rsplit("/", 1)[-1] if kind == "document" else None
        return media_message(to, kind, link=media, caption=caption, filename=name), caption
    path = Path(media)
    if not path.is_file():
        raise ValueError(f"--media {media}: no such file (or give an http(s) URL)")
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    kind = media_kind(mime)
    media_id = client.upload_media(phone_number_id, path.read_bytes(), mime, path.name)
    filename = path.name if kind == "document" else None
    body = media_message(to, kind, media_id=media_id, caption=caption, filename=filename)
    return body, caption


def send_now(
    engine: Engine,
    settings: Settings,
    client: CloudApiClient,
    body: dict[str, Any],
    *,
    account_id: int,
    text: str | None = None,
    timeout: float = 30.0,
    policy: OutboxPolicy | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    sleep: Callable[[float], None] = time.sleep,
) -> SendOutcome:
    """Queue ``body`` and run the outbox until it is sent, failed, or retrying past ``timeout``.

    Other rows that are due are sent too: they would be by the server's worker anyway, and
    leases keep two senders from sending one row twice."""
    with engine.begin() as conn:
        contact_id = conn.execute(
            select(contacts.c.id).where(
                contacts.c.account_id == account_id, contacts.c.phone == body["to"]
            )
        ).scalar()
        message_id, outbox_id = enqueue_send(
            conn,
            account_id=account_id,
            phone_number_id=settings.whatsapp_phone_number_id,
            body=body,
            contact_id=contact_id,
            text=text,
            rule="cli",
            now=clock(),
        )
    worker = WhatsAppOutboxWorker(engine, settings, client, policy=policy, clock=clock, sleep=sleep)
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
        if not waiting or row.next_attempt_at.timestamp() > deadline:
            return SendOutcome(
                message_id, outbox_id, row.state, row.provider_message_id, row.last_error
            )
        sleep(max(0.05, min(1.0, row.next_attempt_at.timestamp() - clock().timestamp())))
