"""The WhatsApp outbox worker: claims due ``wa_outbox`` rows, sends them, acts on errors.

A row is claimed in a short transaction (PostgreSQL: ``FOR UPDATE SKIP LOCKED`` under an
advisory lock, SQLite: ``BEGIN IMMEDIATE``) and leased by moving it to ``sending`` with
``next_attempt_at`` = lease expiry; the HTTP call happens outside any transaction, so a slow
Cloud API never holds a database lock (on SQLite that lock would stall the webhook inbox).
A worker that dies mid-send leaves a lease that expires and the row is sent again: the Cloud
API has no idempotency key, so that rare crash can duplicate one message, and nothing is lost.

Each row goes out through its number's provider (:mod:`wacrm.workers.whatsapp_dispatch`):
the Meta Cloud API, or Twilio's ``Messages.json`` for numbers registered as ``twilio``. Both
are paced alike (the number's mps, WhatsApp's per-recipient pair rate), checked against the
24 h window and the content policy, and their errors drive the same reactions (tables:
:mod:`wacrm.whatsapp.errors`, :mod:`wacrm.whatsapp.twilio_errors`).

A 200/201 means *accepted*: the message keeps status ``queued`` and gets its provider id
(wamid or Twilio SID) and ``sent_at``; status webhooks move it on. For Meta,
``biz_opaque_callback_data`` carries the outbox id so a status can be correlated even if it
races this commit.

Order per recipient is kept: a row is not claimed while an earlier row to the same recipient
waits, and a recipient held back in a batch holds its later rows too. Failures are handled by
the table in :mod:`wacrm.whatsapp.errors`; see :meth:`WhatsAppOutboxWorker._on_error`.
A message that fails for good is handed to the rules (``message_failed`` triggers) in the
transaction that records the failure.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from wacrm.config import Settings
from wacrm.store.sending_numbers import halt_in, halted_numbers, release_leases, sender_name
from wacrm.store.sending_numbers import resume as resume_numbers
from wacrm.whatsapp.content_policy import ContentPolicy, blocking, lint_send_body
from wacrm.whatsapp.errors import SendAction
from wacrm.whatsapp.meta_send import CloudApiClient, SendError
from wacrm.whatsapp.pacing import PairLimiter, TokenBucket
from wacrm.whatsapp.twilio_bodies import NotSendable
from wacrm.whatsapp.twilio_send import TwilioSender
from wacrm.workers import whatsapp_queue as queue
from wacrm.workers.threaded import WorkerThread
from wacrm.workers.whatsapp_dispatch import (
    CREDENTIALS_HINTS,
    PROVIDERS,
    THROTTLE_SCOPES,
    WINDOW_CLOSED,
    NoSender,
    SendCall,
    Senders,
)
from wacrm.workers.whatsapp_policy import (
    WINDOW,
    OutboxPolicy,
    StoppedTemplates,
    backoff_seconds,
    template_key,
)
from wacrm.workers.whatsapp_queue import Job

if TYPE_CHECKING:  # the rules (and lingua behind them) load only where rules run
    from wacrm.rules.runtime import RuleRuntime

log = logging.getLogger(__name__)

CONTENT_POLICY_CODE = "content_policy"  # error_code of a send the content policy blocked

__all__ = ["OutboxPolicy", "WhatsAppOutboxWorker"]


class WhatsAppOutboxWorker:
    """Implements :class:`wacrm.workers.base.Worker` for ``wa_outbox``."""

    name = "whatsapp-outbox"

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        client: CloudApiClient | None,
        *,
        twilio: TwilioSender | None = None,
        providers: Collection[str] | None = None,
        policy: OutboxPolicy | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        rules: RuleRuntime | None = None,
        content_policy: ContentPolicy | None = None,
    ) -> None:
        """``client`` sends Cloud API numbers' rows, ``twilio`` Twilio numbers' rows (a row
        whose provider has no sender halts its number, an ops alert); ``providers``: claim
        only rows of these providers (default: all). ``rules``: told of every message that
        fails for good (``message_failed``). ``content_policy``: default from ``settings``.
        """
        self._engine = engine
        self.rules = rules
        self._settings = settings
        self._senders = Senders.from_settings(settings, client, twilio)
        self._content_policy = content_policy or ContentPolicy.from_settings(settings)
        self._skip_always = sorted(PROVIDERS - set(providers)) if providers is not None else []
        self.policy = policy or OutboxPolicy(mps=float(settings.whatsapp_mps))
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self.halted: dict[str, str] = {}  # phone_number_id → why sending stopped (ops alert)
        # Halts also written to sending_numbers (the claim skips them, in every process,
        # until `wacrm numbers resume`); each pass checks whether they still hold.
        self._halts_stored: set[str] = set()
        # This worker's hold on the numbers it sends from (one sender per number).
        self._leases = queue.NumberLeases(sender_name(), self.policy.number_lease)
        self._paused_until: dict[str, datetime] = {}  # phone_number_id → throttled until
        self._creds_paused_until: dict[str, datetime] = {}  # provider → credentials invalid
        # Limits wider than a number: Meta's app-level (4) per provider, WABA-level (80007)
        # per account (the account's numbers are its WABA's, as far as wacrm knows them).
        self._app_paused_until: dict[str, datetime] = {}  # provider → throttled until
        self._account_paused_until: dict[int, datetime] = {}  # account → throttled until
        self._pair_hits: dict[tuple[str, str], int] = {}  # consecutive 131056 per recipient
        self._buckets: dict[str, TokenBucket] = {}
        self._pairs: dict[str, PairLimiter] = {}
        self._stopped = StoppedTemplates()
        self._thread = WorkerThread("whatsapp-outbox", self._step)
        # Jobs the inbox processor claimed in its own transaction and handed over.
        self._handed: collections.deque[Job] = collections.deque()
        # What each row came to, committed a few rows at a time (see queue.Outcomes).
        self._outcomes = queue.Outcomes(engine)
        self._owned_http: httpx.Client | None = None

    @classmethod
    def from_settings(
        cls,
        engine: Engine,
        settings: Settings,
        *,
        policy: OutboxPolicy | None = None,
        rules: RuleRuntime | None = None,
    ) -> WhatsAppOutboxWorker:
        """The worker the server runs: a Cloud API client sending to ``settings.graph_url``
        and, when Twilio is configured, a Twilio sender, on one ``httpx.Client`` of its own
        (closed by :meth:`close`)."""
        http = httpx.Client(timeout=30.0)
        client = CloudApiClient(settings, http=http)
        twilio = (
            TwilioSender.from_settings(http, settings)
            if settings.twilio_account_sid and settings.twilio_auth_token
            else None
        )
        worker = cls(engine, settings, client, twilio=twilio, policy=policy, rules=rules)
        worker._owned_http = http
        return worker

    def close(self) -> None:
        """Free this worker's numbers and close the HTTP client it made."""
        self.release_numbers()
        if self._owned_http is not None:
            self._owned_http.close()
            self._owned_http = None

    # -- the Worker protocol ----------------------------------------------------------------

    def wake(self) -> None:
        """New rows are committed: look now. Safe from any thread."""
        self._thread.wake()

    async def run(self, stop: asyncio.Event) -> None:
        """Send whatever is due, then wait for :meth:`wake` or the poll interval."""
        try:
            await self._thread.run(stop)
        finally:
            self.release_numbers()

    def release_numbers(self) -> None:
        """Free the numbers this worker holds at once: another sender (a restarted server,
        another machine) need not wait for the leases to run out."""
        try:
            release_leases(self._engine, self._leases.name)
        except Exception as exc:  # the store may be gone; the leases then simply run out
            log.warning("number leases not released: %s", type(exc).__name__)
        self._leases.forget()

    def _step(self) -> float:
        try:
            done = self.process_due()
        except Exception:  # the database may be briefly away; never end the loop
            log.exception("whatsapp outbox pass failed")
            done = 0
        return 0.0 if done else self.policy.poll_interval

    # -- hand-over from the inbox processor ---------------------------------------------------

    def claim_in(self, conn: Connection, now: datetime) -> list[Job]:
        """Claim due rows in the inbox processor's transaction, just before it commits.

        A reply the processor has just queued then needs no transaction of its own (a wait
        for the store's lock, a commit, a wake-up) before it leaves: :meth:`hand_over`
        passes the jobs here once that commit is done, and if it is not, the claim is rolled
        back with it. Nothing is claimed while handed-over jobs are still waiting (claims
        would age in memory), nor rows of numbers or providers whose sending is paused.
        """
        if self._handed:
            return []
        return queue.claim_in(
            conn,
            now,
            limit=self.policy.batch_size,
            lease=self.policy.lease,
            skip_numbers=self._blocked_numbers(now),
            skip_providers=self._blocked_providers(now),
            sender=self._leases,
        )

    def hand_over(self, jobs: Sequence[Job]) -> None:
        """Jobs from :meth:`claim_in` whose transaction has committed: send them now."""
        if jobs:
            self._handed.extend(jobs)  # deque.extend/popleft are thread-safe
            self.wake()

    def _take_handed(self) -> list[Job]:
        jobs = []
        while True:
            try:
                jobs.append(self._handed.popleft())
            except IndexError:
                return jobs

    def resume(self, phone_number_id: str | None = None) -> None:
        """Ops fixed the account: send again from ``phone_number_id`` (or every number),
        in every process (as ``wacrm numbers resume`` does)."""
        resume_numbers(self._engine, phone_number_id)
        if phone_number_id is None:
            self.halted.clear()
            self._halts_stored.clear()
            self._creds_paused_until.clear()
            self._app_paused_until.clear()
            self._account_paused_until.clear()
        else:
            self.halted.pop(phone_number_id, None)
            self._halts_stored.discard(phone_number_id)

    # -- one pass ---------------------------------------------------------------------------

    def process_due(self) -> int:
        """Claim and handle the rows due now; returns how many were handled."""
        now = self._clock()
        if self._halts_stored:  # lifted meanwhile by `wacrm numbers resume`?
            still = halted_numbers(self._engine, self._halts_stored)
            for number in self._halts_stored - still:
                self.halted.pop(number, None)
            self._halts_stored &= still
        # Jobs handed over go before anything is claimed: a customer is waiting for them,
        # and a claim first would put a transaction in front. A pass that handled something
        # is followed by another at once, which claims.
        jobs = self._take_handed()
        if not jobs:
            jobs = self._claim(now)
        held: dict[tuple[str, str], datetime] = {}  # recipients held back in this pass
        try:
            for job in jobs:
                self._outcomes.flush_due()
                try:
                    self._handle(job, held)
                except Exception as exc:  # one bad row must not stop the others
                    log.exception("whatsapp outbox row %s could not be handled", job.id)
                    self._retry(job, f"internal error: {type(exc).__name__}", held)
        finally:
            self._outcomes.flush()  # a pass ends with its outcomes committed
        return len(jobs)

    def _blocked_numbers(self, now: datetime) -> list[str]:
        # Copies first: the processor's thread asks too (claim_in) while this one changes them.
        paused = [pnid for pnid, until in dict(self._paused_until).items() if until > now]
        return sorted(set(self.halted) | set(paused))

    def _blocked_providers(self, now: datetime) -> list[str]:
        paused = [
            p
            for pauses in (self._creds_paused_until, self._app_paused_until)
            for p, until in dict(pauses).items()
            if until > now
        ]
        return sorted(set(self._skip_always) | set(paused))

    def _claim(self, now: datetime) -> list[Job]:
        skip_providers = self._blocked_providers(now)
        if set(skip_providers) >= PROVIDERS:
            return []  # every provider paused (credentials rejected): nothing to claim
        return queue.claim(
            self._engine,
            now,
            limit=self.policy.batch_size,
            lease=self.policy.lease,
            skip_numbers=self._blocked_numbers(now),
            skip_providers=skip_providers,
            sender=self._leases,
        )

    # -- one row ----------------------------------------------------------------------------

    def _handle(self, job: Job, held: dict[tuple[str, str], datetime]) -> None:
        now = self._clock()
        if job.leased_until is not None and now >= job.leased_until:
            # Its lease ran out before its turn came: another sender may have claimed it.
            log.warning("outbox %s: lease ran out before sending; left to the next claim", job.id)
            return
        if job.phone_number_id in self.halted:
            self._release(job, now)  # not claimed again until resume()
            return
        paused = max(
            self._paused_until.get(job.phone_number_id) or now,
            self._creds_paused_until.get(job.provider) or now,
            self._app_paused_until.get(job.provider) or now,
            self._account_paused_until.get(job.account_id) or now,
        )
        if paused > now:  # throttled or credentials rejected earlier in this pass
            self._release(job, paused)
            return
        if job.pair in held:  # an earlier message to this recipient is waiting: keep order
            self._release(job, held[job.pair])
            return
        try:
            body = orjson.loads(job.request)
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            self._fail(job, None, f"stored request is not usable: {exc}", "invalid request")
            return
        if body.get("type") != "template" and not self._in_window(job, now):
            self._window_closed(job, body, held)
            return
        self._attempt(job, body, held)

    def _attempt(
        self, job: Job, body: dict[str, Any], held: dict[tuple[str, str], datetime]
    ) -> None:
        stopped = self._stopped.get(template_key(body), self._clock())
        if stopped is not None:
            self._fail(job, stopped.code, stopped.reason, stopped.title)
            return
        refused = blocking(lint_send_body(body, self._content_policy), self._content_policy)
        if refused:  # never sent, never retried: the body itself is the problem
            reason = "; ".join(f"{f.code}: {f.message}" for f in refused)
            self._fail(job, CONTENT_POLICY_CODE, reason, "Blocked by the content policy")
            return
        send = self._prepare(job, body)
        if send is None or not self._pace(job, held):
            return
        try:
            provider_message_id = send()
        except SendError as exc:
            self._on_error(job, body, exc, held)
            return
        self._pair_hits.pop(job.pair, None)
        at = self._clock()
        self._outcomes.add(
            job.id, lambda conn: queue.mark_sent_in(conn, job, provider_message_id, at)
        )

    def _prepare(self, job: Job, body: dict[str, Any]) -> SendCall | None:
        """The provider's call for ``body``; ``None`` when the row was failed or halted."""
        try:
            return self._senders.prepare(job, body)
        except NotSendable as exc:
            self._fail(job, exc.code, exc.reason, exc.title)
        except NoSender as exc:
            # Not stored: the fix is configuration, and the restart it needs lifts the halt.
            self._halt(job, str(exc), "configure it, then restart", store=False)
        return None

    def _pace(self, job: Job, held: dict[tuple[str, str], datetime]) -> bool:
        """Wait for the number's mps token; hold the recipient if over the pair rate.

        The pair rate is judged and recorded at the time the request leaves (after the mps
        wait), as Meta counts it: judged before the wait, our pair clock would run up to
        1/mps s ahead of Meta's and a send woken exactly when due would draw 131056."""
        pairs = (
            self._pairs.setdefault(job.phone_number_id, PairLimiter())
            if self.policy.pair_limit
            else None
        )

        def over_pair_rate(at: datetime) -> bool:
            """If a send at ``at`` is over the pair rate, hold the row (and, via ``held``,
            every later one to the recipient, keeping their order) until it is not."""
            wait = pairs.wait(job.recipient, at.timestamp()) if pairs is not None else 0.0
            if wait <= 0:
                return False
            until = at + timedelta(seconds=wait)
            held[job.pair] = until
            self._release(job, until)
            return True

        if over_pair_rate(self._clock()):
            return False  # held before taking an mps token
        if self.policy.mps:
            # Capacity 1: sends evenly spaced, so every 1 s window holds at most the rate of
            # them, however Meta draws its windows. The rate is mps × mps_headroom: see
            # OutboxPolicy.mps_headroom for why not the mps itself.
            rate = self.policy.mps * self.policy.mps_headroom
            bucket = self._buckets.setdefault(job.phone_number_id, TokenBucket(rate, capacity=1.0))
            wait = bucket.reserve(self._clock().timestamp())
            if wait > 0:
                self._sleep(wait)  # at most a fraction of a second per message
        leaves = self._clock()  # when the request actually leaves
        if over_pair_rate(leaves):
            return False  # the mps wait ran past the burst: held (its token forgone)
        if pairs is not None:
            pairs.record(job.recipient, leaves.timestamp())
        return True

    def _in_window(self, job: Job, now: datetime) -> bool:
        if not self.policy.enforce_window:
            return True
        last = queue.last_inbound_at(self._engine, job)
        return last is not None and now - last < WINDOW

    def _window_closed(
        self, job: Job, body: dict[str, Any], held: dict[tuple[str, str], datetime]
    ) -> None:
        """Free-form outside the 24 h window: Meta would answer 131047 and Twilio 63016, so
        don't ask them; the code they would give is recorded."""
        if job.fallback is None:
            code, title = WINDOW_CLOSED.get(job.provider, WINDOW_CLOSED["meta"])
            self._fail(
                job,
                code,
                f"(#{code}) more than 24 h since the user last wrote; only a template can be "
                "sent and the rule gave none (refused locally)",
                title,
            )
            return
        self._switch_to_template(job, held)

    def _switch_to_template(self, job: Job, held: dict[tuple[str, str], datetime]) -> None:
        assert job.fallback is not None
        template = orjson.loads(job.fallback)
        self._outcomes.add(job.id, lambda conn: queue.use_fallback_in(conn, job))
        log.info("outbox %s: 24 h window closed, sending the template fallback", job.id)
        self._attempt(replace(job, request=job.fallback, fallback=None), template, held)

    # -- outcomes ---------------------------------------------------------------------------

    def _on_error(
        self,
        job: Job,
        body: dict[str, Any],
        exc: SendError,
        held: dict[tuple[str, str], datetime],
    ) -> None:
        now = self._clock()
        action = exc.action
        log.warning("outbox %s to number %s: %s", job.id, job.phone_number_id, exc.summary)
        if action is SendAction.RETRY_BACKOFF:
            delay = exc.retry_after
            if delay is None:
                delay = backoff_seconds(job.attempts + 1, self.policy, self._jitter())
            until = now + timedelta(seconds=delay)
            scopes = THROTTLE_SCOPES.get(job.provider, {})
            scope = scopes.get(exc.code) if exc.code is not None else None
            if scope == "app":  # every call of the app
                self._app_paused_until[job.provider] = until
            elif scope == "account":  # the whole WABA
                self._account_paused_until[job.account_id] = until
            elif scope == "number":  # the number is over budget
                self._paused_until[job.phone_number_id] = until
            self._retry(job, exc.summary, held, delay=delay, code=exc.code, title=exc.title)
        elif action is SendAction.DELAY_RECIPIENT:
            hits = self._pair_hits.get(job.pair, 0) + 1
            self._pair_hits[job.pair] = hits
            delay = exc.retry_after or min(self.policy.pair_delay_cap, 4.0**hits)
            self._pairs.setdefault(job.phone_number_id, PairLimiter()).hold(
                job.recipient, now.timestamp() + delay
            )
            self._retry(
                job, exc.summary, held, delay=delay, code=exc.code, title=exc.title, count=False
            )
        elif action is SendAction.SWITCH_TO_TEMPLATE and job.fallback is not None:
            self._switch_to_template(job, held)
        elif action is SendAction.WAIT_24H:
            self._retry(
                job, exc.summary, held, delay=WINDOW.total_seconds(), code=exc.code, title=exc.title
            )
        elif action is SendAction.REFRESH_CREDENTIALS:
            until = now + self.policy.credentials_pause
            self._creds_paused_until[job.provider] = until
            log.error(
                "%s credentials rejected (%s); %s sending paused for %s: %s",
                job.provider,
                exc.summary,
                job.provider,
                self.policy.credentials_pause,
                CREDENTIALS_HINTS.get(job.provider, "check the provider's credentials"),
            )
            self._release(job, until)
        elif action is SendAction.HALT_ALERT:
            self._halt(job, exc.summary, exc.rule.explanation)
        else:  # permanent: fix the request, flag the contact, stop the template, no window
            if action is SendAction.STOP_TEMPLATE:
                self._stopped.stop(template_key(body), exc, now + self.policy.template_pause)
            self._fail(
                job,
                exc.code,
                exc.summary,
                exc.title,
                flag=action is SendAction.NEVER_RETRY_FLAG_CONTACT,
            )

    def _halt(self, job: Job, why: str, explanation: str, *, store: bool = True) -> None:
        """Stop sending from the number (an ops alert); a ``store``d halt holds in every
        process and across restarts until the number is resumed."""
        number, now = job.phone_number_id, self._clock()
        self.halted[number] = why
        resume = f" Once fixed: wacrm numbers resume {number}" if store else ""
        log.critical(
            "ALERT: sending from WhatsApp number %s halted: %s. %s%s",
            number,
            why,
            explanation,
            resume,
        )
        if store:
            self._outcomes.add(job.id, lambda conn: halt_in(conn, number, why, now))
            self._halts_stored.add(number)
        self._release(job, now)

    def _release(self, job: Job, at: datetime) -> None:
        self._outcomes.add(job.id, lambda conn: queue.release_in(conn, job, at))

    def _retry(
        self,
        job: Job,
        error: str,
        held: dict[tuple[str, str], datetime],
        *,
        delay: float | None = None,
        code: int | None = None,
        title: str | None = None,
        count: bool = True,
    ) -> None:
        """Try again after ``delay`` (backoff by default), within the attempt and age bounds;
        the recipient's later messages wait behind it."""
        now = self._clock()
        # A delay that is not the message's fault (the recipient's pair rate) is no attempt:
        # counted, it would leave a later real failure fewer tries.
        attempts = job.attempts + 1 if count else job.attempts
        if delay is None:
            delay = backoff_seconds(attempts, self.policy, self._jitter())
        too_many = count and attempts >= self.policy.max_attempts
        if too_many or now - job.created_at > self.policy.max_age:
            why = f"{attempts} attempts" if too_many else f"older than {self.policy.max_age}"
            self._fail(job, code, f"gave up after {why}: {error}", title or "Send failed")
            return
        until = now + timedelta(seconds=delay)
        held[job.pair] = until
        self._outcomes.add(
            job.id,
            lambda conn: queue.reschedule_in(conn, job, attempts=attempts, at=until, error=error),
        )

    def _fail(
        self, job: Job, code: int | str | None, error: str, title: str, *, flag: bool = False
    ) -> None:
        now = self._clock()
        hook = self._tell_rules if self.rules is not None else None
        self._outcomes.add(
            job.id,
            lambda conn: queue.mark_failed_in(
                conn, job, code=code, error=error, title=title, now=now, flag=flag, on_failed=hook
            ),
        )
        log.warning("outbox %s failed for good: %s", job.id, error)

    def _tell_rules(
        self, conn: Connection, job: Job, code: str | None, title: str, now: datetime
    ) -> None:
        """``message_failed`` rules for a send that failed here (no status webhook will
        come). Keyed by the message row, so a failed status for it later fires nothing."""
        assert self.rules is not None
        try:
            with conn.begin_nested():
                self.rules.on_send_failed(
                    conn,
                    account_id=job.account_id,
                    message_row_id=job.message_id,
                    error_code=code,
                    error_title=title,
                    now=now,
                )
        except DBAPIError:
            raise  # the store, not the rule: the whole failure is recorded again later
        except Exception:
            # A broken rule must not keep the failure from being recorded (the row would be
            # leased again and resent); its effects are rolled back with the savepoint.
            log.exception("rules for failed outbox %s could not run", job.id)
