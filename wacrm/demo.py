"""``wacrm demo``: the whole path, end to end, on loopback with a throwaway store.

The real server (with its workers) and the Cloud API sandbox run under uvicorn; five signed
webhooks go in; each one is then followed in the store and the embedded CRM until its
auto-reply has been read, or the time runs out. Nothing here is simulated that the server
would not meet in production except Meta itself, which the sandbox stands in for.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import Engine, select

from wacrm.config import Secret, Settings
from wacrm.demo_messages import TEST_MESSAGES, TestMessage, envelope
from wacrm.sandbox.whatsapp import SandboxConfig, WhatsAppSandbox, create_sandbox_app
from wacrm.server.background import BackgroundServer
from wacrm.server.runtime import build_app
from wacrm.store import create_store_engine
from wacrm.store.keys import contact_record_key, ticket_record_key
from wacrm.store.schema import inbox, local_crm_records, messages
from wacrm.whatsapp.meta_webhook import sign

PHONE_NUMBER_ID = "106540352242922"
DISPLAY_NUMBER = "15550783881"


@dataclass
class Check:
    """What became of one test message."""

    label: str
    phone: str
    wamid: str
    http_status: int = 0
    received: bool = False
    contact_updated: bool = False
    ticket_opened: bool = False
    auto_reply_sent: bool = False
    final_status: str = "-"
    reply_rule: str | None = None  # the rule that answered: price-list, ticket-ack, ...
    latency_ms: float | None = None  # webhook posted → auto-reply accepted by the Cloud API

    @property
    def passed(self) -> bool:
        return (
            self.http_status == 200
            and self.received
            and self.contact_updated
            and self.ticket_opened
            and self.auto_reply_sent
            and self.final_status == "read"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def _observe(engine: Engine, check: Check, posted_at: datetime) -> None:
    """Fill ``check`` from what the store and the embedded CRM hold now."""
    contact_key = contact_record_key(check.phone, None)
    assert contact_key is not None  # every demo sender has a phone number
    with engine.connect() as conn:
        state = conn.execute(
            select(inbox.c.state).where(inbox.c.kind == "message", inbox.c.event_id == check.wamid)
        ).scalar()
        check.received = state == "done"
        crm_keys = {
            (row.object, row.external_id): orjson.loads(row.properties)
            for row in conn.execute(
                select(
                    local_crm_records.c.object,
                    local_crm_records.c.external_id,
                    local_crm_records.c.properties,
                ).where(
                    local_crm_records.c.external_id.in_(
                        [contact_key, ticket_record_key(check.wamid)]
                    )
                )
            )
        }
        contact = crm_keys.get(("contacts", contact_key))
        check.contact_updated = (
            contact is not None and int(contact.get("whatsapp_unread_count") or 0) > 0
        )
        check.ticket_opened = ("tickets", ticket_record_key(check.wamid)) in crm_keys
        inbound_id = conn.execute(
            select(messages.c.id).where(
                messages.c.direction == "in", messages.c.provider_message_id == check.wamid
            )
        ).scalar()
        reply = None
        if inbound_id is not None:
            reply = conn.execute(
                select(
                    messages.c.status,
                    messages.c.sent_at,
                    messages.c.provider_message_id,
                    messages.c.rule,
                )
                .where(messages.c.direction == "out", messages.c.in_reply_to == inbound_id)
                .order_by(messages.c.id)
            ).first()
    if reply is not None and reply.provider_message_id and reply.sent_at is not None:
        check.auto_reply_sent = True
        check.final_status = str(reply.status)
        check.reply_rule = reply.rule
        check.latency_ms = max(0.0, (reply.sent_at - posted_at).total_seconds() * 1000)


@dataclass(frozen=True)
class Stack:
    """A running server + sandbox pair and a reader on their store."""

    engine: Engine
    server_url: str
    app_secret: str
    sandbox: WhatsAppSandbox


@contextmanager
def running_stack(root: Path) -> Iterator[Stack]:
    """The real server (with its workers) and the Cloud API sandbox on loopback ports."""
    app_secret, token = secrets.token_hex(16), secrets.token_hex(24)
    server, sandbox = BackgroundServer(), BackgroundServer()
    settings = replace(
        Settings(),
        database_url=f"sqlite:///{root / 'wacrm-demo.db'}",
        whatsapp_app_secret=Secret(app_secret),
        whatsapp_verify_token=Secret(secrets.token_hex(8)),
        whatsapp_access_token=Secret(token),
        whatsapp_api_base_url=sandbox.url,
        whatsapp_phone_number_id=PHONE_NUMBER_ID,
        whatsapp_display_phone_number=DISPLAY_NUMBER,
        media_dir=str(root / "media"),
    )
    sandbox_app = create_sandbox_app(
        SandboxConfig(
            access_token=token,
            app_secret=app_secret,
            webhook_url=f"{server.url}/webhooks/whatsapp",
            phone_numbers={PHONE_NUMBER_ID: DISPLAY_NUMBER},
            status_delays={"sent": 0.0, "delivered": 0.2, "read": 0.5},
        )
    )
    app = build_app(settings)
    engine = create_store_engine(settings.database_url)  # the caller's own reader
    try:
        sandbox.start(sandbox_app)
        server.start(app)
        yield Stack(engine, server.url, app_secret, sandbox_app.state.sandbox)
    finally:
        server.stop()
        sandbox.stop()
        engine.dispose()


def run_demo(timeout: float = 30.0) -> list[Check]:
    """Run the five-message check; returns one :class:`Check` per message."""
    with (
        tempfile.TemporaryDirectory(prefix="wacrm-demo-") as tmp,
        running_stack(Path(tmp)) as stack,
    ):
        return _exercise(stack, TEST_MESSAGES, timeout)


def post_signed(http: httpx.Client, raw: bytes, app_secret: str) -> httpx.Response:
    return http.post(
        "/webhooks/whatsapp",
        content=raw,
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw, app_secret)},
    )


def _exercise(stack: Stack, tests: tuple[TestMessage, ...], timeout: float) -> list[Check]:
    checks: list[tuple[Check, datetime]] = []
    with httpx.Client(base_url=stack.server_url, timeout=10.0) as http:
        for test in tests:
            body = envelope(
                test, phone_number_id=PHONE_NUMBER_ID, display_phone_number=DISPLAY_NUMBER
            )
            raw = orjson.dumps(body)
            wamid = body["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
            check = Check(label=test.label, phone=test.phone, wamid=wamid)
            posted_at = datetime.now().astimezone()
            check.http_status = post_signed(http, raw, stack.app_secret).status_code
            checks.append((check, posted_at))
    deadline = time.monotonic() + timeout
    while True:
        for check, posted_at in checks:
            if not check.passed:
                _observe(stack.engine, check, posted_at)
        if all(c.passed for c, _ in checks) or time.monotonic() > deadline:
            return [c for c, _ in checks]
        time.sleep(0.1)


def render_table(checks: list[Check]) -> Any:
    from rich.table import Table

    def mark(ok: bool) -> str:
        return "[green]yes[/]" if ok else "[red]no[/]"

    table = Table(title="wacrm demo: five test messages through the whole path")
    for column in (
        "message",
        "from",
        "received",
        "contact updated",
        "ticket opened",
        "auto-reply sent",
        "final status",
        "latency",
        "result",
    ):
        table.add_column(column)
    for c in checks:
        table.add_row(
            c.label,
            c.phone,
            mark(c.received),
            mark(c.contact_updated),
            mark(c.ticket_opened),
            mark(c.auto_reply_sent) + (f" ({c.reply_rule})" if c.reply_rule else ""),
            c.final_status,
            f"{c.latency_ms:.0f} ms" if c.latency_ms is not None else "-",
            "[green]PASS[/]" if c.passed else "[red]FAIL[/]",
        )
    return table
