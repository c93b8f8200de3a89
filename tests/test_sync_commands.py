"""`wacrm sync --once`, `wacrm sync status`, the change webhook over loopback, record keys."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select
from starlette.applications import Starlette
from starlette.routing import Route
from test_sync_fakes import T0, FakeClock, FakeConnector

from wacrm.cli import cli
from wacrm.sandbox.crm import CrmSimulator, SimConfig
from wacrm.sandbox.crm_app import create_app
from wacrm.server.background import BackgroundServer
from wacrm.store import create_store_engine, migrate
from wacrm.store.accounts import ensure_account
from wacrm.store.keys import contact_record_key, ticket_record_key
from wacrm.store.outbox import enqueue_crm_change
from wacrm.store.schema import contacts, tickets
from wacrm.sync.commands import ConnectorRegistry, SimulatorTarget, build_sync
from wacrm.sync.crm_ids import store_crm_ids
from wacrm.sync.engine import PullStats
from wacrm.sync.status import sync_status
from wacrm.sync.webhooks import change_webhook_endpoint
from wacrm.sync.worker import SyncWorker
from wacrm.workers.crm_outbox import CrmOutboxWorker


@pytest.fixture
def simulator() -> Iterator[tuple[CrmSimulator, str]]:
    sim = CrmSimulator(SimConfig(max_batch=10, rate_limit=10_000, window=1.0))
    with BackgroundServer(create_app(sim)) as server:
        yield sim, server.url


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[str, Engine, int]]:
    url = f"sqlite:///{tmp_path / 'wacrm.db'}"
    engine = create_store_engine(url)
    migrate(engine)
    yield url, engine, ensure_account(engine, "default")
    engine.dispose()


def _env(url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "WACRM_DATABASE_URL": url,
        "WACRM_CONFIG": str(tmp_path / "absent.toml"),
        "COLUMNS": "200",  # rich wraps tables to the terminal's width
    }


def test_given_queued_changes_when_sync_once_against_the_simulator_then_all_arrive(
    simulator: tuple[CrmSimulator, str], store: tuple[str, Engine, int], tmp_path: Path
) -> None:
    sim, sim_url = simulator
    url, engine, account_id = store
    with engine.begin() as conn:
        for i in range(25):
            enqueue_crm_change(
                conn,
                account_id=account_id,
                object="contacts",
                record_key=f"+1999{i:07d}",
                properties={"unread_count": i},
            )

    result = CliRunner().invoke(
        cli,
        ["sync", "--once", "--simulator", sim_url, "--max-batch", "10", "--no-progress"],
        env=_env(url, tmp_path),
    )

    assert result.exit_code == 0, result.output
    assert "outbound: 25 confirmed in 3 calls" in result.output
    assert len(sim.records("contacts")) == 25


def test_given_dead_letters_and_retries_when_status_then_both_are_shown_with_codes(
    store: tuple[str, Engine, int], tmp_path: Path
) -> None:
    url, engine, account_id = store
    clock = FakeClock()
    crm = FakeConnector(failures={"+1": ("INVALID_OPTION", False), "+2": ("SERVER_ERROR", True)})
    with engine.begin() as conn:
        for key in ("+1", "+2", "+3"):
            enqueue_crm_change(
                conn,
                account_id=account_id,
                object="contacts",
                record_key=key,
                properties={"priority": "x"},
                now=clock(),
            )
    CrmOutboxWorker(engine, lambda _a: crm, clock=clock).flush(force=True)

    status = sync_status(engine, clock())
    result = CliRunner().invoke(cli, ["sync", "status", "--json"], env=_env(url, tmp_path))

    assert status.dead_total == 1
    assert [(d.key, d.error_code) for d in status.dead_letters] == [("+1", "INVALID_OPTION")]
    assert [(e.key, e.error_code, e.attempts) for e in status.last_errors] == [
        ("+2", "SERVER_ERROR", 1)
    ]
    [queue] = status.queues
    assert (queue.pending, queue.due, queue.retrying, queue.dead) == (1, 0, 1, 1)
    shown = orjson.loads(result.output)
    assert result.exit_code == 0
    assert shown["dead_letters"][0]["error"] == ("INVALID_OPTION for +1")
    table = CliRunner().invoke(cli, ["sync", "status"], env=_env(url, tmp_path))
    assert "Dead letters (1)" in table.output and "SERVER_ERROR" in table.output


def test_given_a_bad_rate_limit_option_then_a_one_line_usage_error(
    store: tuple[str, Engine, int], tmp_path: Path
) -> None:
    url, _engine, _account = store

    result = CliRunner().invoke(
        cli,
        ["sync", "--once", "--simulator", "http://127.0.0.1:9", "--rate-limit", "fast"],
        env=_env(url, tmp_path),
    )

    assert result.exit_code == 2
    assert "rate limit must look like 110/10" in result.output


async def test_given_a_crm_edit_when_its_webhook_comes_over_http_then_the_mirror_has_it(
    store: tuple[str, Engine, int],
) -> None:
    _url, engine, account_id = store
    phone = "+15550009999"
    with engine.begin() as conn:
        conn.execute(
            contacts.insert().values(
                account_id=account_id, phone=phone, created_at=T0, updated_at=T0
            )
        )
    holder: dict[str, SyncWorker] = {}

    class Relay:
        def notify_crm_change(self, account: int, object: str = "contacts") -> None:
            holder["worker"].notify_crm_change(account, object)

    endpoint = change_webhook_endpoint(Relay(), lambda _portal: account_id, own_app_id="1")
    receiver = BackgroundServer(Starlette(routes=[Route("/crm", endpoint, methods=["POST"])]))
    with receiver:
        sim = CrmSimulator(SimConfig(rate_limit=10_000, window=1.0))
        with BackgroundServer(create_app(sim, f"{receiver.url}/crm")) as crm_server:
            sync = build_sync(engine, SimulatorTarget(crm_server.url))
            worker = SyncWorker(sync, accounts=lambda: [account_id], sleep=_forever)
            holder["worker"] = worker
            applied = threading.Event()
            real_pull = sync.pull

            def pull(account_id: int, object: str = "contacts") -> PullStats:
                stats = real_pull(account_id, object)
                if stats.mirror.applied:
                    applied.set()
                return stats

            sync.pull = pull  # type: ignore[method-assign]
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            async with httpx.AsyncClient(base_url=crm_server.url) as client:
                await client.post(
                    f"/_sim/records/contacts/{phone}",
                    json={"properties": {"phone": phone, "preferred_language": "pt"}},
                )
            # The loop's own wait never ends (sleep=_forever): only the webhook can wake it.
            assert await asyncio.to_thread(applied.wait, 10)
            stop.set()
            await asyncio.wait_for(task, 10)

    with engine.connect() as conn:
        assert (
            conn.execute(select(contacts.c.language).where(contacts.c.phone == phone)).scalar()
            == "pt"
        )


def test_given_record_keys_made_by_the_inbox_worker_then_crm_ids_find_their_rows(
    engine: Engine, account_id: int
) -> None:
    clock = FakeClock()
    with engine.begin() as conn:
        phone_id = conn.execute(
            contacts.insert().values(
                account_id=account_id, phone="+15550001", created_at=clock(), updated_at=clock()
            )
        ).inserted_primary_key
        user_id = conn.execute(
            contacts.insert().values(
                account_id=account_id, user_id="US.123", created_at=clock(), updated_at=clock()
            )
        ).inserted_primary_key
        assert phone_id is not None and user_id is not None
        phone_key = contact_record_key("+15550001", None)
        user_key = contact_record_key(None, "US.123")
        assert phone_key is not None and user_key is not None
        conn.execute(
            tickets.insert().values(
                account_id=account_id,
                contact_id=phone_id[0],
                subject="s",
                source_message_id="wamid.X",
                created_at=clock(),
            )
        )
        store_crm_ids(
            conn,
            account_id,
            "contacts",
            [(phone_key, "c1"), (user_key, "c2")],
        )
        store_crm_ids(conn, account_id, "tickets", [(ticket_record_key("wamid.X"), "t1")])

    with engine.connect() as conn:
        ids = dict(conn.execute(select(contacts.c.id, contacts.c.crm_id)).all())
        ticket_crm = conn.execute(select(tickets.c.crm_id)).scalar()
    assert ids == {phone_id[0]: "c1", user_id[0]: "c2"}
    assert ticket_crm == "t1"


def test_given_an_account_on_the_embedded_crm_then_the_registry_gives_its_connector(
    store: tuple[str, Engine, int],
) -> None:
    _url, engine, account_id = store
    registry = ConnectorRegistry(engine)

    connector = registry(account_id)

    assert connector.name == "local" and registry(account_id) is connector
    with engine.begin() as conn:
        enqueue_crm_change(
            conn,
            account_id=account_id,
            object="contacts",
            record_key="+15550002",
            properties={"unread_count": 2},
        )
    assert CrmOutboxWorker(engine, registry).flush(force=True) == 1


async def _forever(_seconds: float) -> None:
    await asyncio.Event().wait()
