"""What the REST-hook tests share: a settable clock, a loopback HTTP receiver started by the
test (port 0, its own thread), rule events written the way the `emit` action writes them, the
secret key (``BOX``) subscription secrets are sealed with, and a fake DNS (no test asks the
network what a name resolves to).

Targets on loopback are private: a test delivering to :class:`Receiver` turns on
``allow_private`` (``WACRM_HOOKS_ALLOW_PRIVATE_TARGETS``) where it subscribes and delivers."""

from __future__ import annotations

import ipaddress
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select

from wacrm.hooks import targets
from wacrm.hooks.targets import IPAddress
from wacrm.store.schema import contacts, hook_deliveries, hook_subscriptions, rule_events
from wacrm.store.secrets import SecretBox, generate_key

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
# The secret key the hook tests seal subscription secrets with: fresh each run, never stored.
KEY = generate_key()
BOX = SecretBox([KEY])


# What the fake DNS answers for a name it has no answer for: a public address (nothing ever
# connects to it: deliveries to it go through a mock transport).
PUBLIC_IP = "93.184.216.34"


class FakeDns:
    """Replaces :func:`wacrm.hooks.targets.resolve_host`: a name in ``answers`` resolves to
    those addresses (or raises, if its answer is an exception), any other to
    :data:`PUBLIC_IP`. ``asked`` lists the names asked, in order. Change ``answers`` to
    change what DNS says (rebinding)."""

    def __init__(self, answers: dict[str, list[str] | OSError] | None = None) -> None:
        self.answers: dict[str, list[str] | OSError] = dict(answers or {})
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append(host)
        answer = self.answers.get(host, [PUBLIC_IP])
        if isinstance(answer, OSError):
            raise answer
        return [ipaddress.ip_address(a) for a in answer]

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeDns:
        monkeypatch.setattr(targets, "resolve_host", self)
        return self


class Clock:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hold: threading.Event | None = None  # answer only once this is set (a slow target)


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A REST-hook target on 127.0.0.1: answers from ``answers`` in turn, then 200."""

    def __init__(self, *answers: Answer) -> None:
        self.answers: deque[Answer] = deque(answers)
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(Received(self.path, dict(self.headers), body))
                    answer = receiver.answers.popleft() if receiver.answers else Answer()
                if answer.hold is not None:
                    answer.hold.wait(10)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    @contextmanager
    def running(self) -> Iterator[Receiver]:
        self._thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


def add_contact(engine: Engine, account_id: int, phone: str = "+16315551234") -> int:
    with engine.begin() as conn:
        result = conn.execute(
            contacts.insert().values(
                account_id=account_id,
                phone=phone,
                wa_id=phone.lstrip("+"),
                name="Alice",
                tags='["vip"]',
                created_at=NOW,
                updated_at=NOW,
            )
        )
        assert result.inserted_primary_key is not None
        return int(result.inserted_primary_key[0])


def emit(
    engine: Engine,
    account_id: int,
    name: str = "order.status_changed",
    *,
    contact_id: int | None = None,
    at: datetime = NOW,
    event_id: int | None = None,
    data: dict[str, Any] | None = None,
) -> int:
    """A rule_events row as the `emit_event` action writes it (wacrm/rules/actions.py)."""
    payload = {"event": name, "rule": "test-rule", "contact_id": contact_id, "data": data or {}}
    values: dict[str, Any] = {
        "account_id": account_id,
        "contact_id": contact_id,
        "rule": "test-rule",
        "name": name,
        "payload": orjson.dumps(payload).decode(),
        "created_at": at,
    }
    if event_id is not None:
        values["id"] = event_id
    with engine.begin() as conn:
        result = conn.execute(rule_events.insert().values(**values))
        assert result.inserted_primary_key is not None
        return int(result.inserted_primary_key[0])


def deliveries(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(hook_deliveries).order_by(hook_deliveries.c.id)).all())


def subscription_row(engine: Engine, sub_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            select(hook_subscriptions).where(hook_subscriptions.c.id == sub_id)
        ).one()
