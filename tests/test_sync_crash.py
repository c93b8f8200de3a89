"""Crash safety: `wacrm sync --once` killed with SIGKILL at random points, again and again.

A real simulator process on a loopback port and a real SQLite store; between kills, new
changes keep arriving for records already queued (so coalescing and in-flight changes are
crashed too). After the last restart every record must be in the simulator exactly once,
with its latest values, and the outbox must be empty.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from wacrm.store import create_store_engine, migrate
from wacrm.store.accounts import ensure_account
from wacrm.store.outbox import enqueue_crm_change
from wacrm.store.schema import crm_outbox

KILLS = 24
MAX_ROUNDS = 60  # a round whose run finishes before its kill time does not count
CONTACTS = 1200
TICKETS = 150
CHANGED_PER_ROUND = 600


@pytest.fixture
def simulator() -> Iterator[str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wacrm.sandbox.crm_app",
            "--port",
            "0",
            "--max-batch",
            "10",
            "--rate-limit",
            "100000",
            "--window",
            "1",
            "--latency",
            "0.004",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on "), line
        yield line.split()[-1]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _enqueue(engine: Any, account_id: int, keys: range, version: int, tickets: bool) -> None:
    with engine.begin() as conn:
        for i in keys:
            enqueue_crm_change(
                conn,
                account_id=account_id,
                object="contacts",
                record_key=f"+1222{i:07d}",
                properties={"unread_count": version, "name": f"n{i}-{version}"},
            )
        if tickets:
            for i in range(TICKETS):
                enqueue_crm_change(
                    conn,
                    account_id=account_id,
                    object="tickets",
                    record_key=f"wa:m{i}",
                    properties={"subject": f"ticket {i}"},
                    contact_key=f"+1222{i:07d}",
                    urgent=True,
                )


def _sync_command(url: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "wacrm.cli",
        "sync",
        "--once",
        "--simulator",
        url,
        "--max-batch",
        "10",
        "--rate-limit",
        "100000/1",
        "--timeout",
        "5",
        "--no-progress",
    ]


def test_given_sigkill_at_random_points_when_restarted_then_every_record_exactly_once(
    simulator: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'wacrm.db'}"
    engine = create_store_engine(url)
    migrate(engine)
    account_id = ensure_account(engine, "default")
    _enqueue(engine, account_id, range(CONTACTS), 1, tickets=True)
    env = {**os.environ, "WACRM_DATABASE_URL": url, "WACRM_CONFIG": str(tmp_path / "none.toml")}
    rng = random.Random(20261125)
    latest = {i: 1 for i in range(CONTACTS)}

    killed_while_running = 0
    for round_ in range(MAX_ROUNDS):
        if killed_while_running >= KILLS:
            break
        process = subprocess.Popen(
            _sync_command(simulator),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            process.wait(timeout=rng.uniform(0.2, 1.5))  # start-up takes ~0.4 s
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            killed_while_running += 1
        process.wait()
        # Meanwhile, WhatsApp keeps changing some contacts.
        changed = rng.sample(range(CONTACTS), CHANGED_PER_ROUND)
        with engine.begin() as conn:
            for i in changed:
                latest[i] = round_ + 2
                enqueue_crm_change(
                    conn,
                    account_id=account_id,
                    object="contacts",
                    record_key=f"+1222{i:07d}",
                    properties={"unread_count": latest[i], "name": f"n{i}-{latest[i]}"},
                )

    final = subprocess.run(_sync_command(simulator), env=env, capture_output=True, timeout=120)
    assert final.returncode == 0, final.stderr.decode()[-2000:]

    assert killed_while_running >= KILLS
    stats = httpx.get(f"{simulator}/_sim/stats").json()
    assert stats["max_creates_per_key"] == 1
    contacts = httpx.get(f"{simulator}/_sim/records/contacts").json()
    tickets = httpx.get(f"{simulator}/_sim/records/tickets").json()
    by_key = {r["properties"]["wacrm_key"]: r["properties"] for r in contacts}
    assert len(contacts) == CONTACTS == len(by_key)
    assert {r["properties"]["wacrm_key"] for r in tickets} == {f"wa:m{i}" for i in range(TICKETS)}
    assert len(tickets) == TICKETS
    wrong = [
        i
        for i in range(CONTACTS)
        if by_key[f"+1222{i:07d}"]["whatsapp_unread_count"] != latest[i]
        or by_key[f"+1222{i:07d}"]["full_name"] != f"n{i}-{latest[i]}"
    ]
    assert wrong == []
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(crm_outbox)).scalar() == 0
    engine.dispose()
