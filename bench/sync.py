"""Sync benchmark: N changed records through the CRM outbox into the CRM simulator over HTTP.

    python bench/sync.py                          # 10k records, 0 % and 10 % faults
    python bench/sync.py --records 100000 --faults 0   # the ~95 s run
    python bench/sync.py --records 10000 --limit 110/10 --no-write

The simulator runs in its own process on a loopback port with HubSpot-like limits (100 per
batch, 110 requests per rolling 10 s, 429s with HubSpot's body and headers) and, when asked,
injected faults (429, 500, 503, timeouts, connection resets; a timeout or reset may come after
the write was applied). The store is a SQLite file on disk. Measured, not asserted: CRM calls
against ⌈N/batch⌉, records/s against the bound (limit × batch), the share of calls answered
429, peak memory of the syncing process, whether every record arrived exactly once, and the
delay from a CRM user's edit to the contact mirror through the change webhook: the simulator
signs it (``X-HubSpot-Signature-v3``) and posts it to ``/webhooks/crm`` of a real ``serve`` in
its own process (``--webhook-only`` measures just that and rewrites just its line). Writes
the ``## Sync`` section of BENCHMARKS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import Engine, func, select  # noqa: E402

from wacrm.store import create_store_engine, migrate  # noqa: E402
from wacrm.store.accounts import ensure_account  # noqa: E402
from wacrm.store.schema import contacts, crm_outbox  # noqa: E402
from wacrm.sync.commands import ConnectorRegistry, SimulatorTarget, parse_rate  # noqa: E402
from wacrm.workers.crm_outbox import CrmOutboxWorker  # noqa: E402


@dataclass
class Result:
    records: int
    fault_rate: float
    calls: int
    ideal_calls: int
    seconds: float
    bound: float  # records/s the rate limit allows
    limiter_429: int
    injected: dict[str, int]
    rss_before_mb: float
    rss_peak_mb: float
    arrived: int
    max_creates: int
    max_writes: int
    dead: int

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    @property
    def share_429(self) -> float:
        return (self.limiter_429 + self.injected.get("429", 0)) / self.calls


class RssSampler:
    """Peak resident memory of this process while the sync runs, sampled every 20 ms from
    /proc (tracemalloc would slow the syncing process down and skew its pace)."""

    def __init__(self) -> None:
        self.before = self.peak = _rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, _rss())

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


class Simulator:
    """The simulator as a child process (its own CPU, like a remote CRM)."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wacrm.sandbox.crm_app", "--port", "0", *args],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"simulator did not start: {line!r}")
        self.url = line.split()[-1]

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"{self.url}/_sim/stats", timeout=30).json()
        return result

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def fill_outbox(engine: Engine, account_id: int, n: int) -> None:
    """N pending contact changes, as ``enqueue_crm_change`` writes them (in bulk)."""
    now = datetime.now(UTC)
    rows = [
        {
            "account_id": account_id,
            "object": "contacts",
            "record_key": f"+1777{i:07d}",
            "operation": "upsert",
            "payload": orjson.dumps(
                {
                    "properties": {
                        "unread_count": i % 9,
                        "name": f"Contact {i}",
                        "last_interaction_at": now.isoformat(),
                    },
                    "contact_key": None,
                }
            ).decode(),
            "state": "pending",
            "urgent": 0,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(n)
    ]
    with engine.begin() as conn:
        for start in range(0, n, 10_000):
            conn.execute(crm_outbox.insert(), rows[start : start + 10_000])


def pending(engine: Engine) -> tuple[int, datetime | None]:
    with engine.connect() as conn:
        count, due = conn.execute(
            select(func.count(), func.min(crm_outbox.c.next_attempt_at)).where(
                crm_outbox.c.state == "pending"
            )
        ).one()
    return int(count), due


def run_outbound(args: argparse.Namespace, n: int, fault_rate: float, workdir: Path) -> Result:
    limit = parse_rate(args.limit)
    sim = Simulator(
        [
            "--max-batch",
            str(args.batch),
            "--rate-limit",
            str(limit.requests),
            "--window",
            str(limit.per_seconds),
            "--fault-rate",
            str(fault_rate),
            "--timeout-delay",
            str(args.client_timeout * 1.5),
            "--seed",
            "7",
        ]
    )
    engine = create_store_engine(f"sqlite:///{workdir / f'sync-{n}-{fault_rate}.db'}")
    try:
        migrate(engine)
        account_id = ensure_account(engine, "bench")
        fill_outbox(engine, account_id, n)
        target = SimulatorTarget(sim.url, args.batch, limit, args.client_timeout)
        outbox = CrmOutboxWorker(engine, ConnectorRegistry(engine, target))
        sampler = RssSampler()
        started = time.perf_counter()
        while True:
            outbox.flush(force=True)
            left, due = pending(engine)
            if left == 0:
                break
            assert due is not None
            time.sleep(max(0.0, min(5.0, (due - datetime.now(UTC)).total_seconds())))
        seconds = time.perf_counter() - started
        sampler.stop()
        stats = sim.stats()
        with engine.connect() as conn:
            dead = conn.execute(
                select(func.count()).select_from(crm_outbox).where(crm_outbox.c.state == "dead")
            ).scalar()
    finally:
        engine.dispose()
        sim.stop()
    calls = stats["calls"]
    injected = {k.split(":")[1]: v for k, v in calls.items() if k.count(":") == 1}
    return Result(
        records=n,
        fault_rate=fault_rate,
        calls=calls["total"],
        ideal_calls=math.ceil(n / args.batch),
        seconds=seconds,
        bound=limit.requests / limit.per_seconds * args.batch,
        limiter_429=calls.get("429", 0) - injected.get("429", 0),
        injected=injected,
        rss_before_mb=sampler.before / 2**20,
        rss_peak_mb=sampler.peak / 2**20,
        arrived=stats["records"].get("contacts", 0),
        max_creates=stats["max_creates_per_key"],
        max_writes=stats["max_writes_per_key"],
        dead=int(dead or 0),
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sync_against(url: str) -> Any:
    """``make_workers`` for ``serve``: the sync loop, reading the simulator at ``url``."""
    from wacrm.sync.commands import build_sync_worker

    def make(_settings: Any, engine: Engine) -> tuple[Any, ...]:
        return (build_sync_worker(engine, SimulatorTarget(url)),)

    return make


def serve_child(simulator_url: str) -> int:
    """``--serve-child URL``: the real ``serve`` (uvicorn, the app with its mounted
    ``/webhooks/crm`` route, the sync loop) with settings from the environment, its sync loop
    reading the simulator. ``wacrm serve`` itself has no option to sync against the simulator
    (its sync loop reads each account's CRM: the embedded one here)."""
    from wacrm.config import load_settings
    from wacrm.server.runtime import serve

    serve(load_settings(), make_workers=_sync_against(simulator_url))
    return 0


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def run_webhook_latency(workdir: Path, edits: int) -> tuple[list[float], dict[str, Any]]:
    """Seconds from a CRM user's edit in the simulator to the contact mirror: the simulator
    signs its change webhook (v3) and posts it to ``/webhooks/crm`` of ``serve`` running in
    its own process, whose sync loop is woken and reads the simulator."""
    secret, port = os.urandom(16).hex(), _free_port()
    server_url = f"http://127.0.0.1:{port}"
    database = f"sqlite:///{workdir / 'webhook.db'}"
    sim = Simulator(
        [
            "--rate-limit",
            "100000",
            "--window",
            "1",
            "--webhook-url",
            f"{server_url}/webhooks/crm",
            "--client-secret",
            secret,
            "--portal-id",
            "62515",
            "--app-id",
            "1160452",
        ]
    )
    env = {
        **os.environ,
        "WACRM_CONFIG": str(workdir / "none.toml"),
        "WACRM_DATABASE_URL": database,
        "WACRM_PORT": str(port),
        "WACRM_WHATSAPP_APP_SECRET": os.urandom(16).hex(),
        "WACRM_WHATSAPP_VERIFY_TOKEN": os.urandom(8).hex(),
        "WACRM_CRM_WEBHOOK_SECRET": secret,
        "WACRM_CRM_TENANT": "62515",
        "WACRM_CRM_APP_ID": "1160452",
    }
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve-child", sim.url],
        env=env,
        cwd=workdir,
    )
    engine = create_store_engine(database)
    delays: list[float] = []
    try:
        deadline = time.monotonic() + 60
        while not _healthy(server_url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("serve did not start")
            time.sleep(0.05)
        account_id = ensure_account(engine, "default")
        now = datetime.now(UTC)
        with engine.begin() as conn:
            conn.execute(
                contacts.insert(),
                [
                    {
                        "account_id": account_id,
                        "phone": f"+1888{i:07d}",
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in range(edits + 1)
                ],
            )
        with httpx.Client(base_url=sim.url, timeout=10) as client:
            for i in range(edits + 1):  # the first: whichever read brings it (the baseline)
                phone = f"+1888{i:07d}"
                started = time.perf_counter()
                client.post(
                    f"/_sim/records/contacts/{phone}",
                    json={"properties": {"phone": phone, "priority": "high"}},
                ).raise_for_status()
                while True:
                    with engine.connect() as conn:
                        got = conn.execute(
                            select(contacts.c.priority).where(contacts.c.phone == phone)
                        ).scalar()
                    if got == "high":
                        if i:
                            delays.append(time.perf_counter() - started)
                        break
                    if time.perf_counter() - started > 30:
                        raise RuntimeError(f"edit {i} never reached the mirror")
                    time.sleep(0.002)
        stats = sim.stats()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        sim.stop()
        engine.dispose()
    return delays, stats.get("webhooks", {})


def previous_rows(
    path: Path,
) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], str], str | None]:
    """Table rows and fault notes of the current ``## Sync`` section, by (records, faults),
    and its webhook line, so a run of some sizes (the 100k run is done once) keeps the
    others' figures."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    match = re.search(r"^## Sync\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    rows: dict[tuple[str, str], str] = {}
    notes: dict[tuple[str, str], str] = {}
    webhook = None
    for line in (match.group(1) if match else "").splitlines():
        if line.startswith("CRM change webhook"):
            webhook = line
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) > 2 and cells[0][:1].isdigit():
            rows[(cells[0], cells[1])] = line
        note = re.match(r"Injected faults, ([\d,]+) records at (\d+%)", line)
        if note:
            notes[(note.group(1), note.group(2))] = line
    return rows, notes, webhook


def _percentile(ordered: list[float], share: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def webhook_line(delays: list[float], hooks: dict[str, Any]) -> str:
    ordered = sorted(delays)
    return (
        f"CRM change webhook → contact mirror ({len(delays)} edits, one at a time, each: a CRM "
        "user's edit in the simulator, its change webhook signed with X-HubSpot-Signature-v3 "
        "and posted to `/webhooks/crm` of `serve` in its own process (SQLite; the signature "
        "checked, the portal mapped to its account, the sync loop woken), a read of the "
        "simulator's changes, the mirror written; measured until the bench sees the row): "
        f"p50 {statistics.median(ordered) * 1000:.0f} ms, "
        f"p99 {_percentile(ordered, 0.99) * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms "
        f"(must-show: within 2 s); webhooks delivered {hooks.get('delivered', 0)}, refused "
        f"{hooks.get('refused', 0)}."
    )


def write_webhook_line(path: Path, line: str) -> None:
    """Replace only the webhook line of the ``## Sync`` section (``--webhook-only``)."""
    text = path.read_text(encoding="utf-8")
    match = re.search(r"^## Sync\n.*?(?=^## |\Z)", text, re.M | re.S)
    if match is None:
        raise RuntimeError(f"{path} has no ## Sync section")
    section = match.group(0)
    old = re.search(r"^CRM change webhook.*$", section, re.M)
    if old is not None:
        section = section[: old.start()] + line + section[old.end() :]
    else:
        section = section.rstrip("\n") + "\n\n" + line + "\n\n"
    path.write_text(text[: match.start()] + section + text[match.end() :], encoding="utf-8")


def report(
    results: list[Result],
    delays: list[float],
    hooks: dict[str, Any],
    args: argparse.Namespace,
    path: Path,
) -> str:
    load = os.getloadavg()[0]
    lines = [
        "## Sync",
        "",
        "`python bench/sync.py` — N changed contacts in the CRM outbox, written by the outbox "
        "worker through the simulator connector (httpx, rate budget, retries) to the CRM "
        "simulator in its own process on loopback, with HubSpot-like limits: "
        f"{args.batch} per batch, {args.limit.replace('/', ' requests per ')} s rolling. "
        "Store: SQLite file. `calls` counts every HTTP call the simulator answered (429s, "
        "faults and retries included); `bound` is limit × batch; faults are spread evenly "
        "over 429, 500, 503, timeout and reset (client timeout "
        f"{args.client_timeout:g} s). RSS: the syncing process's resident memory when the "
        "sync starts (the N rows were just filled in) and its peak during the sync, sampled "
        "every 20 ms. "
        f"2 cores; load avg {load:.1f} at the start.",
        "",
        "| records | faults | calls | ⌈N/batch⌉ | calls / ideal | records/s | % of bound "
        "| 429 share | RSS before → peak | arrived once | dead |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows, notes, webhook = previous_rows(path)
    for r in results:
        once = "yes" if r.arrived == r.records and r.max_creates == 1 else "**no**"
        key = (f"{r.records:,}", f"{r.fault_rate:.0%}")
        rows[key] = (
            f"| {r.records:,} | {r.fault_rate:.0%} | {r.calls:,} | {r.ideal_calls:,} "
            f"| {r.calls / r.ideal_calls:.3f} | {r.rate:,.0f} | {r.rate / r.bound:.1%} "
            f"| {r.share_429:.2%} | {r.rss_before_mb:.0f} → {r.rss_peak_mb:.0f} MB "
            f"| {once} ({r.arrived:,}) | {r.dead} |"
        )
        if r.injected:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(r.injected.items()))
            notes[key] = (
                f"Injected faults, {r.records:,} records at {r.fault_rate:.0%}: {kinds}; "
                f"rate-limiter 429s: {r.limiter_429}; the most writes one key received: "
                f"{r.max_writes} (a write applied before its answer was lost is sent again; "
                "the upsert by key keeps one record)."
            )
    order = sorted(rows, key=lambda k: (int(k[0].replace(",", "")), int(k[1].rstrip("%"))))
    lines.extend(rows[k] for k in order)
    lines.extend("\n" + notes[k] for k in order if k in notes)
    if delays:
        webhook = webhook_line(delays, hooks)
    if webhook:
        lines.append("\n" + webhook)
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's ``## Sync`` section, leaving the others alone."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(r"^## Sync\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", default="10000", help="comma-separated, e.g. 10000,100000")
    parser.add_argument("--faults", default="0,0.1", help="comma-separated fault rates")
    parser.add_argument("--limit", default="110/10", help="requests/seconds")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--client-timeout", type=float, default=1.0)
    parser.add_argument("--webhook-edits", type=int, default=100)
    parser.add_argument(
        "--webhook-only", action="store_true", help="measure only the webhook → mirror delay"
    )
    parser.add_argument("--serve-child", metavar="SIMULATOR_URL", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.serve_child:
        return serve_child(args.serve_child)
    path = REPO / "BENCHMARKS.md"
    if args.webhook_only:
        with tempfile.TemporaryDirectory() as tmp:
            delays, hooks = run_webhook_latency(Path(tmp), args.webhook_edits)
        line = webhook_line(delays, hooks)
        print(line)
        if not args.no_write:
            write_webhook_line(path, line)
        return 0
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.records.split(",")):
            for fault in (float(x) for x in args.faults.split(",")):
                result = run_outbound(args, n, fault, Path(tmp))
                print(
                    f"{n} records, {fault:.0%} faults: {result.calls} calls "
                    f"(ideal {result.ideal_calls}), {result.rate:.0f} rec/s "
                    f"({result.rate / result.bound:.1%} of bound), 429 share "
                    f"{result.share_429:.2%}, arrived {result.arrived}, dead {result.dead}",
                    flush=True,
                )
                results.append(result)
        delays, hooks = (
            run_webhook_latency(Path(tmp), args.webhook_edits) if args.webhook_edits else ([], {})
        )
    section = report(results, delays, hooks, args, path)
    print(section)
    if not args.no_write:
        write_section(path, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
