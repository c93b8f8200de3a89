"""One sync run, both directions: flush the CRM outbox, then read CRM changes into the mirror.

Reading follows the Singer SDK's bookmark discipline: a signpost (the time the run started)
caps the read, so records changed during the run wait for the next run instead of being
skipped; each page is applied and its bookmark advanced in one transaction, so the bookmark
never runs ahead of what is stored; reads are inclusive and the boundary is de-duplicated
(:mod:`wacrm.sync.cursors`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from sqlalchemy import Connection, Engine, select

from wacrm.connectors.base import CrmConnector, IncomingRecord
from wacrm.mappings import Mapping, load_mapping, mapping_path
from wacrm.store.schema import accounts
from wacrm.sync.cursors import Bookmark, fingerprint, load_bookmark, save_bookmark
from wacrm.sync.mirror import MirrorStats, apply_contacts
from wacrm.sync.outcomes import FlushStats
from wacrm.sync.transactions import run_transaction
from wacrm.workers.crm_outbox import Clock, CrmOutboxWorker, utcnow

logger = logging.getLogger(__name__)

# Objects read back from the CRM. Tickets and tasks are ours: the CRM's copy is not mirrored.
INBOUND_OBJECTS = ("contacts",)
MAX_PAGES_PER_RUN = 10_000  # a connector that never says "caught up" must not loop forever
PAGE_ATTEMPTS = 5  # then the pull fails, and the sync loop tries the account again later


@dataclass(slots=True)
class PullStats:
    pages: int = 0
    records: int = 0
    duplicates: int = 0
    mirror: MirrorStats = field(default_factory=MirrorStats)


@dataclass(slots=True)
class SyncReport:
    outbound: FlushStats
    inbound: dict[int, PullStats]
    errors: list[str]


def mapping_for(connector: CrmConnector, object: str) -> Mapping | None:
    """The connector's mapping file for ``object`` (``mapping_name`` may point to another)."""
    name = str(getattr(connector, "mapping_name", connector.name))
    return load_mapping(name, object) if mapping_path(name, object).is_file() else None


def all_accounts(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return [
            int(i) for i in conn.execute(select(accounts.c.id).order_by(accounts.c.id)).scalars()
        ]


class SyncEngine:
    def __init__(
        self,
        engine: Engine,
        connector_for: Callable[[int], CrmConnector],
        outbox: CrmOutboxWorker,
        *,
        clock: Clock = utcnow,
        page_size: int = 200,  # HubSpot search maximum: echoes of our writes cost reads
    ) -> None:
        self._engine = engine
        self._connector_for = connector_for
        self.outbox = outbox
        self._clock = clock
        self._page_size = page_size

    def run_once(self, *, force: bool = True, accounts: list[int] | None = None) -> SyncReport:
        """Outbound first (so what we read back includes our writes), then inbound."""
        errors: list[str] = []
        self.outbox.flush(force=force)
        outbound = self.outbox.last_stats
        inbound: dict[int, PullStats] = {}
        for account_id in accounts if accounts is not None else all_accounts(self._engine):
            for obj in INBOUND_OBJECTS:
                try:
                    inbound[account_id] = self.pull(account_id, obj)
                except Exception as exc:  # one account's failure must not stop the others
                    logger.warning("account %s: reading %s failed: %s", account_id, obj, exc)
                    errors.append(f"account {account_id} {obj}: {str(exc)[:200]}")
        return SyncReport(outbound, inbound, outbound.call_errors + errors)

    def pull(self, account_id: int, object: str = "contacts") -> PullStats:
        """Read everything the CRM changed up to now into the mirror."""
        connector = self._connector_for(account_id)
        mapping = mapping_for(connector, object)
        stats = PullStats()
        if mapping is None:
            return stats  # no ownership declared: nothing may be read back
        signpost = self._clock()
        with self._engine.connect() as conn:
            bookmark = load_bookmark(conn, account_id, connector.name, object)
        cursor = bookmark.cursor
        if cursor is None and bookmark.at is not None:
            cursor = bookmark.at.isoformat()
        for _ in range(MAX_PAGES_PER_RUN):
            page = connector.read_changes(object, cursor, signpost, self._page_size)
            stats.pages += 1
            stats.records += len(page.records)
            fresh, stored = [], []
            for record in page.records:
                fp = fingerprint(record.properties)
                if bookmark.already_stored(record.key, record.modified_at, fp):
                    stats.duplicates += 1
                    continue
                fresh.append(record)
                stored.append((record.key, record.modified_at, fp))
            advanced = bookmark.advanced(page.next_cursor, stored)
            if fresh or advanced != bookmark:
                self._store_page(
                    account_id, connector.name, object, mapping, fresh, advanced, stats
                )
                bookmark = advanced
            if not page.more or page.next_cursor is None or page.next_cursor == cursor:
                break
            cursor = page.next_cursor
        if stats.records:
            m = stats.mirror
            logger.info(
                "account %s: read %d %s (%d applied, %d unchanged, %d duplicates)",
                account_id,
                stats.records,
                object,
                m.applied,
                m.unchanged,
                stats.duplicates,
            )
        return stats

    def _store_page(
        self,
        account_id: int,
        connector: str,
        object: str,
        mapping: Mapping,
        records: list[IncomingRecord],
        bookmark: Bookmark,
        stats: PullStats,
    ) -> None:
        """Apply a page and advance the bookmark in one transaction. It gives way to the
        inbox processor (which locks the same contacts, in its own order) rather than
        deadlocking with it, and runs again from the start if it had to."""

        def store(conn: Connection) -> MirrorStats:
            page = MirrorStats()  # counted afresh: a retried attempt must not count twice
            apply_contacts(conn, account_id, mapping, records, self._clock(), page)
            save_bookmark(conn, account_id, connector, object, bookmark, self._clock())
            return page

        page = run_transaction(self._engine, store, give_way=True, attempts=PAGE_ATTEMPTS)
        for counter in fields(page):
            name = counter.name
            setattr(stats.mirror, name, getattr(stats.mirror, name) + getattr(page, name))
