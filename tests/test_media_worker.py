"""The media worker against the Cloud API sandbox: fetch, verify, store, and retry a
transient failure later without losing the message or the attachment."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from conftest import PHONE_NUMBER_ID
from sqlalchemy import Engine, select

from wacrm.config import Secret
from wacrm.sandbox.whatsapp import SandboxConfig, WhatsAppSandbox
from wacrm.server.responses import Receive, Scope, Send
from wacrm.store.schema import media, messages
from wacrm.workers.media import MediaWorker, extension_for, sha256_matches

TOKEN = "sandbox-access-token"
GRAPH = "http://sandbox/v25.0"
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40 + b"\xff\xd9"
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class Faults:
    """ASGI wrapper: answer ``status`` to the next ``count`` requests whose path matches."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.rules: list[list[Any]] = []  # [predicate, status, remaining]
        self.paths: list[str] = []

    def fail(self, predicate: Callable[[str], bool], status: int, count: int) -> None:
        self.rules.append([predicate, status, count])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
            for rule in self.rules:
                if rule[2] > 0 and rule[0](scope["path"]):
                    rule[2] -= 1
                    await send({"type": "http.response.start", "status": rule[1], "headers": []})
                    await send({"type": "http.response.body", "body": b""})
                    return
        await self.app(scope, receive, send)


def is_download(path: str) -> bool:
    return path.startswith("/_sandbox/media/")


def is_look_up(path: str) -> bool:
    return path.startswith("/v25.0/") and not path.endswith("/media")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sandbox(clock: Clock) -> WhatsAppSandbox:
    config = SandboxConfig(access_token=TOKEN, app_secret="sandbox-secret", mps=None)
    return WhatsAppSandbox(config, clock=lambda: clock.now.timestamp())


@pytest.fixture
def faults(sandbox: WhatsAppSandbox) -> Faults:
    return Faults(sandbox.app)


@pytest.fixture
async def http(faults: Faults) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=faults)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
        yield client


def make_worker(
    engine: Engine, http: httpx.AsyncClient, tmp_path: Path, clock: Clock, **kw: Any
) -> MediaWorker:
    return MediaWorker(
        engine,
        http,
        graph_url=GRAPH,
        access_token=Secret(TOKEN),
        media_dir=tmp_path / "media",
        clock=clock,
        jitter=lambda: 1.0,
        **kw,
    )


async def upload(http: httpx.AsyncClient, data: bytes = JPEG, mime: str = "image/jpeg") -> str:
    response = await http.post(
        f"/v25.0/{PHONE_NUMBER_ID}/media",
        headers={"Authorization": f"Bearer {TOKEN}"},
        data={"messaging_product": "whatsapp", "type": mime},
        files={"file": ("photo.jpg", data, mime)},
    )
    assert response.status_code == 200, response.text
    media_id: str = response.json()["id"]
    return media_id


def inbound_media(
    engine: Engine, account_id: int, wamid: str, body: dict[str, Any], mtype: str = "image"
) -> int:
    raw: dict[str, Any] = {
        "from": "16505551234",
        "id": wamid,
        "timestamp": "1749416383",
        "type": mtype,
    }
    raw[mtype] = body
    with engine.begin() as conn:
        result = conn.execute(
            messages.insert().values(
                account_id=account_id,
                direction="in",
                provider="meta",
                provider_message_id=wamid,
                type=mtype,
                payload=orjson.dumps(raw).decode(),
                status="received",
                created_at=T0,
            )
        )
        assert result.inserted_primary_key is not None
        return int(result.inserted_primary_key[0])


def media_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(media).order_by(media.c.id)))


def message_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(messages.c.id)).all())


# --- the happy path ------------------------------------------------------------------------


async def test_given_image_message_when_worker_runs_then_file_stored_by_sha256(
    engine: Engine, account_id: int, http: httpx.AsyncClient, tmp_path: Path, clock: Clock
) -> None:
    media_id = await upload(http)
    digest = hashlib.sha256(JPEG).hexdigest()
    inbound_media(engine, account_id, "wamid.img1", {"id": media_id, "mime_type": "image/jpeg",
                                                     "sha256": digest})  # fmt: skip
    worker = make_worker(engine, http, tmp_path, clock)

    tried = await worker.run_once()

    assert tried == 1
    [row] = media_rows(engine)
    assert (row.state, row.attempts, row.error) == ("stored", 1, None)
    assert row.path == f"{account_id}/{digest}.jpg"
    assert (row.sha256, row.file_size, row.mime_type) == (digest, len(JPEG), "image/jpeg")
    stored = tmp_path / "media" / row.path
    assert stored.read_bytes() == JPEG
    assert [p.name for p in stored.parent.iterdir()] == [stored.name]  # no temporary left


async def test_given_worker_run_twice_when_nothing_new_then_one_row_and_no_new_requests(
    engine: Engine, account_id: int, http: httpx.AsyncClient, tmp_path: Path, clock: Clock,
    faults: Faults,
) -> None:  # fmt: skip
    media_id = await upload(http)
    inbound_media(engine, account_id, "wamid.img2", {"id": media_id})
    worker = make_worker(engine, http, tmp_path, clock)
    await worker.run_once()
    requests_after_first = len(faults.paths)

    second = await make_worker(engine, http, tmp_path, clock).run_once()  # as after a restart

    assert second == 0
    assert len(media_rows(engine)) == 1
    assert len(faults.paths) == requests_after_first


# --- transient failures: retried later, nothing lost ---------------------------------------


@pytest.mark.parametrize(
    ("predicate", "status", "reason"),
    [
        (is_download, 503, "media download answered HTTP 503"),
        (is_look_up, 503, "media look-up answered HTTP 503"),
        (is_download, 404, "URL expired (404)"),
        (is_look_up, 429, "HTTP 429"),
    ],
)
async def test_given_transient_failure_when_worker_runs_then_retried_later_and_stored(
    engine: Engine, account_id: int, http: httpx.AsyncClient, tmp_path: Path, clock: Clock,
    faults: Faults, predicate: Callable[[str], bool], status: int, reason: str,
) -> None:  # fmt: skip
    media_id = await upload(http)
    inbound_media(engine, account_id, "wamid.flaky", {"id": media_id})
    faults.fail(predicate, status, 1)
    worker = make_worker(engine, http, tmp_path, clock)

    await worker.run_once()
    [pending] = media_rows(engine)
    not_yet = await worker.run_once()  # before the backoff is over: not tried
    clock.now += timedelta(seconds=5)
    await worker.run_once()

    assert (pending.state, pending.attempts) == ("pending", 1)
    assert reason in pending.error
    assert pending.next_attempt_at == T0 + timedelta(seconds=5)
    assert not_yet == 0
    [row] = media_rows(engine)
    assert (row.state, row.attempts, row.error) == ("stored", 2, None)
    assert (tmp_path / "media" / row.path).read_bytes() == JPEG
    assert message_count(engine) == 1  # the message was there all along


async def test_given_provider_down_for_good_when_attempts_run_out_then_failed_with_reason(
    engine: Engine, account_id: int, http: httpx.AsyncClient, tmp_path: Path, clock: Clock,
    faults: Faults,
) -> None:  # fmt: skip
    media_id = await upload(http)
    inbound_media(engine, account_id, "wamid.down", {"id": media_id})
    faults.fail(is_look_up, 503, 100)
    worker = make_worker(engine, http, tmp_path, clock, max_attempts=3)

    delays = []
    for _ in range(3):
        await worker.run_once()
        [row] = media_rows(engine)
        delays.append(row.next_attempt_at - clock.now)
        clock.now = row.next_attempt_at

    [row] = media_rows(engine)
    assert row.state == "failed"
    assert row.error.startswith("gave up after 3 attempts: media look-up answered HTTP 503")
    assert delays[:2] == [timedelta(seconds=5), timedelta(seconds=10)]  # doubling backoff
    assert message_count(engine) == 1


# --- permanent failures ----------------------------------------------------------------------


async def test_given_bytes_not_matching_announced_sha256_when_fetched_then_failed_no_file(
    engine: Engine, account_id: int, http: httpx.AsyncClient, tmp_path: Path, clock: Clock
) -> None:
    media_id = await upload(http)
    inbound_media(engine, account_id, "wamid.bad", {"id": media_id, "sha256": "0" * 64})
    worker = make_worker(engine, http, tmp_path, clock)

    await worker.run_once()

    [row] = media_rows(engine)
    assert row.state == "failed"
    assert "do not match the announced sha256" in row.error
    assert list((tmp_path / "media" / str(account_id)).iterdir()) == []


async def test_given_unknown_media_id_or_none_when_worker_runs_then_failed_with_reason(
    engine: Engine, account_id: int, http: httpx.AsyncClient, tmp_path: Path, clock: Clock
) -> None:
    inbound_media(engine, account_id, "wamid.gone", {"id": "999999"})
    inbound_media(engine, account_id, "wamid.noid", {"mime_type": "audio/ogg"}, mtype="audio")
    worker = make_worker(engine, http, tmp_path, clock)

    await worker.run_once()

    rows = {r.provider_message_id: r for r in media_rows(engine)}
    assert rows["wamid.gone"].state == "failed"
    assert "HTTP 400" in rows["wamid.gone"].error
    assert TOKEN not in rows["wamid.gone"].error
    assert (rows["wamid.noid"].state, rows["wamid.noid"].error) == (
        "failed",
        "the message names no media id",
    )


# --- helpers ---------------------------------------------------------------------------------


def test_given_hash_as_hex_or_base64_when_compared_then_both_match() -> None:
    digest = hashlib.sha256(JPEG).digest()
    import base64

    assert sha256_matches(digest.hex(), digest)
    assert sha256_matches(base64.b64encode(digest).decode(), digest)
    assert not sha256_matches("0" * 64, digest)
    assert not sha256_matches("not base64!", digest)


@pytest.mark.parametrize(
    ("mime", "ext"),
    [("image/jpeg", ".jpg"), ("audio/ogg; codecs=opus", ".ogg"), ("application/pdf", ".pdf"),
     ("application/x-unknown-thing", ".bin"), (None, ".bin")],
)  # fmt: skip
def test_given_mime_type_when_naming_file_then_expected_extension(
    mime: str | None, ext: str
) -> None:
    assert extension_for(mime) == ext


async def test_given_running_worker_when_woken_then_stores_media_and_stops_when_asked(
    engine: Engine, account_id: int, http: httpx.AsyncClient, tmp_path: Path, clock: Clock
) -> None:
    import asyncio

    worker = make_worker(engine, http, tmp_path, clock, poll_seconds=60)  # only a wake helps
    worker.wake()  # before run(): harmless
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    media_id = await upload(http)
    await asyncio.sleep(0.05)  # the first pass found nothing
    inbound_media(engine, account_id, "wamid.live", {"id": media_id})

    worker.wake()
    for _ in range(200):
        if [r.state for r in media_rows(engine)] == ["stored"]:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)

    assert [r.state for r in media_rows(engine)] == ["stored"]
    assert not http.is_closed  # a client it was given is the caller's to close


async def test_given_failed_attachment_when_wacrm_media_retry_then_fetched_again_and_stored(
    sqlite_engine: Engine, http: httpx.AsyncClient, tmp_path: Path, clock: Clock, faults: Faults
) -> None:
    from click.testing import CliRunner

    from wacrm.cli import cli
    from wacrm.store.accounts import ensure_account

    account = ensure_account(sqlite_engine, "media-cli")
    media_id = await upload(http)
    inbound_media(sqlite_engine, account, "wamid.retry", {"id": media_id})
    faults.fail(is_look_up, 503, 1)
    await make_worker(sqlite_engine, http, tmp_path, clock, max_attempts=1).run_once()
    env = {
        "WACRM_CONFIG": str(tmp_path / "absent.toml"),
        "WACRM_DATABASE_URL": f"sqlite:///{tmp_path / 'wacrm.db'}",
    }

    before = CliRunner(env=env).invoke(cli, ["media", "status"])
    retried = CliRunner(env=env).invoke(cli, ["media", "retry"])
    clock.now = datetime.now(UTC)  # the command queues it for the wall clock's now
    await make_worker(sqlite_engine, http, tmp_path, clock).run_once()
    after = CliRunner(env=env).invoke(cli, ["media", "status"])

    assert before.output.splitlines() == ["stored: 0", "pending: 0", "failed: 1"]
    assert retried.exit_code == 0 and "1 failed attachment(s) queued again" in retried.output
    assert after.output.splitlines() == ["stored: 1", "pending: 0", "failed: 0"]


async def test_given_lower_id_committed_after_a_higher_one_when_rescan_due_then_found(
    engine: Engine, account_id: int, http: httpx.AsyncClient, tmp_path: Path, clock: Clock
) -> None:
    # Two processors: message 2 commits first and is discovered, then message 1 commits.
    worker = make_worker(engine, http, tmp_path, clock, rescan_every=timedelta(minutes=5))
    first_id = inbound_media(engine, account_id, "wamid.late", {"id": await upload(http)})
    second_id = inbound_media(engine, account_id, "wamid.early", {"id": await upload(http)})
    with engine.begin() as conn:  # hide the first, as if not yet committed
        conn.execute(messages.update().where(messages.c.id == first_id).values(direction="x"))
    assert worker.discover() == 1
    with engine.begin() as conn:
        conn.execute(messages.update().where(messages.c.id == first_id).values(direction="in"))

    too_soon = worker.discover()
    clock.now += timedelta(minutes=5)
    rescanned = worker.discover()

    assert (too_soon, rescanned) == (0, 1)
    assert second_id > first_id
    assert {r.provider_message_id for r in media_rows(engine)} == {"wamid.late", "wamid.early"}
