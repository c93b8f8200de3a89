"""The media worker: inbound attachments fetched promptly, verified, stored, and retried.

Meta's media flow (facts/whatsapp.md §1, Media download): ``GET {graph}/{media_id}`` (Bearer)
answers ``{url, mime_type, sha256, file_size}``; ``GET url`` with the same Bearer gives the
bytes. The URL lives 5 minutes and a webhook's media id 7 days, so the worker fetches as soon
as it learns of a message, and on a 404 from the URL simply asks for a new one.

Twilio's flow (:mod:`wacrm.workers.media_twilio`): the message's ``MediaUrl0`` is kept as the
row's ``media_id``, fetched with HTTP Basic auth from the configured Twilio API host only,
its redirect to a short-lived CDN URL followed without credentials. Twilio announces no hash:
the computed sha256 is recorded. Until Twilio is configured its rows wait (``pending``, the
reason naming the settings to set), as they do while the auth token is refused.

The worker finds its work in the ``messages`` table (inbound image, document, video, audio and
sticker rows), so it needs nothing from the inbox processor: each such message gets one
``media`` row, which moves ``pending`` → ``stored`` (file at ``media_dir/<account>/<sha256>.<ext>``,
written to a temporary name, fsync'd, then renamed) or ``failed`` with the reason. A transient
failure (5xx, 429, timeout, connection error, a 404 URL, a full or failing disk, a refused
token) is retried with exponential backoff, capped per wait and jittered, until
``created_at + give_up_after`` (within the media id's lifetime) and, if ``max_attempts`` is
set, that many attempts; the message row is never touched, so an attachment that cannot be
had never costs the message (Chatwoot #15754).

Several workers (``wacrm serve`` processes on one PostgreSQL) share the table: a worker claims
due rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's write lock serialises) and
leases them by pushing ``next_attempt_at`` forward in the same transaction. Every outcome is
written only if the row is still the one claimed (``pending``, same ``attempts``, same
lease), so a worker whose lease ran out cannot overwrite a newer outcome.
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
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import orjson
from sqlalchemy import Engine, and_, select

from wacrm.config import Secret, Settings
from wacrm.model import MEDIA_TYPES
from wacrm.store.schema import media, messages
from wacrm.store.unique import dialect_insert
from wacrm.workers.async_wake import WakeLoop
from wacrm.workers.media_twilio import TOKEN_SETTING as TWILIO_TOKEN
from wacrm.workers.media_twilio import TwilioMediaAccount, TwilioMediaError, media_fields

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
# Cloud API media ids are numeric; anything else must not reach the Graph URL's path.
_MEDIA_ID = re.compile(r"[0-9]+")
_TOKEN_SETTING = "WACRM_WHATSAPP_ACCESS_TOKEN"
_MAX_DOUBLINGS = 32  # 2**32 base waits is far past any cap: keeps timedelta from overflowing
# Opens the answer carrying the file (status checked, body not yet read).
_Opener = Callable[[], contextlib.AbstractAsyncContextManager[httpx.Response]]


class _Transient(Exception):
    """Worth trying again later."""


class _Waiting(_Transient):
    """Waits for an operator (a refused token, Twilio not configured): costs no attempt.
    ``advice`` says what to set, for the log line written once."""

    def __init__(self, reason: str, advice: str) -> None:
        super().__init__(reason)
        self.advice = advice


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


def _checked_media_id(media_id: str | None) -> str:
    """The id if it is a Cloud API media id (ASCII digits only); raises :class:`_Permanent`
    otherwise, as it would put another Graph path, with our token, in the look-up URL."""
    if media_id is None or not _MEDIA_ID.fullmatch(media_id):
        shown = repr(media_id[:40]) if media_id is not None else "none"
        raise _Permanent(f"the media id {shown} is not numeric; it was not looked up")
    return media_id


@dataclass(frozen=True, slots=True)
class _Job:
    """A claimed ``media`` row: what fetching it needs, and what identifies the claim."""

    id: int
    account_id: int
    provider: str
    provider_message_id: str
    media_id: str | None
    mime_type: str | None
    sha256: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    leased_until: datetime


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
        max_attempts: int | None = None,  # None: bounded by ``give_up_after`` alone
        backoff_base: timedelta = timedelta(seconds=5),
        backoff_cap: timedelta = timedelta(minutes=30),
        give_up_after: timedelta = timedelta(days=6),  # media ids live 7 days
        rescan_every: timedelta = timedelta(minutes=5),
        lease: timedelta = timedelta(minutes=15),  # a claim's hold: longer than one fetch
        twilio: TwilioMediaAccount | None = None,  # None: Twilio rows wait for its settings
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
        self._lease = lease
        self._twilio = twilio or TwilioMediaAccount()
        self._waiting: set[str] = set()  # providers whose wait is logged, until one works
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
            twilio=TwilioMediaAccount.from_settings(settings),
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
        """Discover new media messages, then claim the due rows and try each once; returns
        rows tried. One attempt failing in an unforeseen way (its outcome not written, say)
        is logged and leaves the others be; its row is tried again once the lease is over."""
        await asyncio.to_thread(self.discover)
        jobs = await asyncio.to_thread(self._claim)
        limit = asyncio.Semaphore(self._concurrency)

        async def one(job: _Job) -> None:
            async with limit:
                try:
                    await self._attempt(job)
                except Exception:
                    logger.exception("media of message %s: attempt failed", job.provider_message_id)

        await asyncio.gather(*(one(job) for job in jobs))
        return len(jobs)

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
                    messages.c.provider.in_(("meta", "twilio")),
                    messages.c.type.in_(_MEDIA_TYPE_NAMES),
                    messages.c.provider_message_id.is_not(None),
                    media.c.id.is_(None),
                )
                .order_by(messages.c.id)
                .limit(500)
            ).all()
            rows = [self._new_row(c, now) for c in candidates]
            if rows:
                insert = dialect_insert(conn.dialect.name, media)
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
        raw = raw if isinstance(raw, dict) else {}
        if candidate.provider == "twilio":  # the stored form parameters; no hash announced
            fields = media_fields(raw)
        else:
            body = raw.get(candidate.type)
            body = body if isinstance(body, dict) else {}
            media_id, mime = body.get("id"), body.get("mime_type")
            fields = {
                "media_id": str(media_id) if media_id else None,
                "mime_type": mime if isinstance(mime, str) else None,
                "sha256": body.get("sha256") if isinstance(body.get("sha256"), str) else None,
                "error": None if media_id else "the message names no media id",
            }
        row: dict[str, Any] = {
            "account_id": candidate.account_id,
            "message_id": candidate.id,
            "provider": candidate.provider,
            "provider_message_id": candidate.provider_message_id,
            "sha256": None,
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
            **fields,  # every row has every key: an executemany takes the first's keys
        }
        if row["error"]:  # kept, so that it is visible and not rediscovered on every pass
            row["state"] = "failed"
        return row

    # -- attempts ----------------------------------------------------------------------------

    def _claim(self) -> list[_Job]:
        """Lease up to ``batch_size`` due rows: ``next_attempt_at`` moves to the lease's end in
        the claiming transaction, so no other worker takes them meanwhile."""
        now = self._clock()
        until = now + self._lease
        query = (
            select(media)
            .where(media.c.state == "pending", media.c.next_attempt_at <= now)
            .order_by(media.c.next_attempt_at, media.c.id)
            .limit(self._batch)
        )
        with self._engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = conn.execute(query).all()
            if rows:
                conn.execute(
                    media.update()
                    .where(media.c.id.in_([r.id for r in rows]), media.c.state == "pending")
                    .values(next_attempt_at=until)
                )
        return [
            _Job(
                id=int(r.id),
                account_id=int(r.account_id),
                provider=str(r.provider),
                provider_message_id=str(r.provider_message_id),
                media_id=r.media_id,
                mime_type=r.mime_type,
                sha256=r.sha256,
                attempts=int(r.attempts),
                created_at=r.created_at,
                updated_at=r.updated_at,
                leased_until=until,
            )
            for r in rows
        ]

    async def _attempt(self, job: _Job) -> None:
        try:
            if job.provider == "twilio":
                fetched = await self.fetch_twilio(job.account_id, job.media_id, job.mime_type)
            else:
                fetched = await self.fetch(job.account_id, job.media_id, job.sha256)
        except _Waiting as exc:
            self._warn_waiting(job.provider, exc)
            await asyncio.to_thread(self._retry_or_give_up, job, str(exc), counted=False)
            return
        except _Transient as exc:
            await asyncio.to_thread(self._retry_or_give_up, job, str(exc))
            return
        except _Permanent as exc:
            await asyncio.to_thread(self._finish, job, "failed", error=str(exc))
            logger.warning("media of message %s not stored: %s", job.provider_message_id, exc)
            return
        except Exception as exc:  # a bug, say: logged, and retried like a transient failure
            logger.exception("media of message %s: unexpected error", job.provider_message_id)
            reason = f"unexpected error: {type(exc).__name__}"
            await asyncio.to_thread(self._retry_or_give_up, job, reason)
            return
        if job.provider in self._waiting:
            self._waiting.discard(job.provider)
            logger.info("%s media fetches work again", job.provider)
        await asyncio.to_thread(self._finish, job, "stored", fetched=fetched)

    def _warn_waiting(self, provider: str, exc: _Waiting) -> None:
        if provider not in self._waiting:  # once, not once per attachment and pass
            self._waiting.add(provider)
            logger.error(
                "%s media fetches wait: %s. %s; attachments are retried with backoff until then",
                provider,
                exc,
                exc.advice,
            )

    def _retry_or_give_up(self, job: _Job, reason: str, *, counted: bool = True) -> None:
        """Back off and try again later, or fail for good once the row is too old (or, with
        ``max_attempts``, tried that often). An uncounted failure (a refused token) doubles
        the previous wait instead of the attempt count."""
        now = self._clock()
        attempts = job.attempts + 1 if counted else job.attempts
        deadline = job.created_at + self._give_up_after
        if counted and self._max_attempts is not None and attempts >= self._max_attempts:
            self._give_up(job, attempts, f"gave up after {attempts} attempts: {reason}")
            return
        if now >= deadline:
            tried = job.attempts + 1
            self._give_up(
                job, tried, f"gave up after {tried} attempts over {now - job.created_at}: {reason}"
            )
            return
        if counted:
            delay = self._base * 2 ** min(attempts - 1, _MAX_DOUBLINGS)
        else:
            delay = max(self._base, 2 * (now - job.updated_at))
        delay = min(self._cap, delay) * (0.5 + self._jitter() / 2)  # spread retries after an outage
        self._settle(
            job,
            {
                "attempts": attempts,
                "next_attempt_at": min(now + delay, deadline),  # one last try at the deadline
                "error": reason,
                "updated_at": now,
            },
        )

    def _give_up(self, job: _Job, attempts: int, error: str) -> None:
        if self._settle(
            job,
            {"state": "failed", "attempts": attempts, "error": error, "updated_at": self._clock()},
        ):
            logger.warning("media of message %s given up: %s", job.provider_message_id, error)

    def _finish(
        self, job: _Job, state: str, *, fetched: Fetched | None = None, error: str | None = None
    ) -> None:
        values: dict[str, Any] = {
            "state": state,
            "attempts": job.attempts + 1,
            "error": error,
            "updated_at": self._clock(),
        }
        if fetched is not None:
            values.update(
                path=fetched.path,
                mime_type=fetched.mime_type,
                sha256=fetched.sha256,
                file_size=fetched.size,
            )
        self._settle(job, values)

    def _settle(self, job: _Job, values: dict[str, Any]) -> bool:
        """Write an outcome if the row is still as claimed; False if another worker has
        claimed or settled it since (this worker's lease ran out): its outcome stands."""
        with self._engine.begin() as conn:
            result = conn.execute(
                media.update()
                .where(
                    media.c.id == job.id,
                    media.c.state == "pending",
                    media.c.attempts == job.attempts,
                    media.c.next_attempt_at == job.leased_until,
                )
                .values(**values)
            )
        if result.rowcount == 1:
            return True
        logger.warning(
            "media of message %s: outcome dropped, the row was claimed again meanwhile",
            job.provider_message_id,
        )
        return False

    # -- fetching ----------------------------------------------------------------------------

    async def fetch(
        self, account_id: int, media_id: str | None, announced_sha256: str | None
    ) -> Fetched:
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
        return await self._download(
            lambda: self._open_meta(url), "media download", account_id, mime, expected
        )

    async def fetch_twilio(
        self, account_id: int, media_url: str | None, mime_type: str | None
    ) -> Fetched:
        """Download a Twilio ``MediaUrl`` and store it under its computed sha256 (Twilio
        announces none); raises _Waiting while Twilio is not configured."""
        missing = self._twilio.missing_settings()
        if missing:
            names = " and ".join(missing)
            raise _Waiting(f"Twilio is not configured ({names} not set)", f"Set {names}")
        return await self._download(
            lambda: self._open_twilio(media_url),
            "Twilio media download",
            account_id,
            mime_type,
            [],
            mime_from_answer=True,
        )

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token.reveal()}"}

    async def _look_up(self, media_id: str | None) -> dict[str, Any]:
        path = _checked_media_id(media_id)  # before any request: the token goes with it
        try:
            response = await self._client.get(f"{self._graph_url}/{path}", headers=self._headers())
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

    @contextlib.asynccontextmanager
    async def _open_meta(self, url: str) -> AsyncIterator[httpx.Response]:
        async with self._client.stream("GET", url, headers=self._headers()) as response:
            if response.status_code == 404:  # the URL expired: look it up anew
                raise _Transient("the media URL expired (404); a new one is needed")
            _raise_for(response, "media download")
            yield response

    @contextlib.asynccontextmanager
    async def _open_twilio(self, media_url: str | None) -> AsyncIterator[httpx.Response]:
        try:
            async with self._twilio.open(self._client, media_url) as response:
                yield response
        except TwilioMediaError as exc:
            if exc.kind == "refused":
                raise _Waiting(str(exc), f"Set {TWILIO_TOKEN} to a valid auth token") from None
            raise (_Transient if exc.kind == "retry" else _Permanent)(str(exc)) from None

    async def _download(
        self,
        opener: _Opener,
        what: str,
        account_id: int,
        mime: str | None,
        expected: list[str],
        *,
        mime_from_answer: bool = False,  # no type announced: the answer's Content-Type
    ) -> Fetched:
        folder = self._dir / str(account_id)
        try:
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".part-")
        except OSError as exc:
            raise _storage_failed(exc, folder) from None
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                digest, size, served = await self._stream_to(opener, what, out)
            for value in expected:
                if not sha256_matches(value, digest):
                    raise _Permanent("the downloaded bytes do not match the announced sha256")
            if mime is None and mime_from_answer:
                mime = served
            name = digest.hex() + extension_for(mime)
            await asyncio.to_thread(_publish, tmp, folder / name)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):  # network errors arrive as httpx's, not OSError
                raise _storage_failed(exc, folder) from None
            raise
        return Fetched(f"{account_id}/{name}", mime, digest.hex(), size)

    async def _stream_to(
        self, opener: _Opener, what: str, out: BinaryIO
    ) -> tuple[bytes, int, str | None]:
        """Copy the answer's body to ``out``: its sha256, size and Content-Type."""
        hasher = hashlib.sha256()
        size = 0
        try:
            async with opener() as response:
                served = response.headers.get("content-type")
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_BYTES:
                        raise _Permanent(f"the file is larger than {MAX_BYTES} bytes")
                    hasher.update(chunk)
                    out.write(chunk)
        except httpx.TimeoutException:
            raise _Transient(f"{what} timed out") from None
        except httpx.TransportError as exc:
            raise _Transient(f"{what} failed: {type(exc).__name__}") from None
        out.flush()
        await asyncio.to_thread(os.fsync, out.fileno())
        served = served if served and len(served) <= 255 else None  # media.mime_type's size
        return hasher.digest(), size, served


def _storage_failed(exc: OSError, folder: Path) -> _Transient:
    """A full disk or a failing mount: worth trying again once an operator has seen to it."""
    logger.warning("media storage in %s failed: %s", folder, exc)
    return _Transient(f"storage: {exc.strerror or type(exc).__name__}")


def _raise_for(response: httpx.Response, what: str) -> None:
    status = response.status_code
    if status == 200:
        return
    if status in (401, 403):
        # An expired or revoked token is fixed by replacing it: wait for that.
        raise _Waiting(
            f"{what} answered HTTP {status}: the access token was refused ({_TOKEN_SETTING})",
            f"Set {_TOKEN_SETTING} to a valid access token",
        )
    if status == 429 or status >= 500 or status == 408:
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
    webhook media ids for 7 days: older ones fail again, with the Graph error as reason.
    Twilio rows (``media_id`` is the ``MediaUrl``) are fetched again alike."""
    with engine.begin() as conn:
        result = conn.execute(
            media.update()
            .where(media.c.state == "failed", media.c.media_id.is_not(None))
            .values(state="pending", attempts=0, next_attempt_at=now, updated_at=now)
        )
    return int(result.rowcount or 0)
