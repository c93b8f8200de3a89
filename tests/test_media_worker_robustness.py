"""The media worker when things go wrong for long: an outage or a refused token outlasting
minutes, a full disk, two workers on one row, and media ids that are not media ids."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from test_media_worker import (
    GRAPH,
    JPEG,
    T0,
    TOKEN,
    Clock,
    Faults,
    inbound_media,
    is_download,
    is_look_up,
    make_worker,
    media_rows,
    upload,
)

import wacrm.workers.media as media_module
from wacrm.config import Secret
from wacrm.sandbox.whatsapp import SandboxConfig, WhatsAppSandbox
from wacrm.server.responses import Receive, Scope, Send
from wacrm.store.schema import media
from wacrm.workers.media import MediaWorker

GIVE_UP_AFTER = timedelta(days=6)  # the worker's default, kept: media ids live 7 days


# The fixtures of test_media_worker, made here alike (importing them would shadow names).
@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def faults(clock: Clock) -> Faults:
    config = SandboxConfig(access_token=TOKEN, app_secret="sandbox-secret", mps=None)
    return Faults(WhatsAppSandbox(config, clock=lambda: clock.now.timestamp()).app)


@pytest.fixture
async def http(faults: Faults) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(faults) as client:
        yield client


@contextlib.asynccontextmanager
async def client_for(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
        yield client


def rows_by_wamid(engine: Engine) -> dict[str, Any]:
    return {r.provider_message_id: r for r in media_rows(engine)}


async def run_until_settled(worker: MediaWorker, engine: Engine, clock: Clock) -> list[Any]:
    """Pass after pass, each at the row's next attempt, until it is no longer pending; the
    row as each pass left it."""
    seen = []
    for _ in range(1000):
        await worker.run_once()
        [row] = media_rows(engine)
        seen.append(row)
        if row.state != "pending":
            return seen
        clock.now = row.next_attempt_at
    raise AssertionError("still pending after 1000 passes")


# --- 1. a long outage or a refused token: retried with capped backoff until the deadline ---


async def test_given_lookup_down_for_hours_when_worker_retries_then_waits_capped_and_stored(
    engine: Engine, account_id: int, http: httpx.AsyncClient, tmp_path: Path, clock: Clock,
    faults: Faults,
) -> None:  # fmt: skip
    inbound_media(engine, account_id, "wamid.outage", {"id": await upload(http)})
    faults.fail(is_look_up, 503, 20)  # about six hours of 503s
    worker = make_worker(engine, http, tmp_path, clock)

    seen = await run_until_settled(worker, engine, clock)

    waits = [r.next_attempt_at - r.updated_at for r in seen[:-1]]
    assert [r.state for r in seen] == ["pending"] * 20 + ["stored"]
    assert waits[:3] == [timedelta(seconds=5), timedelta(seconds=10), timedelta(seconds=20)]
    assert max(waits) == timedelta(minutes=30) == waits[-1]  # capped, never longer
    assert seen[-1].attempts == 21 and seen[-1].error is None
    assert clock.now - T0 > timedelta(hours=5)
    assert (tmp_path / "media" / seen[-1].path).read_bytes() == JPEG


async def test_given_lookup_down_for_good_when_retrying_then_failed_at_give_up_after(
    engine: Engine, account_id: int, http: httpx.AsyncClient, tmp_path: Path, clock: Clock,
    faults: Faults,
) -> None:  # fmt: skip
    inbound_media(engine, account_id, "wamid.gone-for-good", {"id": await upload(http)})
    faults.fail(is_look_up, 503, 10_000)
    worker = make_worker(engine, http, tmp_path, clock)

    seen = await run_until_settled(worker, engine, clock)

    final = seen[-1]
    assert final.state == "failed"
    assert final.error.startswith(f"gave up after {final.attempts} attempts over 6 days")
    assert final.error.endswith("media look-up answered HTTP 503")
    assert clock.now == T0 + GIVE_UP_AFTER  # the last try was at the deadline, none after
    assert all(r.next_attempt_at <= T0 + GIVE_UP_AFTER for r in seen[:-1])
    assert final.attempts > 250  # every 30 minutes for six days, and none lost to overflow


async def test_given_row_tried_hundreds_of_times_when_transient_again_then_waits_the_cap(
    engine: Engine, account_id: int, http: httpx.AsyncClient, tmp_path: Path, clock: Clock,
    faults: Faults,
) -> None:  # fmt: skip
    inbound_media(engine, account_id, "wamid.old", {"id": await upload(http)})
    worker = make_worker(engine, http, tmp_path, clock)
    worker.discover()
    with engine.begin() as conn:
        conn.execute(media.update().values(attempts=5000))
    faults.fail(is_download, 503, 1)

    await worker.run_once()

    [row] = media_rows(engine)
    assert (row.state, row.attempts) == ("pending", 5001)
    assert row.next_attempt_at == T0 + timedelta(minutes=30)


@pytest.mark.parametrize("status", [401, 403])
async def test_given_token_refused_when_retrying_then_backs_off_uncounted_and_logs_once(
    engine: Engine, account_id: int, http: httpx.AsyncClient, tmp_path: Path, clock: Clock,
    faults: Faults, caplog: pytest.LogCaptureFixture, status: int,
) -> None:  # fmt: skip
    inbound_media(engine, account_id, "wamid.token1", {"id": await upload(http)})
    inbound_media(engine, account_id, "wamid.token2", {"id": await upload(http)})
    faults.fail(is_look_up, status, 8)  # two rows, four passes
    worker = make_worker(engine, http, tmp_path, clock)

    waits = []
    with caplog.at_level(logging.INFO, logger="wacrm.workers.media"):
        for _ in range(4):
            await worker.run_once()
            row = rows_by_wamid(engine)["wamid.token1"]
            waits.append(row.next_attempt_at - clock.now)
            clock.now = row.next_attempt_at
        refused = rows_by_wamid(engine)
        await worker.run_once()  # the token works again

    assert [(r.state, r.attempts) for r in refused.values()] == [("pending", 0)] * 2
    assert f"HTTP {status}" in refused["wamid.token1"].error
    assert "WACRM_WHATSAPP_ACCESS_TOKEN" in refused["wamid.token1"].error
    assert waits == [timedelta(seconds=s) for s in (5, 10, 20, 40)]  # doubling all the same
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "WACRM_WHATSAPP_ACCESS_TOKEN" in errors[0].getMessage()
    assert [(r.state, r.attempts) for r in media_rows(engine)] == [("stored", 1)] * 2


async def test_given_wrong_token_when_refused_then_token_in_neither_log_nor_row(
    engine: Engine, account_id: int, http: httpx.AsyncClient, tmp_path: Path, clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    wrong = "EAAG-wrong-token-value"
    inbound_media(engine, account_id, "wamid.wrong", {"id": await upload(http)})
    worker = MediaWorker(
        engine, http, graph_url=GRAPH, access_token=Secret(wrong),
        media_dir=tmp_path / "media", clock=clock, jitter=lambda: 1.0,
    )  # fmt: skip

    with caplog.at_level(logging.DEBUG):
        await worker.run_once()

    [row] = media_rows(engine)
    assert (row.state, row.attempts) == ("pending", 0)
    assert "HTTP 401" in row.error
    assert "WACRM_WHATSAPP_ACCESS_TOKEN" in caplog.text
    assert wrong not in caplog.text and wrong not in row.error
    assert TOKEN not in caplog.text


# --- 2. a full disk, and one attempt failing in a concurrent pass ---------------------------


class _FullFile:
    """A file being written on a full disk."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._real.close()


class DiskFull:
    """Stands in for ``os`` in wacrm.workers.media: the next ``files`` files written fail."""

    def __init__(self, files: int) -> None:
        self.files = files

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fdopen(self, fd: int, mode: str) -> Any:
        real = os.fdopen(fd, mode)
        if self.files <= 0:
            return real
        self.files -= 1
        return _FullFile(real)


async def test_given_disk_full_when_storing_then_pending_with_storage_reason_and_retried(
    engine: Engine, account_id: int, http: httpx.AsyncClient, tmp_path: Path, clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    inbound_media(engine, account_id, "wamid.full", {"id": await upload(http)})
    monkeypatch.setattr(media_module, "os", DiskFull(files=1))
    worker = make_worker(engine, http, tmp_path, clock)

    await worker.run_once()
    [pending] = media_rows(engine)
    clock.now = pending.next_attempt_at
    await worker.run_once()

    assert (pending.state, pending.attempts) == ("pending", 1)
    assert pending.error == "storage: No space left on device"
    assert pending.next_attempt_at == T0 + timedelta(seconds=5)
    [row] = media_rows(engine)
    assert (row.state, row.attempts, row.error) == ("stored", 2, None)
    stored = tmp_path / "media" / row.path
    assert [p.name for p in stored.parent.iterdir()] == [stored.name]  # no temporary left


async def test_given_disk_full_for_one_file_when_pass_runs_then_the_others_stored(
    engine: Engine, account_id: int, http: httpx.AsyncClient, tmp_path: Path, clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    for n in range(3):
        inbound_media(engine, account_id, f"wamid.many{n}", {"id": await upload(http)})
    monkeypatch.setattr(media_module, "os", DiskFull(files=1))
    worker = make_worker(engine, http, tmp_path, clock, concurrency=1)

    tried = await worker.run_once()

    assert tried == 3
    states = sorted((r.state, r.error) for r in media_rows(engine))
    assert states == [("pending", "storage: No space left on device")] + [("stored", None)] * 2


async def test_given_unexpected_error_in_one_fetch_when_pass_runs_then_others_stored_and_logged(
    engine: Engine, account_id: int, http: httpx.AsyncClient, tmp_path: Path, clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    broken = await upload(http)
    inbound_media(engine, account_id, "wamid.broken", {"id": broken})
    inbound_media(engine, account_id, "wamid.fine", {"id": await upload(http)})
    worker = make_worker(engine, http, tmp_path, clock)
    real_fetch = worker.fetch

    async def fetch(account: int, media_id: str | None, sha256: str | None) -> Any:
        if media_id == broken:
            raise RuntimeError("a bug")
        return await real_fetch(account, media_id, sha256)

    worker.fetch = fetch  # type: ignore[method-assign,assignment]

    with caplog.at_level(logging.ERROR, logger="wacrm.workers.media"):
        tried = await worker.run_once()

    rows = rows_by_wamid(engine)
    assert tried == 2
    assert rows["wamid.fine"].state == "stored"
    assert (rows["wamid.broken"].state, rows["wamid.broken"].error) == (
        "pending",
        "unexpected error: RuntimeError",
    )
    assert rows["wamid.broken"].next_attempt_at == T0 + timedelta(seconds=5)
    assert any("wamid.broken" in r.getMessage() and r.exc_info for r in caplog.records)


# --- 3. two workers, one row -----------------------------------------------------------------


class SlowLookUp:
    """ASGI wrapper: every look-up takes a while, so that a second worker reading the table
    meanwhile would see the row still pending."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_look_up(scope["path"]):
            await asyncio.sleep(0.1)
        await self.app(scope, receive, send)


class HeldLookUp:
    """ASGI wrapper: the first look-up waits for ``release``, then answers ``status``."""

    def __init__(self, app: Any, status: int) -> None:
        self.app = app
        self.status = status
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_look_up(scope["path"]) and not self.entered.is_set():
            self.entered.set()
            await self.release.wait()
            await send({"type": "http.response.start", "status": self.status, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


@pytest.fixture
async def slow_http(faults: Faults) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(SlowLookUp(faults)) as client:
        yield client


async def test_given_two_workers_when_both_run_on_one_row_then_fetched_once_and_stored(
    engine: Engine, account_id: int, slow_http: httpx.AsyncClient, tmp_path: Path,
    clock: Clock, faults: Faults,
) -> None:  # fmt: skip
    inbound_media(engine, account_id, "wamid.shared", {"id": await upload(slow_http)})
    first = make_worker(engine, slow_http, tmp_path, clock)
    second = make_worker(engine, slow_http, tmp_path, clock)

    tried = await asyncio.gather(first.run_once(), second.run_once())

    assert sorted(tried) == [0, 1]
    assert len([p for p in faults.paths if is_download(p)]) == 1
    assert len([p for p in faults.paths if is_look_up(p)]) == 1
    [row] = media_rows(engine)
    assert (row.state, row.attempts, row.error) == ("stored", 1, None)


async def test_given_stale_worker_when_it_fails_after_another_stored_then_row_stays_stored(
    engine: Engine, account_id: int, faults: Faults, tmp_path: Path, clock: Clock
) -> None:
    held = HeldLookUp(faults, status=400)
    async with client_for(held) as http:
        inbound_media(engine, account_id, "wamid.stale", {"id": await upload(http)})
        stale = make_worker(engine, http, tmp_path, clock)  # its lease: 15 minutes
        task = asyncio.create_task(stale.run_once())
        await asyncio.wait_for(held.entered.wait(), 5)  # it has the row, and hangs

        clock.now += timedelta(minutes=16)  # its lease is over: the row is due again
        fresh = await make_worker(engine, http, tmp_path, clock).run_once()
        held.release.set()  # the stale worker's look-up now fails for good
        await asyncio.wait_for(task, 5)

    assert fresh == 1
    [row] = media_rows(engine)
    assert (row.state, row.attempts, row.error) == ("stored", 1, None)
    assert (tmp_path / "media" / row.path).read_bytes() == JPEG


async def test_given_worker_died_mid_fetch_when_others_run_then_row_waits_for_its_lease(
    engine: Engine, account_id: int, faults: Faults, tmp_path: Path, clock: Clock
) -> None:
    held = HeldLookUp(faults, status=503)
    async with client_for(held) as http:
        inbound_media(engine, account_id, "wamid.leased", {"id": await upload(http)})
        dying = asyncio.create_task(make_worker(engine, http, tmp_path, clock).run_once())
        await asyncio.wait_for(held.entered.wait(), 5)
        dying.cancel()  # the process died holding the row
        with contextlib.suppress(asyncio.CancelledError):
            await dying
        downloads = len([p for p in faults.paths if is_download(p)])

        during = await make_worker(engine, http, tmp_path, clock).run_once()
        clock.now += timedelta(minutes=15)
        after = await make_worker(engine, http, tmp_path, clock).run_once()

    assert (downloads, during, after) == (0, 0, 1)
    assert len([p for p in faults.paths if is_download(p)]) == 1
    assert [(r.state, r.attempts) for r in media_rows(engine)] == [("stored", 1)]


# --- 4. media ids that are not media ids ----------------------------------------------------


@pytest.mark.parametrize(
    "media_id",
    [
        "../../v25.0/me?fields=id&x=",
        "123/../../me",
        "123?fields=access_token",
        "123#",
        "12 34",
        "123\n",
        "١٢٣",  # Arabic-Indic digits: \d would take them
    ],
)
async def test_given_non_numeric_media_id_when_worker_runs_then_failed_without_any_request(
    engine: Engine, account_id: int, http: httpx.AsyncClient, tmp_path: Path, clock: Clock,
    faults: Faults, media_id: str,
) -> None:  # fmt: skip
    inbound_media(engine, account_id, "wamid.evil", {"id": media_id, "mime_type": "image/jpeg"})
    worker = make_worker(engine, http, tmp_path, clock)

    await worker.run_once()

    [row] = media_rows(engine)
    assert faults.paths == []
    assert row.state == "failed"
    assert "is not numeric" in row.error
