"""Send pacing benchmark: the outbox worker against the WhatsApp sandbox, in real time.

    python bench/send.py                     # 10,000 over 2,000 recipients + naive baseline
    python bench/send.py --pair-case         # also 100 queued for one recipient (~10 min)
    python bench/send.py --messages 2000 --recipients 400 --mps 40 --no-write

The sandbox (``wacrm.sandbox.whatsapp``, throughput limit ``--mps`` and the pair rate: about
1 message per 6 s per user, bursts of 45 borrowing future quota) runs under uvicorn on a
loopback port (``BackgroundServer``, a thread of this process). ``--messages`` text messages,
message i to recipient i mod ``--recipients``, are queued with ``enqueue_send`` into a SQLite
store on disk (every recipient a contact who wrote a minute ago, so the 24 h window is open;
the sandbox's own window check is off, its default). ``WhatsAppOutboxWorker.run`` then sends
them over real HTTP, as ``wacrm serve`` does, until the sandbox has accepted them all.

Measured, not asserted: the time from the worker's start to the last acceptance, msg/s
against the configured mps, the sandbox's refusals by code (130429 throughput, 131056 pair
rate, other), and whether every queued message was accepted exactly once (one acceptance per
outbox id, each row ``sent`` with the wamid the sandbox gave it). The baseline sends the same
bodies through a plain loop of ``CloudApiClient.send`` (no pacing, one try each) to a fresh
sandbox. ``--pair-case`` adds the one-recipient case (``--pair-messages``, default 100): the
first 45 go as a burst, then the borrowed quota is paid back, so the 46th leaves about 264 s
after the first and each later one 6 s after the one before: 100 take about 588 s.

Writes the ``## Send pacing`` section of BENCHMARKS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import Engine, select  # noqa: E402

from wacrm.config import Settings  # noqa: E402
from wacrm.sandbox.whatsapp import (  # noqa: E402
    DEFAULT_PHONE_NUMBER_ID,
    SandboxConfig,
    WhatsAppSandbox,
    create_sandbox_app,
)
from wacrm.server.background import BackgroundServer  # noqa: E402
from wacrm.store import create_store_engine, migrate  # noqa: E402
from wacrm.store.accounts import ensure_account, register_number  # noqa: E402
from wacrm.store.schema import contacts, messages, wa_outbox  # noqa: E402
from wacrm.store.whatsapp_outbox import enqueue_send  # noqa: E402
from wacrm.whatsapp.meta_bodies import text_message  # noqa: E402
from wacrm.whatsapp.meta_send import CloudApiClient, SendError  # noqa: E402
from wacrm.whatsapp.pacing import PAIR_BURST, PAIR_INTERVAL  # noqa: E402
from wacrm.workers.whatsapp_outbox import OutboxPolicy, WhatsAppOutboxWorker  # noqa: E402

TOKEN = "bench-send-token"
PNID = DEFAULT_PHONE_NUMBER_ID
THROUGHPUT, PAIR_RATE = 130429, 131056
SECTION = "Send pacing"


def phone(i: int) -> str:
    return f"+1650{i:07d}"


def bodies_for(to: list[int]) -> list[dict[str, Any]]:
    return [text_message(phone(r), f"m{i}") for i, r in enumerate(to)]


def spread(n: int, recipients: int) -> list[int]:
    """Message i to recipient i mod ``recipients``: evenly spread, interleaved."""
    return [i % recipients for i in range(n)]


@dataclass
class Run:
    """One sender against a fresh sandbox."""

    sender: str
    messages: int
    recipients: int
    seconds: float  # start → last acceptance (the naive loop: start → its last answer)
    accepted: int
    refusals: Counter[int]
    sent_once: bool | None  # None: not checked (the naive loop keeps no queue)
    accepted_at: list[float] = field(default_factory=list)  # seconds from the first
    latency_ms: list[float] = field(default_factory=list)  # request out → sandbox's clock
    departures: list[float] = field(default_factory=list)  # when each request left
    warnings: int = 0  # the worker's warnings (one per refusal or transport error)
    worker_mps: float | None = None  # what the worker was paced at (None: not paced)

    @property
    def paced(self) -> bool:
        return self.sent_once is not None

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    def refused(self, code: int | None = None) -> int:
        if code is None:
            return sum(n for c, n in self.refusals.items() if c not in (THROUGHPUT, PAIR_RATE))
        return self.refusals.get(code, 0)


class _CountWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


class _Departures:
    """An httpx request hook: when each send left, by outbox id (its callback data)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.by_row: dict[str, float] = {}

    def __call__(self, request: httpx.Request) -> None:
        now = time.time()
        self.times.append(now)
        row = orjson.loads(request.content).get("biz_opaque_callback_data")
        if row is not None:
            self.by_row[str(row)] = now  # the last try is the one accepted


def start_sandbox(mps: int) -> tuple[BackgroundServer, WhatsAppSandbox]:
    config = SandboxConfig(access_token=TOKEN, app_secret="bench-secret", mps=mps, pair_limit=True)
    app = create_sandbox_app(config)
    server = BackgroundServer(app).start()
    return server, app.state.sandbox


def make_store(path: Path) -> tuple[Engine, int]:
    engine = create_store_engine(f"sqlite:///{path}")
    migrate(engine)
    account = ensure_account(engine, "default")
    register_number(engine, account, PNID, display_phone_number="15550783881")
    return engine, account


def queue(engine: Engine, account: int, to: list[int]) -> None:
    now = datetime.now(UTC)
    wrote = now - timedelta(minutes=1)
    with engine.begin() as conn:
        conn.execute(
            contacts.insert(),
            [
                {
                    "account_id": account,
                    "phone": phone(r),
                    "wa_id": phone(r).lstrip("+"),
                    "last_inbound_at": wrote,
                    "created_at": wrote,
                    "updated_at": wrote,
                }
                for r in range(max(to) + 1)
            ],
        )
        ids = {p: i for p, i in conn.execute(select(contacts.c.phone, contacts.c.id))}
        for body in bodies_for(to):
            enqueue_send(
                conn,
                account_id=account,
                phone_number_id=PNID,
                body=body,
                contact_id=ids[body["to"]],
                now=now,
            )


def check_sent_once(engine: Engine, sandbox: WhatsAppSandbox, n: int) -> bool:
    """One acceptance per outbox id, every row ``sent``, each message with its wamid."""
    per_row = Counter(s.body.get("biz_opaque_callback_data") for s in sandbox.sent)
    with engine.connect() as conn:
        rows = conn.execute(select(wa_outbox.c.id, wa_outbox.c.state)).all()
        wamids = set(
            conn.execute(
                select(messages.c.provider_message_id).where(messages.c.direction == "out")
            ).scalars()
        )
    return (
        len(rows) == n
        and all(state == "sent" for _, state in rows)
        and all(per_row.get(str(row_id)) == 1 for row_id, _ in rows)
        and len(per_row) == n
        and wamids == {s.wamid for s in sandbox.sent}
    )


async def _run_worker(worker: WhatsAppOutboxWorker, sandbox: WhatsAppSandbox, n: int) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        while len(sandbox.sent) < n:
            if task.done():
                raise RuntimeError("the worker stopped early")
            await asyncio.sleep(0.02)
    finally:
        stop.set()  # the pass in progress finishes: every accepted row gets marked sent
        await task


def paced_run(args: argparse.Namespace, to: list[int], worker_mps: float, db: Path) -> Run:
    engine, account = make_store(db)
    queue(engine, account, to)
    server, sandbox = start_sandbox(args.mps)
    warnings = _CountWarnings()
    logger = logging.getLogger("wacrm.workers.whatsapp_outbox")
    logger.addHandler(warnings)
    logger.setLevel(logging.WARNING)
    logger.propagate = False  # counted, not printed
    departures = _Departures()
    http = httpx.Client(timeout=30.0, event_hooks={"request": [departures]})
    try:
        client = CloudApiClient(base_url=server.url, version="v25.0", access_token=TOKEN, http=http)
        policy = OutboxPolicy(mps=worker_mps, pair_limit=True)
        worker = WhatsAppOutboxWorker(engine, Settings(), client, policy=policy)
        start = time.time()
        asyncio.run(_run_worker(worker, sandbox, len(to)))
        accepted = [s.accepted_at for s in sandbox.sent]
        latency = [
            (s.accepted_at - departures.by_row[str(s.body["biz_opaque_callback_data"])]) * 1e3
            for s in sandbox.sent
        ]
        once = check_sent_once(engine, sandbox, len(to))
    finally:
        logger.removeHandler(warnings)
        logger.propagate = True
        http.close()
        server.stop()
        engine.dispose()
    return Run(
        sender=f"outbox worker, paced at {worker_mps:g} mps",
        messages=len(to),
        recipients=len(set(to)),
        seconds=max(accepted) - start,
        accepted=len(accepted),
        refusals=Counter(r.code for r in sandbox.refused),
        sent_once=once,
        accepted_at=[t - accepted[0] for t in accepted],
        latency_ms=latency,
        departures=departures.times,
        warnings=warnings.count,
        worker_mps=worker_mps,
    )


def naive_run(args: argparse.Namespace, to: list[int]) -> Run:
    """A plain loop of ``CloudApiClient.send``: no pacing, one try per message."""
    server, sandbox = start_sandbox(args.mps)
    refusals: Counter[int] = Counter()
    accepted = 0
    try:
        with httpx.Client(timeout=30.0) as http:
            client = CloudApiClient(
                base_url=server.url, version="v25.0", access_token=TOKEN, http=http
            )
            start = time.time()
            for body in bodies_for(to):
                try:
                    client.send(PNID, body)
                    accepted += 1
                except SendError as exc:
                    refusals[exc.code if exc.code is not None else -1] += 1
            seconds = time.time() - start
    finally:
        server.stop()
    assert sum(refusals.values()) == len(sandbox.refused)
    return Run(
        sender="naive loop: `CloudApiClient.send`, unpaced",
        messages=len(to),
        recipients=len(set(to)),
        seconds=seconds,
        accepted=accepted,
        refusals=refusals,
        sent_once=None,
    )


def _row(run: Run, mps: int) -> str:
    if run.paced:
        once = "yes" if run.sent_once else "**no**"
        share = f"{run.rate / mps:.1%}" if run.recipients > 1 else "— (pair rate)"
        rate = f"{run.rate:,.2g} | {share}" if run.rate < 1 else f"{run.rate:,.1f} | {share}"
    else:
        once = f"no: {run.messages - run.accepted:,} refused, not retried"
        rate = f"({run.messages / run.seconds:,.0f} tried/s) | —"
    return (
        f"| {run.sender} | {run.messages:,} → {run.recipients:,} | {run.seconds:,.1f} s "
        f"| {rate} | {run.accepted:,} | {run.refused(THROUGHPUT):,} "
        f"| {run.refused(PAIR_RATE):,} | {run.refused():,} | {once} |"
    )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timing_note(run: Run, mps: int) -> str:
    """Why a sender paced at exactly the limit can still be refused: Meta (and the sandbox)
    count sends when they *arrive*, and the loopback's latency varies."""
    lat = run.latency_ms
    span = min(
        (b - a for a, b in zip(run.departures, run.departures[mps:], strict=False)),
        default=float("nan"),
    )
    return (
        f"{run.sender}, {run.messages:,} → {run.recipients:,}: request sent → sandbox's "
        f"clock p50 {statistics.median(lat):.1f} ms, p99 {_percentile(lat, 0.99):.1f} ms, "
        f"max {max(lat):.1f} ms; the tightest {mps + 1} consecutive requests left within "
        f"{span:.3f} s; {run.warnings} worker warnings (one per refusal or transport error)."
    )


def pair_note(run: Run, mps: int) -> str:
    at = run.accepted_at
    burst = sum(1 for t in at if t < PAIR_INTERVAL)
    gaps = [b - a for a, b in zip(at[PAIR_BURST:], at[PAIR_BURST + 1 :], strict=False)]
    text = (
        f"One recipient, {run.messages} queued at once: {burst} accepted within the first "
        f"{PAIR_INTERVAL:g} s (the burst, {at[min(burst, len(at)) - 1]:.2f} s for all of "
        f"them)"
    )
    if len(at) > PAIR_BURST:
        text += (
            f"; the {PAIR_BURST + 1}th at {at[PAIR_BURST]:.1f} s (the burst's borrowed quota "
            f"paid back: {PAIR_INTERVAL:g} s × {PAIR_BURST - 1} = "
            f"{PAIR_INTERVAL * (PAIR_BURST - 1):g} s)"
        )
    if gaps:
        text += (
            f"; then one every {statistics.median(gaps):.2f} s (gaps {min(gaps):.2f}–"
            f"{max(gaps):.2f} s: each on its {PAIR_INTERVAL:g} s slot, at most one 1 s poll "
            "late)"
        )
    text += (
        f"; the last at {at[-1]:.1f} s. At the number's {mps} mps they would have left in "
        f"{(run.messages - 1) / mps:.2f} s."
    )
    return text


def report(args: argparse.Namespace, runs: list[Run], load: float) -> str:
    paced = [r for r in runs if r.paced]
    lines = [
        f"## {SECTION}",
        "",
        f"`python bench/send.py {' '.join(args.argv)}`".replace(" `", "`")
        + f" ({datetime.now(UTC):%Y-%m-%d}) — the WhatsApp outbox worker "
        "(`WhatsAppOutboxWorker.run`, as `wacrm serve` runs it) sending queued text messages "
        "over loopback HTTP to the Cloud API sandbox under uvicorn (a thread of the same "
        f"process), which allows {args.mps} messages in any 1 s per number (130429 past "
        "it) and the pair rate, about 1 message per 6 s per user with bursts of 45 "
        "borrowing future quota (131056 past it). Store: a SQLite file (WAL, "
        "synchronous=FULL). Message i goes to recipient i mod R, every recipient a contact "
        "who wrote a minute before (24 h window open). *time* runs from the worker's start "
        "to the sandbox's last acceptance; *msg/s* is accepted ÷ time. *Each sent once*: "
        "one acceptance per outbox row, every row `sent` with the wamid the sandbox gave "
        "it. The naive loop sends the same bodies with `CloudApiClient.send`, one try "
        "each, no pacing, to a fresh sandbox. "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; load avg {load:.2f} "
        "at the start.",
        "",
        f"| sender | messages → recipients | time | msg/s | % of {args.mps} mps | accepted "
        "| 130429 | 131056 | other | each sent once |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [_row(r, args.mps) for r in runs]
    lines.append("")
    lines += [timing_note(r, args.mps) for r in paced if r.recipients > 1]
    at_limit = [r for r in paced if r.recipients > 1 and (r.worker_mps or 0) >= args.mps]
    if any(r.refused(THROUGHPUT) for r in at_limit):
        lines += [
            "",
            "Paced at the limit itself (`OutboxPolicy.mps` = the number's mps, the default), "
            f"{args.mps + 1} consecutive requests span about 1 s (the tightest, above) with no "
            "margin, "
            "while their time to reach the sandbox varies by a few ms (above); whenever "
            f"one arrives later than the one {args.mps} after it, the sandbox counts "
            f"{args.mps + 1} in 1 s and answers 130429, and the worker pauses the whole "
            "number (1–2 s backoff, then up to a 1 s poll). A few per cent under the limit "
            "(`--worker-mps`), the jitter fits in the margin.",
        ]
    lines += ["", *(pair_note(r, args.mps) for r in paced if r.recipients == 1)]
    if not any(r.recipients == 1 for r in paced):
        lines.append(
            "The one-recipient case was not run this time (`--pair-case`: about 10 min for "
            "100 messages); `tests/test_send_pacing.py` checks it in simulated time."
        )
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's section of BENCHMARKS.md, leaving the others alone."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^## {re.escape(SECTION)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def _print(run: Run) -> None:
    print(
        f"{run.sender}: {run.messages} → {run.recipients} in {run.seconds:.1f} s, "
        f"{run.rate:.1f} msg/s, accepted {run.accepted}, refusals {dict(run.refusals)}, "
        f"sent once {run.sent_once}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--recipients", type=int, default=2_000)
    parser.add_argument("--mps", type=int, default=80, help="the number's messages/s")
    parser.add_argument(
        "--worker-mps",
        default="",
        help="comma-separated rates to pace the worker at, one run each (default: --mps)",
    )
    parser.add_argument(
        "--pair-case", action="store_true", help="also the one-recipient case (slow)"
    )
    parser.add_argument("--pair-messages", type=int, default=100)
    parser.add_argument("--no-baseline", action="store_true", help="skip the naive loop")
    parser.add_argument("--no-write", action="store_true", help="don't update BENCHMARKS.md")
    args = parser.parse_args(argv)
    args.argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--no-write"]
    logging.basicConfig(level=logging.ERROR)
    rates = [float(x) for x in args.worker_mps.split(",") if x] or [float(args.mps)]
    load = os.getloadavg()[0]
    bulk = spread(args.messages, args.recipients)
    one = [0] * args.pair_messages
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="wacrm-send-") as tmp:
        for i, rate in enumerate(rates):
            runs.append(paced_run(args, bulk, rate, Path(tmp) / f"bulk{i}.db"))
            _print(runs[-1])
        if not args.no_baseline:
            runs.append(naive_run(args, bulk))
            _print(runs[-1])
        if args.pair_case:
            runs.append(paced_run(args, one, rates[0], Path(tmp) / "pair.db"))
            _print(runs[-1])
            if not args.no_baseline:
                runs.append(naive_run(args, one))
                _print(runs[-1])
    section = report(args, runs, load)
    print(section)
    if not args.no_write:
        write_section(REPO / "BENCHMARKS.md", section)
    clean = all(r.sent_once and not r.refusals for r in runs if r.paced)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
