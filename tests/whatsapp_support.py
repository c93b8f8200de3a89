"""Helpers shared by the WhatsApp outbox tests: a fake clock, rows inserted straight into
``messages`` / ``wa_outbox``, the sandbox and a scripted Cloud API as senders."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from conftest import PHONE_NUMBER_ID
from sqlalchemy import Engine, select

from wacrm.config import Settings
from wacrm.rules.runtime import RuleRuntime
from wacrm.sandbox.whatsapp import SandboxConfig, WhatsAppSandbox
from wacrm.store.schema import contacts, messages, wa_outbox
from wacrm.whatsapp.meta_bodies import text_message
from wacrm.whatsapp.meta_send import CloudApiClient
from wacrm.workers.whatsapp_outbox import OutboxPolicy, WhatsAppOutboxWorker

TOKEN = "outbox-test-token"
ALICE, BOB = "+16505551234", "+16505559876"


@dataclass
class Clock:
    now: datetime = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)


# --- rows ----------------------------------------------------------------------------------


def add_contact(
    engine: Engine, account_id: int, phone: str, last_inbound_at: datetime | None
) -> int:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    with engine.begin() as conn:
        key = conn.execute(
            contacts.insert().values(
                account_id=account_id,
                phone=phone,
                wa_id=phone.lstrip("+"),
                last_inbound_at=last_inbound_at,
                created_at=now,
                updated_at=now,
            )
        ).inserted_primary_key
    assert key is not None
    return int(key[0])


def add_outbound(
    engine: Engine,
    account_id: int,
    body: dict[str, Any],
    *,
    at: datetime,
    contact_id: int | None = None,
    fallback: dict[str, Any] | None = None,
    state: str = "pending",
    phone_number_id: str = PHONE_NUMBER_ID,
) -> tuple[int, int]:
    with engine.begin() as conn:
        message = conn.execute(
            messages.insert().values(
                account_id=account_id,
                contact_id=contact_id,
                direction="out",
                provider="meta",
                type=body.get("type", "text"),
                text=(body.get("text") or {}).get("body"),
                payload=json.dumps(body),
                status="queued",
                created_at=at,
            )
        ).inserted_primary_key
        assert message is not None
        outbox = conn.execute(
            wa_outbox.insert().values(
                account_id=account_id,
                message_id=message[0],
                phone_number_id=phone_number_id,
                recipient=body["to"],
                request=json.dumps(body),
                fallback_request=json.dumps(fallback) if fallback else None,
                state=state,
                attempts=0,
                next_attempt_at=at,
                created_at=at,
            )
        ).inserted_primary_key
    assert outbox is not None
    return int(message[0]), int(outbox[0])


def add_outbound_to_many(
    engine: Engine,
    account_id: int,
    count: int,
    *,
    at: datetime,
    wrote_at: datetime,
    phone_prefix: str = "+1650555",
    phone_number_id: str = PHONE_NUMBER_ID,
) -> list[int]:
    """``count`` text messages from ``phone_number_id``, each to a contact of its own
    (``phone_prefix`` and four digits) who last wrote at ``wrote_at``; their outbox ids."""
    ids = []
    for i in range(count):
        phone = f"{phone_prefix}{i:04d}"
        contact = add_contact(engine, account_id, phone, wrote_at)
        _, outbox_id = add_outbound(
            engine,
            account_id,
            text_message(phone, "hi"),
            at=at,
            contact_id=contact,
            phone_number_id=phone_number_id,
        )
        ids.append(outbox_id)
    return ids


def outbox_row(engine: Engine, outbox_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(wa_outbox).where(wa_outbox.c.id == outbox_id)).one()


def message_row(engine: Engine, message_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(messages).where(messages.c.id == message_id)).one()


# --- senders -------------------------------------------------------------------------------


def make_sandbox(clock: Clock, **overrides: Any) -> WhatsAppSandbox:
    config = SandboxConfig(
        access_token=TOKEN,
        app_secret="secret",
        phone_numbers={PHONE_NUMBER_ID: "15550783881"},
        **overrides,
    )
    return WhatsAppSandbox(config, clock=lambda: clock.now.timestamp())


def over_asgi(sandbox: WhatsAppSandbox) -> httpx.Client:
    """A sync client into the sandbox's ASGI app (the worker is synchronous)."""

    async def call(request: httpx.Request) -> httpx.Response:
        transport = httpx.ASGITransport(app=sandbox.app)
        async with httpx.AsyncClient(transport=transport) as client:
            answer = await client.request(
                request.method, request.url, headers=request.headers, content=request.content
            )
        return httpx.Response(
            answer.status_code,
            headers={"content-type": answer.headers.get("content-type", "")},
            content=answer.content,
        )

    return httpx.Client(transport=httpx.MockTransport(lambda r: asyncio.run(call(r))))


def make_worker(
    engine: Engine,
    clock: Clock,
    http: httpx.Client,
    *,
    token: str = TOKEN,
    rules: RuleRuntime | None = None,
    **policy: Any,
) -> WhatsAppOutboxWorker:
    client = CloudApiClient(
        base_url="http://sandbox.test", version="v25.0", access_token=token, http=http
    )
    return WhatsAppOutboxWorker(
        engine,
        Settings(),
        client,
        policy=OutboxPolicy(**policy),
        clock=clock,
        sleep=clock.sleep,
        jitter=lambda: 0.0,
        rules=rules,
    )


class Graph:
    """A scripted Cloud API: answers from ``script`` first, then accepts with a wamid."""

    def __init__(self, *script: httpx.Response | Exception) -> None:
        self.script = list(script)
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def handler(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            body = json.loads(request.content)
            self.bodies.append(body)
            if self.script:
                answer = self.script.pop(0)
                if isinstance(answer, Exception):
                    raise answer
                return answer
            n = len(self.bodies)
        return httpx.Response(
            200,
            json={
                "messaging_product": "whatsapp",
                "contacts": [{"input": body["to"], "wa_id": body["to"].lstrip("+")}],
                "messages": [{"id": f"wamid.SCRIPTED{n}"}],
            },
        )

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handler))


def graph_error(code: int, status: int = 400, **extra: Any) -> httpx.Response:
    return httpx.Response(
        status,
        json={
            "error": {
                "message": f"(#{code}) error {code}",
                "type": "OAuthException",
                "code": code,
                "error_data": {"messaging_product": "whatsapp", "details": f"details {code}"},
                "fbtrace_id": "Atrace",
                **extra,
            }
        },
    )
