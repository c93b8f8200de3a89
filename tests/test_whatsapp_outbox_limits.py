"""The WhatsApp outbox's limits: the 24 h customer-service window (template fallback) and
pacing (≤ mps per number, the per-recipient pair rate with its borrowed burst)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, select
from whatsapp_support import (
    ALICE,
    BOB,
    TOKEN,
    Clock,
    Graph,
    add_contact,
    add_outbound,
    add_outbound_to_many,
    graph_error,
    make_sandbox,
    make_worker,
    message_row,
    outbox_row,
    over_asgi,
)

from wacrm.config import Settings
from wacrm.store.accounts import register_number
from wacrm.store.schema import wa_outbox
from wacrm.whatsapp.meta_bodies import template_message, text_message
from wacrm.whatsapp.meta_send import CloudApiClient
from wacrm.whatsapp.pacing import PairLimiter, TokenBucket
from wacrm.workers.whatsapp_outbox import WhatsAppOutboxWorker


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def alice(engine: Engine, account_id: int, clock: Clock) -> int:
    """A contact who wrote an hour ago: the 24 h window is open."""
    return add_contact(engine, account_id, ALICE, clock.now - timedelta(hours=1))


# --- the 24 h window (phase 2) -------------------------------------------------------------


def test_given_window_closed_and_no_fallback_when_processed_then_refused_locally_131047(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    graph = Graph()
    stale = add_contact(engine, account_id, ALICE, clock.now - timedelta(hours=25))
    message_id, outbox_id = add_outbound(
        engine, account_id, text_message(ALICE, "Hi"), at=clock.now, contact_id=stale
    )

    make_worker(engine, clock, graph.client()).process_due()

    assert graph.bodies == []
    message = message_row(engine, message_id)
    assert (message.status, message.error_code) == ("failed", "131047")
    assert "refused locally" in outbox_row(engine, outbox_id).last_error


def test_given_unknown_recipient_when_processed_then_window_counts_as_closed(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    graph = Graph()
    _, outbox_id = add_outbound(engine, account_id, text_message(BOB, "Cold"), at=clock.now)

    make_worker(engine, clock, graph.client()).process_due()

    assert graph.bodies == []
    assert outbox_row(engine, outbox_id).state == "failed"


def test_given_window_closed_with_template_fallback_when_processed_then_template_sent(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    graph = Graph()
    stale = add_contact(engine, account_id, ALICE, clock.now - timedelta(days=3))
    fallback = template_message(ALICE, "follow_up", "en_US")
    message_id, outbox_id = add_outbound(
        engine,
        account_id,
        text_message(ALICE, "Free text"),
        at=clock.now,
        contact_id=stale,
        fallback=fallback,
    )

    make_worker(engine, clock, graph.client()).process_due()

    (sent,) = graph.bodies
    assert sent["type"] == "template" and sent["template"]["name"] == "follow_up"
    message = message_row(engine, message_id)
    assert (message.type, message.provider_message_id) == ("template", "wamid.SCRIPTED1")
    assert outbox_row(engine, outbox_id).state == "sent"


def test_given_meta_says_131047_with_fallback_when_processed_then_switches_to_template(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    graph = Graph(graph_error(131047))
    _, outbox_id = add_outbound(
        engine,
        account_id,
        text_message(ALICE, "Free text"),
        at=clock.now,
        contact_id=alice,
        fallback=template_message(ALICE, "follow_up", "en_US"),
    )

    make_worker(engine, clock, graph.client()).process_due()

    assert [b["type"] for b in graph.bodies] == ["text", "template"]
    assert outbox_row(engine, outbox_id).state == "sent"


def test_given_template_outside_window_when_processed_then_sent(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    graph = Graph()
    _, outbox_id = add_outbound(
        engine, account_id, template_message(BOB, "hello", "en"), at=clock.now
    )

    make_worker(engine, clock, graph.client()).process_due()

    assert outbox_row(engine, outbox_id).state == "sent"


# --- pacing (phase 2) ----------------------------------------------------------------------


def test_given_50_messages_to_one_user_when_processed_then_45_burst_rest_paced_in_order(
    engine: Engine, account_id: int, alice: int, clock: Clock
) -> None:
    sandbox = make_sandbox(clock, mps=None)
    for i in range(50):
        add_outbound(
            engine, account_id, text_message(ALICE, f"m{i}"), at=clock.now, contact_id=alice
        )
    worker = make_worker(engine, clock, over_asgi(sandbox), batch_size=100)

    worker.process_due()
    burst = len(sandbox.sent)
    for _ in range(50):  # the burst borrowed 45 × 6 s: m45 goes at 264 s, m49 at 288 s
        clock.advance(6)
        worker.process_due()

    assert burst == 45
    assert sandbox.refused == []  # never provoked 131056
    assert [s.body["text"]["body"] for s in sandbox.sent] == [f"m{i}" for i in range(50)]
    with engine.connect() as conn:
        states = conn.execute(select(wa_outbox.c.state)).scalars().all()
    assert set(states) == {"sent"}


def test_given_mps_limit_when_many_recipients_then_sleeps_to_stay_under_it(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    sandbox = make_sandbox(clock, mps=10)
    start = clock.now
    add_outbound_to_many(engine, account_id, 25, at=clock.now, wrote_at=clock.now)
    worker = make_worker(engine, clock, over_asgi(sandbox), mps=10)
    paced = 10 * worker.policy.mps_headroom  # a little under the mps (OutboxPolicy)

    worker.process_due()

    assert len(sandbox.sent) == 25
    assert sandbox.refused == []
    assert clock.now - start == timedelta(seconds=24 / paced)  # evenly spaced, 1/paced s


def test_given_whatsapp_mps_setting_when_worker_built_then_paced_at_that_rate(
    engine: Engine, account_id: int, clock: Clock
) -> None:
    # A coexistence number is fixed at 20 mps: at the default 80 the sandbox refuses most.
    sandbox = make_sandbox(clock, mps=20)
    start = clock.now
    add_outbound_to_many(engine, account_id, 41, at=clock.now, wrote_at=clock.now)
    client = CloudApiClient(
        base_url="http://sandbox.test", version="v25.0", access_token=TOKEN, http=over_asgi(sandbox)
    )
    worker = WhatsAppOutboxWorker(
        engine, Settings(whatsapp_mps=20), client, clock=clock, sleep=clock.sleep
    )

    worker.process_due()

    assert worker.policy.mps == 20
    assert (len(sandbox.sent), sandbox.refused) == (41, [])
    assert clock.now - start == timedelta(seconds=40 / (20 * worker.policy.mps_headroom))


def test_given_many_pair_rate_delays_when_a_real_error_follows_then_it_still_gets_retries(
    engine: Engine, account_id: int, clock: Clock, alice: int
) -> None:
    graph = Graph(*[graph_error(131056)] * 8, graph_error(131000))
    _, outbox_id = add_outbound(
        engine, account_id, text_message(ALICE, "hi"), at=clock.now, contact_id=alice
    )
    worker = make_worker(engine, clock, graph.client())

    for _ in range(12):
        worker.process_due()
        clock.advance(1100)  # past the longest pair delay (4^5 s)

    row = outbox_row(engine, outbox_id)
    assert len(graph.bodies) == 10  # 8 pair-rate refusals, one 131000, then accepted
    assert (row.state, row.attempts) == ("sent", 2)  # only the 131000 and the send count


@pytest.mark.parametrize(("code", "wider"), [(4, "the app"), (80007, "the account's WABA")])
def test_given_limit_wider_than_a_number_when_hit_then_the_other_number_waits_too(
    engine: Engine, account_id: int, clock: Clock, alice: int, code: int, wider: str
) -> None:
    register_number(engine, account_id, "106540352242999")
    graph = Graph(graph_error(code))
    first = add_outbound(
        engine, account_id, text_message(ALICE, "1"), at=clock.now, contact_id=alice
    )[1]
    other = add_outbound(
        engine,
        account_id,
        text_message(ALICE, "2"),
        at=clock.now,
        contact_id=alice,
        phone_number_id="106540352242999",
    )[1]
    worker = make_worker(engine, clock, graph.client())

    worker.process_due()  # the first draws the limit; the other number is held back too
    held_back = len(graph.bodies)
    clock.advance(0.5)
    during = worker.process_due()
    clock.advance(5)
    for _ in range(3):
        worker.process_due()

    assert held_back == 1, f"a send from the other number went out past {wider}'s limit"
    assert during == 0
    assert outbox_row(engine, first).state == outbox_row(engine, other).state == "sent"


def test_given_token_bucket_when_reserving_then_waits_are_rate_spaced() -> None:
    bucket = TokenBucket(rate=2, capacity=2)

    waits = [bucket.reserve(0.0) for _ in range(4)]

    assert waits == [0.0, 0.0, 0.5, 1.0]
    assert bucket.reserve(10.0) == 0.0  # refilled, capped at capacity


def test_given_pair_limiter_when_burst_then_borrowed_quota_is_paid_back() -> None:
    pairs = PairLimiter(interval=6.0, burst=45)
    for _ in range(45):
        assert pairs.wait("u", 0.0) == 0.0
        pairs.record("u", 0.0)

    assert pairs.wait("u", 1.0) == pytest.approx(263.0)  # as if sent one per 6 s
    assert pairs.wait("other", 1.0) == 0.0
    pairs.hold("other", 100.0)
    assert pairs.wait("other", 1.0) == pytest.approx(99.0)
    pairs.forget_idle(1_000.0)
    assert pairs.wait("u", 1_000.0) == 0.0
