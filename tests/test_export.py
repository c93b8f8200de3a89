"""`wacrm export`: the store's rows as JSON lines, streamed, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

import wacrm.export
from wacrm.cli import cli
from wacrm.export import OBJECTS, ExportError, export_rows, write_jsonl
from wacrm.store.accounts import ensure_account
from wacrm.store.schema import contacts, messages, tasks, tickets

CAIRO = timezone(timedelta(hours=2))
CREATED = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


@dataclass
class Seeded:
    default: int
    other: int
    ann: int
    omar: int
    inbound: int
    orphan: int
    other_message: int
    ticket: int
    task: int


def _insert(engine: Engine, table: Any, **values: Any) -> int:
    with engine.begin() as conn:
        result = conn.execute(table.insert().values(**values))
        assert result.inserted_primary_key is not None
        return int(result.inserted_primary_key[0])


def seed(engine: Engine) -> Seeded:
    default = ensure_account(engine, "default")
    other = ensure_account(engine, "other")
    ann = _insert(
        engine,
        contacts,
        account_id=default,
        phone="+447400123456",
        wa_id="447400123456",
        user_id="GB.1349120865530274",
        name="Ann",
        last_interaction_at=datetime(2026, 3, 2, 12, 0, 5, tzinfo=CAIRO),
        order_status_code="shipped",
        priority="high",
        language="en",
        unread_count=3,
        tags='["vip", "b2b", "arabic"]',
        crm_id="901",
        created_at=CREATED,
        updated_at=CREATED + timedelta(days=1),
    )
    omar = _insert(
        engine,
        contacts,
        account_id=other,
        phone="+966501234567",
        name="عمر",
        created_at=CREATED,
        updated_at=CREATED,
    )
    inbound = _insert(
        engine,
        messages,
        account_id=default,
        contact_id=ann,
        direction="in",
        provider="meta",
        provider_message_id="wamid.in1",
        type="text",
        text="price?",
        payload="{}",
        status="received",
        created_at=CREATED,
    )
    orphan = _insert(
        engine,
        messages,
        account_id=default,
        contact_id=None,
        direction="out",
        provider="meta",
        provider_message_id="wamid.out1",
        type="template",
        payload="{}",
        status="failed",
        status_at=datetime(2026, 3, 1, 11, 0, tzinfo=CAIRO),
        error_code="131026",
        error_title="Message undeliverable",
        rule="price-reply",
        in_reply_to=inbound,
        created_at=CREATED,
        sent_at=CREATED + timedelta(seconds=2),
    )
    other_message = _insert(
        engine,
        messages,
        account_id=other,
        contact_id=omar,
        direction="in",
        provider="twilio",
        provider_message_id="SM1",
        type="text",
        text="مرحبا",
        payload="{}",
        status="received",
        created_at=CREATED,
    )
    ticket = _insert(
        engine,
        tickets,
        account_id=default,
        contact_id=ann,
        subject="WhatsApp: price?",
        status="open",
        source_message_id="wamid.in1",
        created_at=CREATED,
    )
    task = _insert(
        engine,
        tasks,
        account_id=default,
        contact_id=ann,
        subject="Reply to Ann",
        owner="sales@example.com",
        due_at=CREATED + timedelta(hours=48),
        idempotency_key="no-reply:wamid.in1",
        crm_id="T-7",
        created_at=CREATED,
    )
    return Seeded(default, other, ann, omar, inbound, orphan, other_message, ticket, task)


def test_given_contacts_when_exported_then_every_model_field_in_utc_with_sorted_tags(
    engine: Engine,
) -> None:
    s = seed(engine)
    rows = list(export_rows(engine, "contacts"))
    assert rows[0] == {
        "id": s.ann,
        "phone": "+447400123456",
        "wa_id": "447400123456",
        "user_id": "GB.1349120865530274",
        "name": "Ann",
        "last_interaction_at": "2026-03-02T10:00:05Z",
        "order_status_code": "shipped",
        "priority": "high",
        "language": "en",
        "unread_count": 3,
        "tags": ["arabic", "b2b", "vip"],
        "crm_id": "901",
        "created_at": "2026-03-01T09:30:00Z",
        "updated_at": "2026-03-02T09:30:00Z",
        "account": "default",
    }
    assert rows[1]["id"] == s.omar
    assert rows[1]["account"] == "other"
    assert rows[1]["tags"] == []
    assert rows[1]["last_interaction_at"] is None
    assert rows[1]["unread_count"] == 0


def test_given_messages_when_exported_then_contact_phone_joined_and_orphans_kept(
    engine: Engine,
) -> None:
    s = seed(engine)
    rows = {row["id"]: row for row in export_rows(engine, "messages")}
    assert list(rows) == [s.inbound, s.orphan, s.other_message]
    assert rows[s.inbound]["contact_phone"] == "+447400123456"
    assert rows[s.inbound]["text"] == "price?"
    assert rows[s.orphan] == {
        "id": s.orphan,
        "direction": "out",
        "provider": "meta",
        "provider_message_id": "wamid.out1",
        "contact_id": None,
        "contact_phone": None,
        "type": "template",
        "text": None,
        "status": "failed",
        "status_at": "2026-03-01T09:00:00Z",
        "error_code": "131026",
        "error_title": "Message undeliverable",
        "rule": "price-reply",
        "created_at": "2026-03-01T09:30:00Z",
        "sent_at": "2026-03-01T09:30:02Z",
        "account": "default",
    }


def test_given_tickets_and_tasks_when_exported_then_their_fields_and_contact_phone(
    engine: Engine,
) -> None:
    s = seed(engine)
    assert list(export_rows(engine, "tickets")) == [
        {
            "id": s.ticket,
            "contact_id": s.ann,
            "contact_phone": "+447400123456",
            "subject": "WhatsApp: price?",
            "status": "open",
            "source_message_id": "wamid.in1",
            "crm_id": None,
            "created_at": "2026-03-01T09:30:00Z",
            "closed_at": None,
            "account": "default",
        }
    ]
    assert list(export_rows(engine, "tasks")) == [
        {
            "id": s.task,
            "contact_id": s.ann,
            "contact_phone": "+447400123456",
            "subject": "Reply to Ann",
            "owner": "sales@example.com",
            "due_at": "2026-03-03T09:30:00Z",
            "status": "not_started",
            "idempotency_key": "no-reply:wamid.in1",
            "crm_id": "T-7",
            "created_at": "2026-03-01T09:30:00Z",
            "account": "default",
        }
    ]


@pytest.mark.parametrize("obj", OBJECTS)
def test_given_two_accounts_when_exported_for_one_then_no_row_of_the_other(
    engine: Engine, obj: str
) -> None:
    seed(engine)
    everything = list(export_rows(engine, obj))
    only_other = list(export_rows(engine, obj, account="other"))
    assert {row["account"] for row in only_other} <= {"other"}
    assert only_other == [row for row in everything if row["account"] == "other"]


def test_given_unknown_account_when_export_called_then_error_before_any_row(
    engine: Engine,
) -> None:
    seed(engine)
    with pytest.raises(ExportError, match="no account named 'nobody'"):
        export_rows(engine, "contacts", account="nobody")  # raised without iterating


def test_given_unknown_object_when_export_called_then_error_lists_objects(engine: Engine) -> None:
    with pytest.raises(ExportError, match=r"unknown object 'deals'.*contacts, messages"):
        export_rows(engine, "deals")


def test_given_more_rows_than_a_batch_when_exported_then_all_streamed_in_id_order(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wacrm.export, "BATCH", 2)
    account = ensure_account(engine, "default")
    ids = [
        _insert(
            engine,
            contacts,
            account_id=account,
            phone=f"+4474001234{n:02d}",
            created_at=CREATED,
            updated_at=CREATED,
        )
        for n in range(7)
    ]
    rows = export_rows(engine, "contacts")
    assert not isinstance(rows, list)  # a lazy iterator, not a loaded list
    assert [row["id"] for row in rows] == sorted(ids)


def test_given_empty_store_when_exported_then_no_rows(engine: Engine) -> None:
    assert list(export_rows(engine, "messages")) == []


def test_given_rows_when_written_as_jsonl_then_one_utf8_object_per_line() -> None:
    out = io.BytesIO()
    rows: list[dict[str, Any]] = [{"id": 1, "text": "مرحبا"}, {"id": 2, "text": None}]
    count = write_jsonl(iter(rows), out)
    assert count == 2
    lines = out.getvalue().split(b"\n")
    assert lines[-1] == b""  # every line, the last too, ends with a newline
    assert [orjson.loads(line) for line in lines[:-1]] == [
        {"id": 1, "text": "مرحبا"},
        {"id": 2, "text": None},
    ]
    assert "مرحبا".encode() in lines[0]


# --- CLI (the CLI is backend-neutral; export_rows above runs on both backends) ---------


@pytest.fixture
def runner(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[CliRunner]:
    monkeypatch.chdir(tmp_path)  # no stray ./wacrm.toml
    monkeypatch.delenv("WACRM_CONFIG", raising=False)
    url = sqlite_engine.url.render_as_string(hide_password=False)
    monkeypatch.setenv("WACRM_DATABASE_URL", url)
    yield CliRunner()


def _lines(output: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in output.splitlines()]


def test_given_store_when_cli_exports_contacts_then_jsonl_on_stdout(
    runner: CliRunner, sqlite_engine: Engine
) -> None:
    s = seed(sqlite_engine)
    result = runner.invoke(cli, ["export", "contacts"])
    assert result.exit_code == 0, result.output
    rows = _lines(result.stdout)
    assert [row["id"] for row in rows] == [s.ann, s.omar]
    assert rows[1]["name"] == "عمر"


def test_given_account_option_when_cli_exports_messages_then_only_that_account(
    runner: CliRunner, sqlite_engine: Engine
) -> None:
    s = seed(sqlite_engine)
    result = runner.invoke(cli, ["export", "messages", "--format", "jsonl", "--account", "other"])
    assert result.exit_code == 0, result.output
    assert [row["id"] for row in _lines(result.stdout)] == [s.other_message]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "deals"], "wacrm: error: unknown object 'deals'; choose from contacts"),
        (["export", "tasks", "--format", "csv"], "wacrm: error: unknown format 'csv'"),
        (["export", "tasks", "--account", "nobody"], "wacrm: error: no account named 'nobody'"),
    ],
)
def test_given_user_mistake_when_cli_exports_then_one_line_error_and_exit_2(
    runner: CliRunner, sqlite_engine: Engine, args: list[str], message: str
) -> None:
    seed(sqlite_engine)
    result = runner.invoke(cli, args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1


def test_given_unsupported_database_url_when_cli_exports_then_one_line_error(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WACRM_DATABASE_URL", "mysql://localhost/wacrm")
    result = runner.invoke(cli, ["export", "contacts"])
    assert result.exit_code == 2
    assert result.stderr.startswith("wacrm: error: unsupported database 'mysql'")
