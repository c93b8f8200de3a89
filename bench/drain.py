"""Processing throughput: a backlog of inbound messages drained by ``wacrm serve``'s workers.

    python bench/drain.py                     # 5,000 messages, SQLite file; writes BENCHMARKS.md
    python bench/drain.py --database-url sqlite \\
        --database-url postgresql://postgres@127.0.0.1:5432/test
    python bench/drain.py --messages 2000 --no-write --py-spy drain.raw

A campaign burst has been ingested: N price questions ("what is the price?" in ten
languages) from ~2,000 customers, each with their own wa_id and business-scoped user id
(BSUID), are stored in the inbox of a fresh store before anything runs, dated now (the 24 h
window is open, so every reply is a real send). Then ``wacrm serve`` starts as deployed
(on SQLite its workers run in the server process, on PostgreSQL in its worker process) with
the embedded CRM (the local connector) and the Cloud API sandbox in a process of its own,
which accepts the replies (paced at 80 messages/s per business number, the pair rate
enforced) and posts their ``sent``/``delivered``/``read`` status webhooks back to the server,
as Meta does; those are processed too.

Measured, by the store's own clocks: messages processed per second (inbox rows done: the
contact, message, ticket, rules, reply queued, CRM changes queued, each in the processor's
transaction), from the first row done to the last; then how long until the sandbox accepted
every reply and until the CRM outbox had nothing left pending (every contact, ticket and
message activity written to the embedded CRM, statuses included).

The baseline, in the same run: the processor's transaction for one message at a time, in
process, without workers or HTTP (``bench/auto_reply.py``'s in-process path: contact,
message, ticket, rules, reply queued, commit), on the same kind of store. It is what the
drain would be if every message were its own transaction and nothing else ran.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.auto_reply import (  # noqa: E402
    _seed,
    _store,
    cpu_seconds,
    epoch,
    message_webhook,
    numbers,
    run_in_process,
    sandbox_main,
    serve_with_sandbox,
)
from wacrm.server.ingest import rows_for_events  # noqa: E402
from wacrm.store import create_store_engine  # noqa: E402
from wacrm.store.accounts import ensure_account  # noqa: E402
from wacrm.store.inbox import insert_inbox_rows  # noqa: E402
from wacrm.store.schema import crm_outbox, inbox, local_crm_records, wa_outbox  # noqa: E402
from wacrm.whatsapp.meta_webhook import split_envelope  # noqa: E402

SECTION = "## Processing"
_FULL_BATCH = 100  # the local connector's max_batch
QUESTIONS = (
    "what is the price?",
    "¿cuál es el precio?",
    "qual é o preço?",
    "quel est le prix ?",
    "was kostet das?",
    "berapa harganya?",
    "ما هو السعر؟",
    "कीमत क्या है?",
    "价格是多少？",
    "fiyatı nedir?",
)


def webhook(pnid: str, display: str, customer: int, wamid: str, question: str) -> dict[str, Any]:
    """One message webhook in Meta's shape from ``customer`` (wa_id and BSUID), sent now."""
    return message_webhook(
        pnid,
        display,
        f"9665{customer:08d}",
        wamid,
        question,
        name=f"Customer {customer:04d}",
        user_id=f"SA.{7391208655302741918 + customer}",
    )


def prefill(database_url: str, served: dict[str, str], count: int, customers: int) -> None:
    """Store ``count`` messages in the inbox as the webhook handler would (pending rows)."""
    engine = create_store_engine(database_url)
    try:
        account = ensure_account(engine, "default")
        pnids = list(served)
        rows = []
        now = datetime.now(UTC)
        for i in range(count):
            pnid = pnids[i % len(pnids)]
            doc = webhook(
                pnid, served[pnid], i % customers, f"wamid.drain.{i:07d}", QUESTIONS[i % 10]
            )
            found, quarantined = rows_for_events(split_envelope(doc), lambda _p: account, now)
            assert not quarantined, quarantined
            rows += found
        for start in range(0, len(rows), 1000):
            with engine.begin() as conn:
                insert_inbox_rows(conn, rows[start : start + 1000])
    finally:
        engine.dispose()


@dataclass
class Drain:
    backend: str
    messages: int
    processed: int = 0
    quarantined: int = 0
    seconds: float = 0.0  # first inbox row done → last one done (the store's clock)
    queued: int = 0  # replies the rules queued
    replies: int = 0  # sends the sandbox accepted
    replies_after: float = 0.0  # first row done → the last reply accepted
    crm_after: float = 0.0  # first row done → the CRM outbox with nothing pending
    crm_records: int = 0  # records in the embedded CRM by then
    crm_pending: int = 0
    crm_dead: int = 0
    statuses: int = 0  # status webhooks processed
    failed_sends: int = 0
    cpu: float = 0.0  # CPU seconds of the server (and its worker process) while draining
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.processed / self.seconds if self.seconds else 0.0


class Watch:
    """Progress read from the store and the sandbox while the server drains."""

    def __init__(self, database_url: str, sandbox: str) -> None:
        self.engine = create_store_engine(database_url)
        self.sandbox = sandbox

    def inbox(self) -> tuple[int, int, int]:
        """(messages done, messages quarantined, statuses done)."""
        with self.engine.connect() as conn:
            messages, bad = conn.execute(
                select(
                    func.count().filter(inbox.c.state == "done"),
                    func.count().filter(inbox.c.state == "quarantined"),
                ).where(inbox.c.kind == "message")
            ).one()
            statuses = conn.execute(
                select(func.count()).where(inbox.c.kind == "status", inbox.c.state == "done")
            ).scalar()
        return int(messages), int(bad), int(statuses or 0)

    def span(self) -> tuple[float, float]:
        with self.engine.connect() as conn:
            first, last = conn.execute(
                select(func.min(inbox.c.processed_at), func.max(inbox.c.processed_at)).where(
                    inbox.c.kind == "message"
                )
            ).one()
        return epoch(first), epoch(last)

    def crm(self) -> tuple[int, int, int, int]:
        """(CRM outbox rows pending, the most pending for one object, dead-lettered, records
        in the embedded CRM). Batches are per object, so a full one is per object too."""
        with self.engine.connect() as conn:
            per_object: dict[str, int] = {
                str(name): int(count)
                for name, count in conn.execute(
                    select(crm_outbox.c.object, func.count())
                    .where(crm_outbox.c.state == "pending")
                    .group_by(crm_outbox.c.object)
                ).all()
            }
            dead = conn.execute(select(func.count()).where(crm_outbox.c.state == "dead")).scalar()
            records = conn.execute(select(func.count()).select_from(local_crm_records)).scalar()
        pending = list(per_object.values())
        return sum(pending), max(pending, default=0), int(dead or 0), int(records or 0)

    def sends(self) -> tuple[int, int, int]:
        """(replies queued, sent, failed)."""
        with self.engine.connect() as conn:
            queued, sent, failed = conn.execute(
                select(
                    func.count(),
                    func.count().filter(wa_outbox.c.state == "sent"),
                    func.count().filter(wa_outbox.c.state == "failed"),
                )
            ).one()
            return int(queued), int(sent), int(failed)

    def replies(self) -> int:
        return len(httpx.get(self.sandbox + "/_sandbox/sent", timeout=30).json())

    def close(self) -> None:
        self.engine.dispose()


def run_drain(args: argparse.Namespace, url: str | None) -> Drain:
    served = numbers(args.numbers)
    with (
        tempfile.TemporaryDirectory(prefix="wacrm-drain-", dir=REPO / "bench") as tmp,
        _store(url, Path(tmp)) as (database_url, backend),
    ):
        work = Path(tmp)  # on the repo's disk, not a tmpfs: fsync must mean something
        _seed(database_url, served)
        prefill(database_url, served, args.messages, args.customers)
        result = Drain(backend, args.messages)
        with serve_with_sandbox(database_url, served, work, __file__) as stack:
            watch = Watch(database_url, stack.sandbox)
            spy: subprocess.Popen[bytes] | None = None
            try:
                cpu0 = cpu_seconds(stack.server_proc.pid)
                if args.py_spy:
                    spy = _py_spy(args.py_spy, stack.server_proc.pid, args.py_spy_seconds)
                _follow(watch, result, args.timeout)
                result.cpu = cpu_seconds(stack.server_proc.pid) - cpu0
                first, last = watch.span()
                result.seconds = last - first
                _follow_outputs(watch, result, first, args.timeout)
            finally:
                if spy is not None:
                    spy.wait()
                watch.close()
        return result


def _py_spy(out: str, pid: int, seconds: float) -> subprocess.Popen[bytes]:
    spy = Path(sys.executable).parent / "py-spy"
    cmd = [str(spy), "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200"]
    cmd += ["--threads", "--subprocesses", "-f", "raw", "-o", out]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL)


def _follow(watch: Watch, result: Drain, timeout: float) -> None:
    """Until every message row is done or quarantined."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, bad, statuses = watch.inbox()
        result.processed, result.quarantined, result.statuses = done, bad, statuses
        if done + bad >= result.messages:
            return
        time.sleep(0.25)
    result.notes.append(f"timed out after {timeout:.0f} s with {result.processed} processed")


def _follow_outputs(watch: Watch, result: Drain, first: float, timeout: float) -> None:
    """Until the sandbox accepted every reply and the CRM outbox is empty (statuses in)."""
    deadline = time.monotonic() + timeout
    replies_done = crm_done = False
    while time.monotonic() < deadline and not (replies_done and crm_done):
        if not replies_done:
            result.queued, sent, failed = watch.sends()
            if sent + failed >= result.queued:
                result.replies = watch.replies()
                if result.replies >= sent:
                    result.replies_after = time.time() - first
                    replies_done = True
        _, most, _dead, records = watch.crm()
        _, _, result.statuses = watch.inbox()
        # Done when the three statuses of every reply are in and no object has a full batch
        # pending: a partial batch of activities waits for the baseline interval by design.
        if replies_done and most < _FULL_BATCH and result.statuses >= 3 * result.replies:
            result.crm_after, result.crm_records, crm_done = time.time() - first, records, True
        time.sleep(0.25)
    result.crm_pending, _, result.crm_dead, result.crm_records = watch.crm()
    result.queued, _, result.failed_sends = watch.sends()
    if not replies_done:
        result.notes.append(f"only {result.replies} of {result.queued} replies accepted")
    if not crm_done:
        result.notes.append(f"CRM outbox: {result.crm_pending} rows still pending")
    if result.crm_dead or result.failed_sends:
        result.notes.append(
            f"{result.crm_dead} CRM writes dead-lettered, {result.failed_sends} sends failed"
        )


def section(runs: list[Drain], args: argparse.Namespace, baseline: list[float]) -> str:
    base_ms = statistics.fmean(baseline)
    base_rate = 1000.0 / base_ms
    lines = [
        SECTION,
        "",
        f"`python bench/drain.py` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores) — a "
        f"backlog of {args.messages:,} price questions in ten languages from "
        f"{args.customers:,} customers (each with a wa_id and a BSUID), stored in the inbox "
        "of a fresh store and dated now, drained by `wacrm serve` with its workers as "
        f"deployed: replies sent to the Cloud API sandbox ({args.numbers} business numbers, "
        "80 messages/s each, pair rate enforced), which posts each reply's sent, delivered "
        "and read webhooks back (processed too); CRM changes written to the embedded CRM "
        "(local connector). *Processed/s* is inbox rows done per second, first to last, by "
        "the store's clock; *replies* and *CRM s* are seconds from the first row done "
        "until the sandbox had accepted every reply, and until every status was in and the "
        "CRM outbox held less than one batch of any object (a partial batch of activities "
        "waits for a full one or the baseline interval, by design); *left* is what it held "
        "then. "
        "*CPU ms* is the server's CPU time per message during the drain.",
        "",
        "| store | processed/s | seconds | replies accepted | replies s | CRM records "
        "| CRM s | left | statuses | CPU ms | quarantined |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        cpu_ms = r.cpu * 1000 / max(r.processed, 1)
        lines.append(
            f"| {r.backend} | {r.rate:,.0f} | {r.seconds:.1f} | {r.replies:,} | "
            f"{r.replies_after:.1f} | {r.crm_records:,} | {r.crm_after:.1f} | {r.crm_pending} | "
            f"{r.statuses:,} | {cpu_ms:.2f} | {r.quarantined} |"
        )
    lines += [
        "",
        f"Baseline, same run: the processor's transaction for one message, in process "
        f"(no workers, no HTTP; contact, message, ticket, rules, reply queued, commit), on "
        f"{runs[0].backend}: mean {base_ms:.2f} ms, so {base_rate:,.0f} messages/s one "
        f"transaction at a time. The drain on {runs[0].backend}: "
        f"**{runs[0].rate / base_rate:.1f}×** that, while also sending the replies and "
        "writing the CRM.",
    ]
    for r in runs:
        for note in r.notes:
            lines.append(f"\n{r.backend}: {note}.")
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    """Replace the ``## Processing`` section, leaving the others alone."""
    current = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(r"^## Processing\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(current):
        current = pattern.sub(lambda _m: text + "\n", current, count=1)
    else:
        current = current.rstrip("\n") + "\n\n" + text
    path.write_text(current.rstrip("\n") + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--sandbox"]:
        sandbox_main(argv[1])
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=5_000)
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--numbers", type=int, default=10, help="business phone_number_ids")
    parser.add_argument("--baseline", type=int, default=500, help="in-process messages")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per phase")
    parser.add_argument(
        "--database-url",
        action="append",
        help="store(s) to use, repeatable; 'sqlite' is a fresh SQLite file (the default)",
    )
    parser.add_argument("--py-spy", default="", help="record a raw py-spy profile here")
    parser.add_argument("--py-spy-seconds", type=float, default=10.0)
    parser.add_argument("--no-write", action="store_true", help="don't update BENCHMARKS.md")
    args = parser.parse_args(argv)
    urls = [None if u == "sqlite" else u for u in (args.database_url or ["sqlite"])]
    runs = [run_drain(args, url) for url in urls]
    baseline = run_in_process(args.baseline, urls[0])
    text = section(runs, args, baseline)
    print(text)
    if not args.no_write:
        write_section(REPO / "BENCHMARKS.md", text)
    return 0 if all(not r.notes and r.quarantined == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
