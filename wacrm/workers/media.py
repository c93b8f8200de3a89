"""The media worker: inbound attachments fetched promptly, verified, stored, and retried.

Meta's media flow (facts/whatsapp.md §1, Media download): ``GET {graph}/{media_id}`` (Bearer)
answers ``{url, mime_type, sha256, file_size}``; ``GET url`` with the same Bearer gives the
bytes. The URL lives 5 minutes and a webhook's media id 7 days, so the worker fetches as soon
as it learns of a message, and on a 404 from the URL simply asks for a new one.

The worker finds its work in the ``messages`` table (inbound image, document, video, audio and
sticker rows), so it needs nothing from the inbox processor: each such message gets one
``media`` row, which moves ``pending`` → ``stored`` (file at ``media_dir/<account>/<sha256>.<ext>``,
written to a temporary name, fsync'd, then renamed) or ``failed`` with the reason. A transient
failure (5xx, 429, timeout, connection error, a 404 URL) is retried with exponential backoff
and jitter, bounded by attempts and by the media id's lifetime; the message row is never
touched, so an attachment that cannot be had never costs the message (Chatwoot #15754).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import mimetypes
import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import orjson
from sqlalchemy import Engine, and_, select
from sqlalchemy.dialects import postgresql, sqlite

from wacrm.config import Secret, Settings
from wacrm.model import MEDIA_TYPES
from wacrm.store.schema import media, messages
from wacrm.workers.async_wake import WakeLoop

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
# Connect fast, but give a large document time to arrive.
_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
MAX_BYTES = 100 * 1024 * 1024  # Meta's largest inbound media (documents); more is 131052
# Extensions mimetypes gets wrong or lacks for WhatsApp's types.
_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "audio/ogg": ".ogg",
    "audio/mpeg": ".mp3",
    "audio/amr": ".amr",
    "audio/aac": ".aac",
    "image/webp": ".webp",
    "text/plain": ".txt",
    "video/3gpp": ".3gp",
}
_MEDIA_TYPE_NAMES = sorted(t.value for t in MEDIA_TYPES)


class _Transient(Exception):
    """Worth trying again later."""


class _Permanent(Exception):
    """Trying again cannot help (the id is gone, the bytes are wrong, the file is too big)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def extension_for(mime_type: str | None) -> str:
    mime = (mime_type or "").split(";")[0].strip().lower()
    return _EXTENSIONS.get(mime) or mimetypes.guess_extension(mime) or ".bin"


def sha256_matches(expected: str, digest: bytes) -> bool:
    """Meta announces hashes as hex (media look-up) or base64 (some webhooks): accept both."""
    value = expected.strip()
    if value.lower() == digest.hex():
        return True
    with contextlib.suppress(binascii.Error, ValueError):
        return base64.b64decode(value, validate=True) == digest
    return False


@dataclass(frozen=True, slots=True)
class Fetched:
    path: str  # relative to the media directory
    mime_type: str | None
    sha256: str
    size: int


class MediaWorker:
    name = "media"

    def __init__(
        self,
        engine: Engine,
        client: httpx.AsyncClient | None,
        *,
        graph_url: str,
        access_token: Secret,
        media_dir: Path,
        clock: Clock = _utcnow,
        jitter: Callable[[], float] = random.random,
        poll_seconds: float = 2.0,
        batch_size: int = 20,
        concurrency: int = 4,
        max_attempts: int = 8,
        backoff_base: timedelta = timedelta(seconds=5),
        backoff_cap: timedelta = timedelta(minutes=30),
        give_up_after: timedelta = timedelta(days=6),  # media ids live 7 days
        rescan_every: timedelta = timedelta(minutes=5),
    ) -> None:
        self._engine = engine
        self._given_client = client
        self._client = client or httpx.AsyncClient(timeout=_TIMEOUT)
        self._graph_url = graph_url.rstrip("/")
        self._token = access_token
        self._dir = media_dir
        self._clock = clock
        self._jitter = jitter
        self._poll = poll_seconds
        self._batch = batch_size
        self._concurrency = concurrency
        self._max_attempts = max_attempts
        self._base = backoff_base
        self._cap = backoff_cap
        self._give_up_after = give_up_after
        # Discovery reads messages after a high-water mark, and from the start again every
        # ``rescan_every``: with several processors a lower id can commit after a higher one.
        self._after_message_id = 0
        self._rescan_every = rescan_every
        self._last_full_scan: datetime | None = None
        self._wakes = WakeLoop()

    @classmethod
    def from_settings(
        cls,
        engine: Engine,
        settings: Settings,
        client: httpx.AsyncClient | None = None,
        **kwargs: Any,
    ) -> MediaWorker:
        """The worker ``build_workers`` runs; without ``client`` it owns one (closed when
        :meth:`run` returns)."""
        return cls(
            engine,
            client,
            graph_url=settings.graph_url,
            access_token=settings.whatsapp_access_token,
            media_dir=Path(settings.media_dir),
            **kwargs,
        )

    # -- Worker protocol ---------------------------------------------------------------------

    def wake(self) -> None:
        """Safe from any thread."""
        self._wakes.wake()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._wakes.run(stop, self._pass)
        finally:
            if self._given_client is None:
                await self._client.aclose()

    async def _pass(self) -> float:
        try:
            await self.run_once()
        except Exception:  # the store is down, say: log, wait, go on
            logger.exception("media pass failed; retrying")
        return self._poll

    async def run_once(self) -> int:
        """Discover new media messages, then try every due row once; returns rows tried."""
        await asyncio.to_thread(self.discover)
        due = await asyncio.to_thread(self._due)
        limit = asyncio.Semaphore(self._concurrency)

        async def one(row: Any) -> None:
            async with limit:
                await self._attempt(row)

        await asyncio.gather(*(one(row) for row in due))
        return len(due)

    # -- discovery ---------------------------------------------------------------------------

    def discover(self) -> int:
        """Give every inbound media message without a ``media`` row one; returns how many."""
        now = self._clock()
        if self._last_full_scan is None or now - self._last_full_scan >= self._rescan_every:
            self._after_message_id, self._last_full_scan = 0, now
        found = 0
        with self._engine.begin() as conn:
            candidates = conn.execute(
                select(
                    messages.c.id,
                    messages.c.account_id,
                    messages.c.provider,
                    messages.c.provider_message_id,
                    messages.c.type,
                    messages.c.payload,
                )
                .select_from(
                    messages.outerjoin(
                        media,
                        and_(
                            media.c.account_id == messages.c.account_id,
                            media.c.provider_message_id == messages.c.provider_message_id,
                        ),
                    )
                )
                .where(
                    messages.c.id > self._after_message_id,
                    messages.c.direction == "in",
                    messages.c.provider == "meta",
                    messages.c.type.in_(_MEDIA_TYPE_NAMES),
                    messages.c.provider_message_id.is_not(None),
                    media.c.id.is_(None),
                )
                .order_by(messages.c.id)
                .limit(500)
            ).all()
            rows = [self._new_row(c, now) for c in candidates]
            if rows:
                insert = (
                    postgresql.insert(media)
                    if conn.dialect.name == "postgresql"
                    else sqlite.insert(media)
                )
                # A row another worker created meanwhile is skipped; counted all the same
                # (PostgreSQL reports no row count for an executemany).
                conn.execute(insert.on_conflict_do_nothing(), rows)
                found = len(rows)
        if candidates:
            self._after_message_id = candidates[-1].id
        return found

    @staticmethod
    def _new_row(candidate: Any, now: datetime) -> dict[str, Any]:
        try:
            raw = orjson.loads(candidate.payload)
        except orjson.JSONDecodeError:
            raw = None
        body = raw.get(candidate.type) if isinstance(raw, dict) else None
        body = body if isinstance(body, dict) else {}
        media_id = body.get("id")
        row: dict[str, Any] = {
            "account_id": candidate.account_id,
            "message_id": candidate.id,
            "provider": candidate.provider,
            "provider_message_id": candidate.provider_message_id,
            "media_id": str(media_id) if media_id else None,
            "mime_type": body.get("mime_type") if isinstance(body.get("mime_type"), str) else None,
            "sha256": body.get("sha256") if isinstance(body.get("sha256"), str) else None,
            "state": "pending",
            "attempts": 0,
            "error": None,  # every row has every key: an executemany takes the first's keys
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }
        if not media_id:  # kept, so that it is visible and not rediscovered on every pass
            row.update(state="failed", error="the message names no media id")
        return row

    # -- attempts ----------------------------------------------------------------------------

    def _due(self) -> list[Any]:
        with self._engine.connect() as conn:
            return list(
                conn.execute(
                    select(media)
                    .where(media.c.state == "pending", media.c.next_attempt_at <= self._clock())
                    .order_by(media.c.next_attempt_at, media.c.id)
                    .limit(self._batch)
                )
            )

    async def _attempt(self, row: Any) -> None:
        try:
            fetched = await self.fetch(row.account_id, row.media_id, row.sha256)
        except _Transient as exc:
            await asyncio.to_thread(self._retry_or_give_up, row, str(exc))
            return
        except _Permanent as exc:
            await asyncio.to_thread(self._finish, row, "failed", error=str(exc))
            logger.warning("media of message %s not stored: %s", row.provider_message_id, exc)
            return
        await asyncio.to_thread(self._finish, row, "stored", fetched=fetched)

    def _retry_or_give_up(self, row: Any, reason: str) -> None:
        now = self._clock()
        attempts = row.attempts + 1
        if attempts >= self._max_attempts or now - row.created_at >= self._give_up_after:
            self._finish(row, "failed", error=f"gave up after {attempts} attempts: {reason}")
            logger.warning("media of message %s given up: %s", row.provider_message_id, reason)
            return
        delay = min(self._cap, self._base * 2 ** (attempts - 1))
        delay = delay * (0.5 + self._jitter() / 2)  # jitter: spread retries after an outage
        with self._engine.begin() as conn:
            conn.execute(
                media.update()
                .where(media.c.id == row.id)
                .values(
                    attempts=attempts, next_attempt_at=now + delay, error=reason, updated_at=now
                )
            )

    def _finish(
        self, row: Any, state: str, *, fetched: Fetched | None = None, error: str | None = None
    ) -> None:
        now = self._clock()
        values: dict[str, Any] = {
            "state": state,
            "attempts": row.attempts + 1,
            "error": error,
            "updated_at": now,
        }
        if fetched is not None:
            values.update(
                path=fetched.path,
                mime_type=fetched.mime_type,
                sha256=fetched.sha256,
                file_size=fetched.size,
            )
        with self._engine.begin() as conn:
            conn.execute(media.update().where(media.c.id == row.id).values(**values))

    # -- fetching ----------------------------------------------------------------------------

    async def fetch(self, account_id: int, media_id: str, announced_sha256: str | None) -> Fetched:
        """Look the media up, download it and store it; raises _Transient / _Permanent."""
        info = await self._look_up(media_id)
        url = info.get("url")
        if not isinstance(url, str) or not url:
            raise _Permanent("the media look-up answered no url")
        size = info.get("file_size")
        if isinstance(size, int) and size > MAX_BYTES:
            raise _Permanent(f"the file is {size} bytes; the limit is {MAX_BYTES}")
        expected = [h for h in (info.get("sha256"), announced_sha256) if isinstance(h, str) and h]
        mime = info.get("mime_type") if isinstance(info.get("mime_type"), str) else None
        return await self._download(url, account_id, mime, expected)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token.reveal()}"}

    async def _look_up(self, media_id: str) -> dict[str, Any]:
        try:
            response = await self._client.get(
                f"{self._graph_url}/{media_id}", headers=self._headers()
            )
        except httpx.TimeoutException:
            raise _Transient("media look-up timed out") from None
        except httpx.TransportError as exc:
            raise _Transient(f"media look-up failed: {type(exc).__name__}") from None
        _raise_for(response, "media look-up")
        try:
            doc = response.json()
        except ValueError:
            raise _Transient("media look-up answered no JSON") from None
        if not isinstance(doc, dict):
            raise _Transient("media look-up answered no JSON object")
        return doc

    async def _download(
        self, url: str, account_id: int, mime: str | None, expected: list[str]
    ) -> Fetched:
        folder = self._dir / str(account_id)
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".part-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                digest, size = await self._stream_to(url, out)
            for value in expected:
                if not sha256_matches(value, digest):
                    raise _Permanent("the downloaded bytes do not match the announced sha256")
            name = digest.hex() + extension_for(mime)
            await asyncio.to_thread(_publish, tmp, folder / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Fetched(f"{account_id}/{name}", mime, digest.hex(), size)

    async def _stream_to(self, url: str, out: BinaryIO) -> tuple[bytes, int]:
        hasher = hashlib.sha256()
        size = 0
        try:
            async with self._client.stream("GET", url, headers=self._headers()) as response:
                if response.status_code == 404:  # the URL expired: look it up anew
                    raise _Transient("the media URL expired (404); a new one is needed")
                _raise_for(response, "media download")
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_BYTES:
                        raise _Permanent(f"the file is larger than {MAX_BYTES} bytes")
                    hasher.update(chunk)
                    out.write(chunk)
        except httpx.TimeoutException:
            raise _Transient("media download timed out") from None
        except httpx.TransportError as exc:
            raise _Transient(f"media download failed: {type(exc).__name__}") from None
        out.flush()
        await asyncio.to_thread(os.fsync, out.fileno())
        return hasher.digest(), size


def _raise_for(response: httpx.Response, what: str) -> None:
    status = response.status_code
    if status == 200:
        return
    if status == 429 or status >= 500 or status in (401, 408):
        # 401: an expired token is fixed by refreshing it; bounded retries give time for it.
        raise _Transient(f"{what} answered HTTP {status}")
    code = None
    with contextlib.suppress(ValueError, AttributeError):
        code = response.json().get("error", {}).get("code")
    raise _Permanent(f"{what} answered HTTP {status}" + (f" (Graph error {code})" if code else ""))


def _publish(tmp: Path, final: Path) -> None:
    """Rename into place and make the rename durable. Same bytes give the same name, so a
    second download of a file already there simply replaces it with identical content."""
    os.replace(tmp, final)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def media_states(engine: Engine) -> dict[str, int]:
    """How many attachments are in each state (``pending``, ``stored``, ``failed``)."""
    from sqlalchemy import func

    with engine.connect() as conn:
        rows = conn.execute(select(media.c.state, func.count()).group_by(media.c.state)).all()
    return {str(state): int(count) for state, count in rows}


def retry_failed(engine: Engine, now: datetime) -> int:
    """Put every failed attachment back in line, attempts reset; returns how many. Meta keeps
    webhook media ids for 7 days: older ones fail again, with the Graph error as reason."""
    with engine.begin() as conn:
        result = conn.execute(
            media.update()
            .where(media.c.state == "failed", media.c.media_id.is_not(None))
            .values(state="pending", attempts=0, next_attempt_at=now, updated_at=now)
        )
    return int(result.rowcount or 0)
