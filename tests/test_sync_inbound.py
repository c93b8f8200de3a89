"""CRM → mirror: ownership and conflicts, echo suppression, bookmarks, signposts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select
from test_sync_fakes import T0, FakeClock, FakeConnector

from wacrm.connectors.base import IncomingRecord
from wacrm.connectors.local import LocalConnector
from wacrm.mappings import load_mapping
from wacrm.store.outbox import enqueue_crm_change
from wacrm.store.schema import contacts, crm_outbox
from wacrm.sync import engine as sync_engine
from wacrm.sync.conflicts import LocalState, resolve
from wacrm.sync.cursors import Bookmark, CursorWentBackwards, load_bookmark, save_bookmark
from wacrm.sync.engine import SyncEngine
from wacrm.sync.mirror import apply_contacts
from wacrm.workers.crm_outbox import CrmOutboxWorker

MAPPING = load_mapping("local", "contacts")
PHONE = "+15550001111"


# -- conflict rules ------------------------------------------------------------------------


def test_given_fields_owned_by_each_side_then_only_crm_owned_and_shared_fields_are_read() -> None:
    local = LocalState({"order_status_code": None, "wa_id": "15550001111"})

    result = resolve(MAPPING, local, {"order_status_code": "SHIPPED", "wa_id": "999"}, T0)

    assert result.mirror == {"order_status_code": "SHIPPED"}  # wa_id belongs to WhatsApp


def test_given_tags_on_both_sides_then_merged_as_sets_and_the_union_goes_back_to_the_crm() -> None:
    local = LocalState({"tags": ["lead", "price"]})

    result = resolve(MAPPING, local, {"tags": "vip;lead"}, T0)

    assert result.mirror == {"tags": ["lead", "price", "vip"]}
    assert result.outbound == {"tags": ["lead", "price", "vip"]}


def test_given_our_own_values_read_back_then_nothing_changes() -> None:
    local = LocalState({"priority": "high", "unread_count": 3, "tags": ["a", "b"]})

    result = resolve(MAPPING, local, {"priority": "high", "unread_count": "3", "tags": "b;a"}, T0)

    assert result.unchanged


def test_given_a_newer_queued_local_value_then_it_wins_over_an_older_crm_change() -> None:
    local = LocalState({"priority": "low"}, pending={"priority": T0 + timedelta(seconds=10)})

    result = resolve(MAPPING, local, {"priority": "high"}, T0)

    assert result.unchanged  # our queued write will overwrite the CRM


def test_given_a_newer_crm_value_then_it_wins_and_supersedes_our_queued_value() -> None:
    local = LocalState({"priority": "low"}, pending={"priority": T0})

    result = resolve(MAPPING, local, {"priority": "high"}, T0 + timedelta(seconds=1))

    assert result.mirror == {"priority": "high"}
    assert result.superseded == {"priority"}


def test_given_a_whatsapp_wins_field_then_the_crm_may_only_fill_a_blank() -> None:
    assert resolve(MAPPING, LocalState({"phone": PHONE}), {"phone": "+44"}, T0).unchanged
    assert resolve(MAPPING, LocalState({"phone": None}), {"phone": "+44"}, T0).mirror == {
        "phone": "+44"
    }


# -- pulls through the engine ----------------------------------------------------------------


def _contact(engine: Engine, account_id: int, clock: FakeClock, **values: Any) -> int:
    with engine.begin() as conn:
        result = conn.execute(
            contacts.insert().values(
                account_id=account_id,
                phone=PHONE,
                created_at=clock(),
                updated_at=clock(),
                **values,
            )
        )
        assert result.inserted_primary_key is not None
        return int(result.inserted_primary_key[0])


def _row(engine: Engine) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(contacts).where(contacts.c.phone == PHONE)).one()


def _sync(engine: Engine, crm: Any, clock: FakeClock, page_size: int = 100) -> SyncEngine:
    outbox = CrmOutboxWorker(engine, lambda _a: crm, clock=clock)
    return SyncEngine(engine, lambda _a: crm, outbox, clock=clock, page_size=page_size)


def _change(key: str, at_seconds: float, **props: Any) -> IncomingRecord:
    return IncomingRecord(key, f"crm-{key}", props, T0 + timedelta(seconds=at_seconds))


class LocalMapped(FakeConnector):
    mapping_name = "local"


def test_given_crm_owned_changes_when_pulled_then_the_mirror_has_them(
    engine: Engine, account_id: int
) -> None:
    clock = FakeClock(T0 + timedelta(minutes=1))
    _contact(engine, account_id, clock, priority="low")
    crm = LocalMapped(
        changes=[_change(PHONE, 5, priority="high", language="de", order_status_code="PAID")]
    )

    stats = _sync(engine, crm, clock).pull(account_id)

    row = _row(engine)
    assert (row.priority, row.language, row.order_status_code) == ("high", "de", "PAID")
    assert row.crm_id == f"crm-{PHONE}"
    assert stats.mirror.applied == 1


def test_given_a_second_pull_then_boundary_records_are_recognised_not_reapplied(
    engine: Engine, account_id: int
) -> None:
    clock = FakeClock(T0 + timedelta(minutes=1))
    _contact(engine, account_id, clock)
    crm = LocalMapped(changes=[_change(PHONE, 5, priority="high")])
    sync = _sync(engine, crm, clock)
    sync.pull(account_id)

    again = sync.pull(account_id)

    assert crm.reads[-1][1] == (T0 + timedelta(seconds=5)).isoformat()  # read with >=
    assert again.records == 1 and again.duplicates == 1 and again.mirror.applied == 0


def test_given_an_echo_of_our_write_then_the_mirror_and_outbox_are_untouched(
    engine: Engine, account_id: int
) -> None:
    clock = FakeClock(T0 + timedelta(minutes=1))
    _contact(engine, account_id, clock, unread_count=3, priority="high")
    before = _row(engine).updated_at
    clock.advance(60)
    crm = LocalMapped(changes=[_change(PHONE, 90, unread_count=3, priority="high")])

    stats = _sync(engine, crm, clock).pull(account_id)

    assert stats.mirror.unchanged == 1 and stats.mirror.applied == 0
    assert _row(engine).updated_at == before
    with engine.connect() as conn:
        assert conn.execute(select(crm_outbox)).first() is None


def test_given_a_change_after_the_signpost_then_it_waits_for_the_next_run(
    engine: Engine, account_id: int
) -> None:
    clock = FakeClock(T0 + timedelta(seconds=10))
    _contact(engine, account_id, clock)
    crm = LocalMapped(
        changes=[_change(PHONE, 5, language="fr"), _change("+15550002222", 20, language="es")]
    )
    sync = _sync(engine, crm, clock)

    sync.pull(account_id)

    assert crm.reads[0][2] == clock()  # the signpost: when the run started
    assert _row(engine).language == "fr"
    with engine.connect() as conn:
        assert load_bookmark(conn, account_id, "fake", "contacts").at == T0 + timedelta(seconds=5)


def test_given_a_crash_while_storing_a_page_then_the_bookmark_stays_before_it(
    engine: Engine, account_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(T0 + timedelta(minutes=1))
    _contact(engine, account_id, clock)
    crm = LocalMapped(changes=[_change(PHONE, 1, language="fr"), _change(PHONE, 2, language="it")])
    real = apply_contacts
    calls = []

    def crash_on_second_page(*args: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        real(*args)

    monkeypatch.setattr(sync_engine, "apply_contacts", crash_on_second_page)

    with pytest.raises(RuntimeError):
        _sync(engine, crm, clock, page_size=1).pull(account_id)

    with engine.connect() as conn:
        assert load_bookmark(conn, account_id, "fake", "contacts").at == T0 + timedelta(seconds=1)
    assert _row(engine).language == "fr"


def test_given_an_older_bookmark_when_saved_then_refused(engine: Engine, account_id: int) -> None:
    with engine.begin() as conn:
        save_bookmark(conn, account_id, "fake", "contacts", Bookmark("c2", T0, {}), T0)
        with pytest.raises(CursorWentBackwards):
            save_bookmark(
                conn,
                account_id,
                "fake",
                "contacts",
                Bookmark("c1", T0 - timedelta(seconds=1), {}),
                T0,
            )


def test_given_a_newer_crm_value_than_our_queued_one_then_the_queued_field_is_dropped(
    engine: Engine, account_id: int
) -> None:
    clock = FakeClock(T0)
    _contact(engine, account_id, clock, priority="low")
    with engine.begin() as conn:
        enqueue_crm_change(
            conn,
            account_id=account_id,
            object="contacts",
            record_key=PHONE,
            properties={"priority": "low", "unread_count": 1},
            now=clock(),
        )
    clock.advance(60)
    crm = LocalMapped(changes=[_change(PHONE, 30, priority="high")])

    _sync(engine, crm, clock).pull(account_id)

    assert _row(engine).priority == "high"
    with engine.connect() as conn:
        payload = orjson.loads(conn.execute(select(crm_outbox.c.payload)).scalar_one())
    assert payload["properties"] == {"unread_count": 1}


def test_given_a_contact_made_in_the_crm_with_a_phone_then_it_joins_the_mirror(
    engine: Engine, account_id: int
) -> None:
    clock = FakeClock(T0 + timedelta(minutes=1))
    crm = LocalMapped(changes=[_change("crm:77", 5, phone=PHONE, priority="medium")])

    stats = _sync(engine, crm, clock).pull(account_id)

    assert stats.mirror.created == 1
    assert _row(engine).priority == "medium"


def test_given_a_crm_user_edit_in_the_embedded_crm_when_pulled_then_the_mirror_has_it(
    engine: Engine, account_id: int
) -> None:
    clock = FakeClock(T0)
    _contact(engine, account_id, clock)
    local = LocalConnector(engine, account_id, clock=clock)
    local.update_properties("contacts", PHONE, {"priority": "high", "order_status": "SHIPPED"})
    clock.advance(1)

    _sync(engine, local, clock).pull(account_id)

    row = _row(engine)
    assert (row.priority, row.order_status_code) == ("high", "SHIPPED")


# -- tags: three-way merge against the value both sides last agreed on ----------------------


def test_given_a_tag_removed_in_the_crm_since_both_agreed_then_it_stays_removed() -> None:
    local = LocalState({"tags": ["vip", "x"]}, synced={"tags": ["vip", "x"]})

    result = resolve(MAPPING, local, {"tags": "x"}, T0)

    assert result.mirror == {"tags": ["x"]}
    assert result.outbound == {}  # a union would have written "vip" back
    assert result.synced == {"tags": ["x"]}


def test_given_a_tag_removed_here_since_both_agreed_then_the_crm_loses_it_too() -> None:
    local = LocalState({"tags": ["x"]}, synced={"tags": ["vip", "x"]})

    result = resolve(MAPPING, local, {"tags": "vip;x"}, T0)

    assert result.mirror == {}
    assert result.outbound == {"tags": ["x"]}
    assert result.synced == {}  # the base moves once the CRM is seen to have it


def test_given_additions_and_removals_on_both_sides_then_each_side_edit_survives() -> None:
    local = LocalState({"tags": ["a", "b", "c"]}, synced={"tags": ["a", "b"]})

    result = resolve(MAPPING, local, {"tags": "b;d"}, T0)  # the CRM dropped a, added d

    assert result.mirror == {"tags": ["b", "c", "d"]}
    assert result.outbound == {"tags": ["b", "c", "d"]}


def test_given_tags_removed_in_the_crm_when_pulled_twice_then_the_mirror_drops_them(
    engine: Engine, account_id: int
) -> None:
    clock = FakeClock(T0 + timedelta(minutes=1))
    _contact(engine, account_id, clock, tags=orjson.dumps(["vip", "x"]).decode())
    crm = LocalMapped(changes=[_change(PHONE, 5, tags="vip;x")])
    sync = _sync(engine, crm, clock)
    sync.pull(account_id)  # both sides agree: that is the base now
    assert orjson.loads(_row(engine).tags_synced) == ["vip", "x"]

    crm.changes.append(_change(PHONE, 10, tags="x"))
    sync.pull(account_id)

    assert orjson.loads(_row(engine).tags) == ["x"]
    with engine.connect() as conn:
        assert conn.execute(select(crm_outbox)).first() is None  # nothing written back


def test_given_the_mirror_holding_a_queued_row_when_the_inbox_merges_then_it_waits_and_keeps_both(
    pg_engine: Engine,
) -> None:
    """Dropping a superseded field rewrites the pending payload: a change the inbox merged
    into it meanwhile must wait for the mirror's transaction, not be overwritten by it."""
    import threading

    from wacrm.store.accounts import ensure_account
    from wacrm.sync import mirror

    account = ensure_account(pg_engine, "lost-update")
    clock = FakeClock(T0)
    _contact(pg_engine, account, clock)
    with pg_engine.begin() as conn:
        enqueue_crm_change(
            conn,
            account_id=account,
            object="contacts",
            record_key=PHONE,
            properties={"priority": "low"},
            now=T0,
        )
    merged = threading.Event()

    def inbox_merge() -> None:
        with pg_engine.begin() as conn:
            enqueue_crm_change(
                conn,
                account_id=account,
                object="contacts",
                record_key=PHONE,
                properties={"language": "de"},
                now=T0,
            )
        merged.set()

    with pg_engine.begin() as conn:
        pending = mirror._pending(conn, account, PHONE)  # as the mirror reads it
        assert pending is not None
        inbox = threading.Thread(target=inbox_merge)
        inbox.start()
        assert not merged.wait(0.5)  # waits for the mirror's transaction
        mirror._drop_pending_fields(conn, pending[0], frozenset({"priority"}))
    inbox.join(10)
    assert merged.is_set()
    with pg_engine.connect() as conn:
        payload = conn.execute(
            select(crm_outbox.c.payload).where(crm_outbox.c.account_id == account)
        ).scalar_one()
    assert orjson.loads(payload)["properties"] == {"language": "de"}
