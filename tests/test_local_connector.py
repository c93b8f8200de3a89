"""The embedded CRM on both backends: upserts, per-record failures, the change feed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select

from wacrm.connectors import CrmConnector, OutgoingRecord, load_connector_class
from wacrm.connectors.base import ConnectorError
from wacrm.connectors.local import LocalConnector, PropertyDef
from wacrm.store.accounts import ensure_account
from wacrm.store.schema import local_crm_records

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def crm(engine: Engine, account_id: int, clock: Clock) -> LocalConnector:
    return LocalConnector(engine, account_id, clock=clock)


def contact(phone: str, **props: Any) -> OutgoingRecord:
    return OutgoingRecord(key=phone, properties={"phone": phone, **props})


def stored(engine: Engine, object: str = "contacts") -> dict[str, Any]:
    t = local_crm_records
    with engine.connect() as conn:
        found = conn.execute(
            select(t.c.external_id, t.c.properties, t.c.updated_at).where(t.c.object == object)
        ).all()
    return {r.external_id: (orjson.loads(r.properties), r.updated_at) for r in found}


def test_given_local_connector_when_loaded_by_entry_point_then_it_implements_the_protocol(
    crm: LocalConnector,
) -> None:
    assert load_connector_class("local") is LocalConnector
    assert isinstance(crm, CrmConnector)
    assert (crm.name, crm.max_batch) == ("local", 100)


def test_given_existing_account_when_checked_then_ok_and_missing_account_not_ok(
    engine: Engine, crm: LocalConnector
) -> None:
    assert crm.check().ok
    assert not LocalConnector(engine, 999_999).check().ok


def test_given_contacts_when_written_then_stored_under_crm_property_names(
    engine: Engine, crm: LocalConnector
) -> None:
    seen = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)
    record = contact(
        "+16315551234",
        wa_id="16315551234",
        name="Alice",
        unread_count=2,
        last_interaction_at=seen.isoformat(),
        tags=["vip", "lead", "vip"],
        order_status_code="SHIPPED",  # owned by the CRM: never written from our side
        favourite_colour="teal",  # not in the mapping
    )

    [result] = crm.write_batch("contacts", [record])

    assert result.ok and result.crm_id
    assert result.extra["ignored"] == ["favourite_colour", "order_status_code"]
    props, _ = stored(engine)["+16315551234"]
    assert props == {
        "phone": "+16315551234",
        "whatsapp_id": "16315551234",
        "full_name": "Alice",
        "whatsapp_unread_count": 2,
        "whatsapp_last_interaction": seen.isoformat(),
        "whatsapp_tags": ["lead", "vip"],
    }


def test_given_same_batch_written_twice_when_upserted_then_same_records_and_no_new_change(
    engine: Engine, crm: LocalConnector, clock: Clock
) -> None:
    batch = [contact("+16315551234", name="Alice"), contact("+447400123456", name="Bob")]
    first = crm.write_batch("contacts", batch)
    clock.now = T0 + timedelta(minutes=5)

    second = crm.write_batch("contacts", batch)

    assert [r.crm_id for r in first] == [r.crm_id for r in second]
    assert [r.extra["created"] for r in first] == [True, True]
    assert [(r.extra["created"], r.extra["changed"]) for r in second] == [(False, False)] * 2
    records = stored(engine)
    assert len(records) == 2
    # Unchanged records keep their modified time, so re-writing is not a change to sync back.
    assert {when for _, when in records.values()} == {T0}


def test_given_partial_update_when_upserted_then_properties_merged(
    engine: Engine, crm: LocalConnector, clock: Clock
) -> None:
    crm.write_batch("contacts", [contact("+16315551234", name="Alice", unread_count=1)])
    clock.now = T0 + timedelta(minutes=1)

    [result] = crm.write_batch("contacts", [OutgoingRecord("+16315551234", {"unread_count": 3})])

    assert result.extra == {"created": False, "changed": True}
    props, updated_at = stored(engine)["+16315551234"]
    assert props["full_name"] == "Alice"
    assert props["whatsapp_unread_count"] == 3
    assert updated_at == clock.now


def test_given_bad_records_in_batch_when_written_then_per_record_failures_and_rest_written(
    engine: Engine, crm: LocalConnector
) -> None:
    [alice] = crm.write_batch("contacts", [contact("+16315551234")])
    batch = [
        OutgoingRecord("wa:wamid.1", {"subject": "help"}, contact_key="+16315551234"),
        OutgoingRecord("wa:wamid.2", {"subject": "lost"}, contact_key="+19999999999"),
        OutgoingRecord("wa:wamid.3", {"subject": "orphan"}),
    ]

    results = crm.write_batch("tickets", batch)

    assert [r.key for r in results] == ["wa:wamid.1", "wa:wamid.2", "wa:wamid.3"]
    assert results[0].ok
    assert (results[1].ok, results[1].error_code, results[1].retryable) == (
        False,
        "CONTACT_NOT_FOUND",
        True,
    )
    assert (results[2].ok, results[2].error_code, results[2].retryable) == (
        False,
        "MISSING_CONTACT_KEY",
        False,
    )
    tickets = stored(engine, "tickets")
    assert set(tickets) == {"wa:wamid.1"}
    assert tickets["wa:wamid.1"][0] == {"subject": "help", "contact_id": int(alice.crm_id or 0)}


def test_given_value_of_wrong_type_when_written_then_that_record_fails_with_code(
    engine: Engine, crm: LocalConnector
) -> None:
    results = crm.write_batch(
        "contacts",
        [
            contact("+16315551234", unread_count="many"),
            contact("+447400123456", last_interaction_at="yesterday"),
            contact("+5511987654321", name="Carla"),
        ],
    )

    assert [(r.ok, r.error_code) for r in results] == [
        (False, "INVALID_VALUE"),
        (False, "INVALID_VALUE"),
        (True, None),
    ]
    assert "unread_count" in (results[0].error_message or "")
    assert set(stored(engine)) == {"+5511987654321"}


def test_given_unknown_object_when_written_then_every_record_fails_without_exception(
    crm: LocalConnector,
) -> None:
    results = crm.write_batch("deals", [OutgoingRecord("d1", {}), OutgoingRecord("d2", {})])

    assert [(r.key, r.ok, r.error_code) for r in results] == [
        ("d1", False, "UNKNOWN_OBJECT"),
        ("d2", False, "UNKNOWN_OBJECT"),
    ]


def test_given_batch_over_maximum_when_written_then_whole_call_refused(
    crm: LocalConnector,
) -> None:
    batch = [contact(f"+1631555{i:04d}") for i in range(101)]

    with pytest.raises(ConnectorError) as excinfo:
        crm.write_batch("contacts", batch)

    assert excinfo.value.code == "BATCH_TOO_LARGE"


# -- the change feed -----------------------------------------------------------------------


def read_all(
    crm: LocalConnector, cursor: str | None, signpost: datetime | None, limit: int
) -> tuple[list[str], str | None, int]:
    keys: list[str] = []
    pages = 0
    while True:
        page = crm.read_changes("contacts", cursor, signpost, limit)
        pages += 1
        keys += [r.key for r in page.records]
        cursor = page.next_cursor or cursor
        if not page.more:
            return keys, cursor, pages


def test_given_many_records_with_identical_timestamps_when_paged_then_none_skipped_or_repeated(
    crm: LocalConnector,
) -> None:
    phones = [f"+1631555{i:04d}" for i in range(7)]
    crm.write_batch("contacts", [contact(p) for p in phones])  # one instant for all seven

    keys, _, pages = read_all(crm, None, None, limit=3)

    assert keys == phones
    assert pages == 3


def test_given_signpost_when_read_then_later_changes_wait_for_the_next_run(
    crm: LocalConnector, clock: Clock
) -> None:
    crm.write_batch("contacts", [contact("+16315550001"), contact("+16315550002")])
    signpost = clock.now
    clock.now = T0 + timedelta(seconds=1)
    crm.write_batch("contacts", [contact("+16315550003")])  # after the run started

    first_run, cursor, _ = read_all(crm, None, signpost, limit=10)
    second_run, _, _ = read_all(crm, cursor, clock.now, limit=10)

    assert first_run == ["+16315550001", "+16315550002"]
    assert second_run == ["+16315550003"]


def test_given_record_read_then_edited_when_read_again_then_returned_once_more(
    crm: LocalConnector, clock: Clock
) -> None:
    crm.write_batch("contacts", [contact("+16315550001"), contact("+16315550002")])
    _, cursor, _ = read_all(crm, None, None, limit=10)
    clock.now = T0 + timedelta(seconds=5)

    crm.update_properties("contacts", "+16315550001", {"order_status": "SHIPPED"})
    page = crm.read_changes("contacts", cursor, None, 10)

    assert [r.key for r in page.records] == ["+16315550001"]
    [record] = page.records
    assert record.modified_at == clock.now
    # Standard names back, and only the fields the CRM may change.
    assert record.properties == {"phone": "+16315550001", "order_status_code": "SHIPPED"}
    assert crm.read_changes("contacts", page.next_cursor, None, 10).records == []


def test_given_fields_of_each_direction_when_read_then_only_shared_or_crm_owned_returned(
    crm: LocalConnector,
) -> None:
    written = contact("+16315550001", priority="high", unread_count=4, wa_id="16315550001")
    crm.write_batch("contacts", [written])

    [record] = crm.read_changes("contacts", None, None, 10).records

    # wa_id flows from WhatsApp only, so it is not offered back as a CRM change.
    assert record.properties == {
        "phone": "+16315550001",
        "priority": "high",
        "unread_count": 4,
    }
    assert record.crm_id.isdigit()


def test_given_user_created_record_when_update_properties_then_created_and_in_feed(
    crm: LocalConnector,
) -> None:
    crm_id = crm.update_properties("contacts", "+16315550009", {"full_name": "Zed"})

    [record] = crm.read_changes("contacts", None, None, 10).records
    assert (record.key, record.crm_id, record.properties["name"]) == (
        "+16315550009",
        crm_id,
        "Zed",
    )


def test_given_other_account_records_when_read_then_not_visible(
    engine: Engine, crm: LocalConnector
) -> None:
    other = LocalConnector(engine, ensure_account(engine, "other"))
    other.write_batch("contacts", [contact("+16315550001")])

    assert crm.read_changes("contacts", None, None, 10).records == []


@pytest.mark.parametrize("cursor", ["not-a-date|3", "2026-11-25T09:00:00|x", "2026-11-25T09:00"])
def test_given_malformed_cursor_when_read_then_connector_error(
    crm: LocalConnector, cursor: str
) -> None:
    with pytest.raises(ConnectorError) as excinfo:
        crm.read_changes("contacts", cursor, None, 10)

    assert excinfo.value.code == "INVALID_CURSOR"


def test_given_bare_timestamp_cursor_when_read_then_records_at_that_instant_included(
    crm: LocalConnector,
) -> None:
    crm.write_batch("contacts", [contact("+16315550001")])

    page = crm.read_changes("contacts", T0.isoformat(), None, 10)

    assert [r.key for r in page.records] == ["+16315550001"]


# -- properties, as installers see them ----------------------------------------------------


def test_given_property_defined_twice_when_defined_then_second_time_is_a_no_op(
    crm: LocalConnector,
) -> None:
    assert crm.define_property("contacts", "whatsapp_id", label="WhatsApp ID", type="string")
    assert not crm.define_property("contacts", "whatsapp_id", label="WhatsApp ID", type="string")
    assert crm.define_property(
        "contacts", "priority", label="Priority", type="enumeration", options=["high", "low"]
    )

    assert crm.list_properties("contacts") == [
        PropertyDef("priority", "Priority", "enumeration", ("high", "low")),
        PropertyDef("whatsapp_id", "WhatsApp ID", "string"),
    ]
    assert crm.list_properties("tickets") == []


def test_given_unknown_property_type_when_defined_then_refused(crm: LocalConnector) -> None:
    with pytest.raises(ConnectorError, match="unknown property type"):
        crm.define_property("contacts", "x", label="X", type="formula")


def test_given_no_time_for_a_slice_when_a_batch_is_written_then_one_transaction_per_record(
    engine: Engine, crm: LocalConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded CRM shares the store with the webhook inbox: a batch commits in slices,
    so a webhook's commit never waits behind a whole batch."""
    from sqlalchemy import event

    from wacrm.connectors import local

    monkeypatch.setattr(local, "_SLICE_SECONDS", 0.0)
    commits = [0]

    def on_commit(_conn: Any) -> None:
        commits[0] += 1

    event.listen(engine, "commit", on_commit)
    phones = [f"+1631555{n:04d}" for n in range(5)]

    results = crm.write_batch("contacts", [contact(p) for p in phones])

    assert [r.ok for r in results] == [True] * 5
    assert [r.key for r in results] == phones
    assert commits[0] == 5
    assert set(stored(engine)) == set(phones)
