"""Running the server: open the store, make sure the default account exists, build the app
with its background workers, and hand it to uvicorn.

``build_workers`` below is the one composition point for background work (inbox processor,
outbox senders, rule timer) and for the rules they share: every server process runs what it
returns.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from wacrm.config import ConfigError, Settings, load_settings
from wacrm.heap import settle_heap
from wacrm.hooks.worker import HookDeliveryWorker
from wacrm.rules.language import LanguageDetector
from wacrm.rules.loader import load_ruleset
from wacrm.rules.options import install_all_local_options
from wacrm.rules.runtime import RuleRuntime
from wacrm.rules.schema import RuleFileError, RuleSet
from wacrm.server.app import WacrmApp, create_app, require_webhook_secrets
from wacrm.store import create_store_engine, migrate
from wacrm.store.accounts import ensure_account, register_number, register_waba, set_crm_tenant
from wacrm.sync.commands import build_sync_worker
from wacrm.workers.base import Worker
from wacrm.workers.inbox import InboxProcessor
from wacrm.workers.media import MediaWorker
from wacrm.workers.process import WorkerProcess, run_workers
from wacrm.workers.rule_timer import RuleTimer
from wacrm.workers.threaded import Downstream
from wacrm.workers.wake import WAKE_PORT_ENV, WakeSender, bind_wake_socket
from wacrm.workers.whatsapp_outbox import WhatsAppOutboxWorker

BuildWorkers = Callable[[Settings, Engine], Sequence[Worker]]
# How often the processor may wake the CRM outbox: each wake is a flush (reads, a write
# through the connector, the outcome) competing with the replies for the store and the GIL;
# at tens of messages a second, one flush per quarter second batches them.
CRM_WAKE_EVERY = 0.25


def load_rules(settings: Settings) -> RuleSet:
    """The shipped rules overlaid by ``settings.rules_dir``; a bad rule file is a
    :class:`ConfigError` naming the file, the rule and the problem (``serve`` exits 2)."""
    try:
        return load_ruleset(settings.rules_dir or None)
    except RuleFileError as exc:
        raise ConfigError(f"rules: {exc}") from None


def build_rules(settings: Settings) -> RuleRuntime:
    """The rules runtime every worker of this process shares: the rule files loaded and
    checked once, and the language detector with its models loaded now, not on the first
    customer's message."""
    ruleset = load_rules(settings)
    detector = LanguageDetector()
    detector.warm_up()
    return RuleRuntime(ruleset, values={"price_list": settings.price_list_text}, detector=detector)


def install_rule_options(engine: Engine, ruleset: RuleSet) -> None:
    """Make the rules' tags and priorities picklist options of the embedded CRM, so a rule
    never writes a value the CRM does not offer. Idempotent; safe when several processes
    start at once (the loser of an insert race finds the row on its second try)."""
    for attempt in (1, 2):
        try:
            with engine.begin() as conn:
                install_all_local_options(conn, ruleset)
            return
        except IntegrityError:
            if attempt == 2:
                raise


class DownstreamOnly:
    """A worker woken only by whoever feeds it, not by every webhook.

    The app wakes each worker it runs when a webhook is stored; only the inbox processor has
    new work then. An outbox woken by a webhook finds nothing (its work comes from the
    processor, which wakes it itself), and the rule timer's is hours away; yet each such
    pass takes the store's write lock on SQLite, in front of the processor.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.name = worker.name

    async def run(self, stop: asyncio.Event) -> None:
        await self.worker.run(stop)

    def wake(self) -> None:
        """Ignored: see the class docstring; the processor calls ``worker.wake``."""


def build_workers(settings: Settings, engine: Engine) -> Sequence[Worker]:
    """The background workers each server process runs: the inbox processor runs the rules
    and feeds the WhatsApp and CRM outboxes, waking them when it has committed work for them;
    the rule timer fires time-based rules; the hook worker sends rule events to REST hooks."""
    rules = build_rules(settings)
    install_rule_options(engine, rules.ruleset)
    whatsapp = WhatsAppOutboxWorker.from_settings(engine, settings, rules=rules)
    # Both sync directions: the CRM outbox (batched, rate-budgeted) and CRM changes read back.
    crm = build_sync_worker(engine)
    # The CRM gets its changes within a quarter second, in batches; the reply goes at once.
    crm_feed = Downstream(crm.wake, every=CRM_WAKE_EVERY)
    # REST hooks: rule events go out to subscribers. The processor wakes the worker after a
    # pass that ran rules (at most twice a second: each wake is a fan-out pass); it also
    # polls every 2 s, for the events the rule timer emits.
    hooks = HookDeliveryWorker.from_settings(engine, settings)
    hooks_feed = Downstream(hooks.wake, every=0.5)
    inbox = InboxProcessor(
        engine,
        settings,
        rules=rules,
        downstream=(whatsapp.wake, crm_feed, hooks_feed),
        handover=whatsapp,
    )
    return (
        inbox,
        DownstreamOnly(whatsapp),
        DownstreamOnly(crm),
        DownstreamOnly(RuleTimer(engine, rules)),
        # Attachments are fetched while Meta's URL is fresh; it finds its work on its own.
        DownstreamOnly(MediaWorker.from_settings(engine, settings)),
        DownstreamOnly(hooks),
    )


def open_store(settings: Settings) -> Engine:
    """An engine on ``settings.database_url`` with the schema at the newest revision."""
    engine = create_store_engine(settings.database_url)
    migrate(engine)
    return engine


def ensure_default_account(engine: Engine, settings: Settings) -> int:
    """The account named ``settings.account_name``, with the configured number routed to it
    and the configured CRM portal/org id (``crm_tenant``) recorded on it."""
    account_id = ensure_account(engine, settings.account_name)
    if settings.whatsapp_phone_number_id:
        try:
            register_number(
                engine,
                account_id,
                settings.whatsapp_phone_number_id,
                display_phone_number=settings.whatsapp_display_phone_number or None,
            )
        except ValueError as exc:
            raise ConfigError(f"WACRM_WHATSAPP_PHONE_NUMBER_ID: {exc}") from None
    if settings.whatsapp_business_account_id:  # template, quality and account updates
        try:
            register_waba(engine, account_id, settings.whatsapp_business_account_id)
        except ValueError as exc:
            raise ConfigError(f"WACRM_WHATSAPP_BUSINESS_ACCOUNT_ID: {exc}") from None
    if settings.crm_tenant:  # how CRM change webhooks (by portal/org id) find this account
        try:
            set_crm_tenant(engine, account_id, settings.crm_tenant)
        except ValueError as exc:
            raise ConfigError(f"WACRM_CRM_TENANT: {exc}") from None
    return account_id


def build_app(settings: Settings, make_workers: BuildWorkers = build_workers) -> WacrmApp:
    """Everything ``serve`` does before listening, for one process."""
    require_webhook_secrets(settings)  # before touching the store: fail fast, create nothing
    engine = open_store(settings)
    ensure_default_account(engine, settings)
    workers = make_workers(settings, engine)
    # Start-up is over once the lifespan has run: keep its objects out of GC pauses.
    return create_app(settings, engine, workers=workers, on_started=settle_heap)


def wake_only(port: int) -> BuildWorkers:
    """Workers for a server process whose background work runs in the worker process:
    only the sender that wakes it after each commit."""

    def make(_settings: Settings, _engine: Engine) -> Sequence[Worker]:
        return (WakeSender(port),)

    return make


def app_factory() -> WacrmApp:
    """For ``uvicorn --factory wacrm.server.runtime:app_factory`` and ``--workers N``:
    each process reads its settings from the environment (and ``wacrm.toml``)."""
    port = os.environ.get(WAKE_PORT_ENV)
    return build_app(load_settings(), wake_only(int(port)) if port else build_workers)


def run_worker_process(settings: Settings, wake_fd: int | None) -> None:
    """``wacrm worker``: every background worker, woken through ``wake_fd`` if given."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    engine = open_store(settings)
    ensure_default_account(engine, settings)
    workers = build_workers(settings, engine)
    sock = socket.socket(fileno=wake_fd) if wake_fd is not None else None
    try:
        settle_heap()  # built: keep start-up's objects out of GC pauses
        # Started by `wacrm serve` (it passes the wake socket): end with it.
        asyncio.run(run_workers(workers, sock, watch_parent=sock is not None))
    finally:
        engine.dispose()


def serve(
    settings: Settings,
    *,
    processes: int = 1,
    make_workers: BuildWorkers = build_workers,
    inline_workers: bool = False,
) -> None:
    """Listen on ``settings.host:settings.port`` until interrupted.

    On PostgreSQL the background workers run in a supervised worker process of their own, so
    processing never competes with ingest for the GIL (see :mod:`wacrm.workers.process`);
    on SQLite, or with ``inline_workers``, they run inside the server process.
    With ``processes > 1`` uvicorn starts each process from :func:`app_factory`, which reads
    the settings from the environment again; so settings given only in code, or custom
    ``make_workers``, need a single process.
    """
    if processes < 1:
        raise ConfigError(f"--workers must be at least 1, got {processes}")
    # On SQLite the workers stay in the server process: there one FIFO queue hands SQLite's
    # write lock from thread to thread, while across processes only SQLite's sleeping busy
    # handler arbitrates, and a worker process committing back to back starved ingest
    # (measured: inbox commits waiting > 10 s). PostgreSQL locks rows, not the file.
    on_sqlite = settings.database_url.startswith("sqlite")
    if not inline_workers and not on_sqlite and make_workers is build_workers:
        _serve_with_worker_process(settings, processes)
        return
    if processes > 1 and make_workers is not build_workers:
        raise ConfigError("custom background workers need a single server process")
    # Before anything is created: bad secrets or rule files end here, as one error line.
    require_webhook_secrets(settings)
    if make_workers is build_workers:
        load_rules(settings)
    _listen(settings, processes, make_workers)


def _listen(settings: Settings, processes: int, make_workers: BuildWorkers) -> None:
    """Run uvicorn: one process with ``make_workers``, or ``processes`` from app_factory."""
    import uvicorn

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "auto",
        "http": "auto",
        "log_level": "warning",
        "access_log": False,  # a log line per webhook would cost more than storing it
        "lifespan": "on",
    }
    if processes == 1:
        app = build_app(settings, make_workers)
        uvicorn.run(app, **common)
        return
    if settings.database_url.startswith("sqlite"):
        # Measured: processes queue on SQLite's single write lock, and its busy handler sleeps,
        # so p99 latency grows to ~0.7 s with no gain in throughput. PostgreSQL scales.
        logging.getLogger(__name__).warning(
            "%d server processes on SQLite contend for its one write lock; "
            "use PostgreSQL (or one process) for throughput",
            processes,
        )
    # Migrate and seed once here, so the processes do not race to do it.
    engine = open_store(settings)
    try:
        ensure_default_account(engine, settings)
    finally:
        engine.dispose()
    uvicorn.run("wacrm.server.runtime:app_factory", factory=True, workers=processes, **common)


def _serve_with_worker_process(settings: Settings, processes: int) -> None:
    require_webhook_secrets(settings)
    load_rules(settings)  # a bad rule file is one error line here, not a crashing child
    engine = open_store(settings)  # migrate and seed once, before any process starts
    try:
        ensure_default_account(engine, settings)
    finally:
        engine.dispose()
    wake_sock = bind_wake_socket()
    port = wake_sock.getsockname()[1]
    worker = WorkerProcess(wake_sock)
    worker.start()
    os.environ[WAKE_PORT_ENV] = str(port)  # read by app_factory in each server process
    try:
        _listen(settings, processes, wake_only(port))
    finally:
        worker.stop()
