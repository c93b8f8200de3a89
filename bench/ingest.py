"""Ingest benchmark: signed webhooks over loopback into wacrm, and into pywa's FastAPI
webhook as the baseline, in the same run, with the same bodies and load generator.

    python bench/ingest.py                  # ~1 min; writes the ## Ingest section of BENCHMARKS.md
    python bench/ingest.py --with-workers   # also `wacrm serve` with its background workers
    python bench/ingest.py --skip-pywa --seconds 5 --no-write

Needs ``wrk`` (apt-get install -y wrk) and, for the baseline, ``pip install pywa==4.5.0
fastapi`` (the ``bench`` extra). Each server is its own process on a loopback port, like a
deployment. "Ingest only" is ``bench/ingest_server.py``: the app, settings and uvicorn set-up
of ``wacrm serve`` without the background workers, which on 2 cores compete with ingest for
CPU. The store is a SQLite file on disk (fsync on every group commit) unless
``--database-url`` says otherwise. After each wacrm run the benchmark checks that every
webhook wrk sent is in the inbox exactly once: it re-posts the few that were in flight when
wrk stopped, plus a sample of duplicates, then compares the inbox with the set of sent ids.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.processes import free_port, stop, wait_ready  # noqa: E402
from wacrm.whatsapp.meta_webhook import sign  # noqa: E402

LUA = REPO / "bench" / "ingest.lua"
PATH = "/webhooks/whatsapp"
SECRET = "bench-app-secret"  # a throwaway secret for a throwaway store
VERIFY = "bench-verify-token"
PNID = "106540352242922"
CUSTOMERS = 10_000


def body_for(run: str, i: int) -> bytes:
    """One unique single-message webhook in Meta's shape (with ``user_id``, which pywa needs),
    from one of 10,000 customers, each with their own number and business-scoped user id."""
    customer = i % CUSTOMERS
    wa_id = f"1650555{customer:04d}"
    doc = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550783881",
                                "phone_number_id": PNID,
                            },
                            "contacts": [
                                {
                                    "profile": {"name": "Kerry Fisher"},
                                    "wa_id": wa_id,
                                    "user_id": f"US.{13491208655302741918 + customer}",
                                }
                            ],
                            "messages": [
                                {
                                    "from": wa_id,
                                    "id": wamid(run, i),
                                    "timestamp": "1749416383",
                                    "type": "text",
                                    "text": {"body": f"Hi, what is the price? #{i}"},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
    return orjson.dumps(doc)


def wamid(run: str, i: int) -> str:
    return f"wamid.bench.{run}.{i:08d}"


def write_bodies(path: Path, run: str, count: int) -> None:
    with path.open("wb") as out:
        for i in range(count):
            raw = body_for(run, i)
            out.write(sign(raw, SECRET).encode() + b"\t" + raw + b"\n")


@dataclass
class WrkResult:
    requests: int
    seconds: float
    non2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    sent: list[tuple[int, int]]  # (thread id, bodies used)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def run_wrk(
    url: str, bodies: Path, offset: int, threads: int, connections: int, seconds: float
) -> WrkResult:
    cmd = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        "--timeout", "10s", "-s", str(LUA), url, "--", str(bodies), str(offset), str(threads),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    out = done.stdout
    match = re.search(r"^JSON (.*)$", out, re.M)
    if match is None:
        raise SystemExit(f"wrk printed no summary:\n{out}")
    s: dict[str, Any] = json.loads(match.group(1))
    return WrkResult(
        requests=s["requests"],
        seconds=s["duration_us"] / 1e6,
        non2xx=s["non2xx"],
        socket_errors=s["connect_errors"] + s["read_errors"] + s["write_errors"] + s["timeouts"],
        p50_ms=s["p50_us"] / 1000,
        p90_ms=s["p90_us"] / 1000,
        p99_ms=s["p99_us"] / 1000,
        max_ms=s["max_us"] / 1000,
        sent=[(int(t), int(n)) for t, n in s["sent"]],
    )


def sent_indices(result: WrkResult, offset: int, threads: int, total: int) -> set[int]:
    """The body indexes wrk used: thread t sent offset+t, offset+t+T, ... (as ingest.lua)."""
    used: set[int] = set()
    for tid, count in result.sent:
        used.update((offset + tid + k * threads) % total for k in range(count))
    return used


def post(client: httpx.Client, url: str, raw: bytes) -> int:
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw, SECRET)}
    return client.post(url, content=raw, headers=headers).status_code


def fresh_database(admin_url: str, name: str) -> str:
    """An empty PostgreSQL database beside ``admin_url``'s (dropped first if left over), so
    each server measured starts from the same empty store and none sees another's rows."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from wacrm.store.engine import normalize_url

    url = make_url(normalize_url(admin_url))
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def stored_ids(database_url: str) -> list[str]:
    from sqlalchemy import select

    from wacrm.store import create_store_engine
    from wacrm.store.schema import inbox

    engine = create_store_engine(database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(inbox.c.event_id).where(inbox.c.kind == "message"))
                        .scalars())  # fmt: skip
    finally:
        engine.dispose()


def verify_exactly_once(
    url: str, database_url: str, run: str, used: set[int], duplicates: int
) -> dict[str, Any]:
    """Re-post what was in flight at wrk's stop and some duplicates; compare the inbox."""
    expected = {wamid(run, i): i for i in used}
    before = stored_ids(database_url)
    already = set(before)
    missing = [i for w, i in expected.items() if w not in already]
    dup_sample = random.Random(7).sample(sorted(used), min(duplicates, len(used)))
    with httpx.Client(timeout=10) as client:
        answers = [post(client, url, body_for(run, i)) for i in missing + dup_sample]
    after = stored_ids(database_url)
    ok = (
        all(a == 200 for a in answers)
        and len(after) == len(set(after))
        and set(after) == set(expected)
    )
    return {
        "sent": len(expected),
        "stored_after_wrk": len(before),
        "in_flight_reposted": len(missing),
        "duplicates_reposted": len(dup_sample),
        "stored": len(after),
        "unique_stored": len(set(after)),
        "exactly_once": ok,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used (Linux /proc): a figure other load on the
    machine does not inflate the way it inflates latency."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Measured:
    warm: WrkResult
    main: WrkResult
    offset: int
    cpu_us: float  # server CPU per answered webhook in the main run
    load: float  # 1-minute load average just before the main run


def measure(
    args: argparse.Namespace, cmd: list[str], env: dict[str, str], ready: str, bodies: Path
) -> tuple[subprocess.Popen[bytes], Measured]:
    """Start a server, warm it up, run wrk; the caller checks and stops the server."""
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    try:
        base = ready.split("/", 3)[:3]
        url = "/".join(base) + PATH
        wait_ready(ready, proc)
        warm = run_wrk(url, bodies, 0, args.threads, args.connections, args.warmup)
        offset = args.bodies // 5  # warm-up bodies come from the first fifth
        load = os.getloadavg()[0]
        before = cpu_seconds(proc.pid)
        main = run_wrk(url, bodies, offset, args.threads, args.connections, args.seconds)
        used = cpu_seconds(proc.pid) - before
    except BaseException:
        stop(proc)
        raise
    return proc, Measured(warm, main, offset, used * 1e6 / max(main.requests, 1), load)


def bench_wacrm(
    args: argparse.Namespace,
    work: Path,
    bodies: Path,
    run: str,
    *,
    with_workers: bool,
    fresh: bool,
) -> dict[str, Any]:
    port = free_port()
    name = "workers" if with_workers else "ingest"
    database_url = args.database_url or f"sqlite:///{work / f'bench-{name}.db'}"
    if fresh and args.database_url:
        database_url = fresh_database(args.database_url, f"wacrm_bench_{name}")
    env = {
        **os.environ,
        "WACRM_CONFIG": str(work / "absent.toml"),
        "WACRM_DATABASE_URL": database_url,
        "WACRM_PORT": str(port),
        "WACRM_WHATSAPP_APP_SECRET": SECRET,
        "WACRM_WHATSAPP_VERIFY_TOKEN": VERIFY,
        "WACRM_WHATSAPP_PHONE_NUMBER_ID": PNID,
        "WACRM_WHATSAPP_ACCESS_TOKEN": "bench-token",
        # Replies the rules send must never leave the machine: nothing listens on port 9.
        "WACRM_WHATSAPP_API_BASE_URL": "http://127.0.0.1:9",
        "WACRM_MEDIA_DIR": str(work / "media"),
    }
    if with_workers:
        wacrm = shutil.which("wacrm", path=str(Path(sys.executable).parent)) or "wacrm"
        cmd = [wacrm, "serve", "--port", str(port)]
    else:
        cmd = [sys.executable, str(REPO / "bench" / "ingest_server.py")]
    base = f"http://127.0.0.1:{port}"
    proc, m = measure(args, cmd, env, base + "/healthz", bodies)
    try:
        processing = measure_processing(database_url, args.drain) if with_workers else None
        used = sent_indices(m.warm, 0, args.threads, args.bodies)
        used |= sent_indices(m.main, m.offset, args.threads, args.bodies)
        check = verify_exactly_once(base + PATH, database_url, run, used, args.duplicates)
    finally:
        stop(proc)
    return {"m": m, "check": check, "processing": processing}


def inbox_progress(database_url: str) -> tuple[int, int]:
    """(message rows stored, message rows processed: done or quarantined)."""
    from sqlalchemy import func, select

    from wacrm.store import create_store_engine
    from wacrm.store.schema import inbox

    engine = create_store_engine(database_url)
    try:
        with engine.connect() as conn:
            query = select(func.count(), func.count().filter(inbox.c.state != "pending"))
            stored, processed = conn.execute(query.where(inbox.c.kind == "message")).one()
    finally:
        engine.dispose()
    return int(stored), int(processed)


def measure_processing(database_url: str, drain: float) -> dict[str, Any]:
    """How much the processor did during the burst, and its pace once ingest is quiet."""
    stored, at_stop = inbox_progress(database_url)
    time.sleep(drain)
    _, after = inbox_progress(database_url)
    return {"stored": stored, "at_stop": at_stop, "after": after, "drain": drain}


def bench_pywa(args: argparse.Namespace, bodies: Path) -> dict[str, Any] | None:
    try:
        import fastapi  # noqa: F401
        import pywa  # noqa: F401
    except ImportError:
        print("pywa baseline skipped: pip install 'pywa==4.5.0' fastapi", file=sys.stderr)
        return None
    port = free_port()
    env = {**os.environ, "BENCH_APP_SECRET": SECRET, "BENCH_VERIFY_TOKEN": VERIFY}
    cmd = [
        sys.executable, "-m", "uvicorn", "bench.pywa_app:app", "--port", str(port),
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "error",
        "--backlog", "2048",
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    proc, m = measure(args, cmd, env, base + "/_count", bodies)
    try:
        time.sleep(1.0)  # pywa handles after answering: let its background tasks finish
        handled = httpx.get(base + "/_count", timeout=10).json()["messages"]
    finally:
        stop(proc)
    return {"m": m, "handled": handled}


def describe(name: str, m: Measured) -> str:
    r = m.main
    return (
        f"| {name} | {r.rate:,.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.max_ms:.0f} "
        f"| {m.cpu_us:.0f} | {r.requests:,} | {r.non2xx + r.socket_errors} | {m.load:.2f} |"
    )


def report(
    args: argparse.Namespace,
    ours: dict[str, Any],
    workers: dict[str, Any] | None,
    pywa: dict[str, Any] | None,
) -> str:
    store = (
        "a SQLite file on disk, WAL, synchronous=FULL (one fsync per group commit)"
        if not args.database_url
        else "`" + re.sub(r"//[^@/]*@", "//***@", args.database_url) + "`"
    )
    lines = [
        "## Ingest",
        "",
        f"`python bench/ingest.py` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores). "
        f"wrk -t{args.threads} -c{args.connections} -d{args.seconds:g}s on the same machine, "
        f"after a {args.warmup:g} s warm-up; every request a unique, pre-signed single-message "
        f"webhook (`bench/ingest.lua` rotates them). Store: {store}. Every server is one "
        "uvicorn process with httptools + uvloop. *CPU µs* is the server's own CPU time per "
        "answered webhook; *load* the 1-minute load average before the run (the machine is "
        "shared: other work there lowers the rate and raises p99, not the CPU figure).",
        "",
        "| server | webhooks/s | p50 ms | p99 ms | max ms | CPU µs | requests | errors | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        describe("wacrm, ingest only (stored durably)", ours["m"]),
    ]
    if workers is not None:
        lines.append(describe("`wacrm serve` with its workers (processor, outboxes)", workers["m"]))
    notes = [
        "*Ingest only* is `bench/ingest_server.py`: `wacrm serve`'s app, settings and uvicorn "
        "set-up without the background workers.",
        "Both wacrm servers freeze their start-up heap (`wacrm/heap.py`): before that, each "
        "full garbage collection walked ~80,000 start-up objects for 35-50 ms and set the p99 "
        "(ingest only: 33-50 ms with the collector as it was, 8.6 ms with it disabled, both "
        "measured on 2026-11-25 with this benchmark).",
    ]
    if workers is not None:
        notes.append(
            "*With its workers*, the same process also runs the inbox processor (contact, "
            "ticket, rules, replies for every message) and the outboxes: its CPU per webhook "
            "includes that processing, which shares the GIL and SQLite's single write lock "
            "with ingest. The bench's messages are dated June 2025, outside the 24 h window, "
            "so each price reply is refused locally (131047) and runs the rules' "
            "message_failed path instead of a send: comparable work, and nothing leaves the "
            "machine."
        )
    if pywa is not None:
        lines.append(describe("pywa 4.5.0 + FastAPI (stores nothing)", pywa["m"]))
    lines += ["", *notes]
    if workers is not None and workers["processing"] is not None:
        proc = workers["processing"]
        backlog = proc["stored"] - proc["at_stop"]
        pace = (proc["after"] - proc["at_stop"]) / proc["drain"]
        lines += [
            "",
            f"Processing (with workers): when wrk stopped, {proc['at_stop']:,} of the "
            f"{proc['stored']:,} stored messages had been processed (contact, ticket, rules, "
            f"reply queued); during the burst the processor gives way to ingest (it works at "
            f"most 10 % of the time while webhooks arrive at 1,000/s, 1 % at 10,000/s). In the "
            f"{proc['drain']:g} s after, with ingest quiet, it processed {pace:,.0f} "
            f"messages/s; the backlog of {backlog:,} drains in about "
            f"{backlog / max(pace, 1e-9):,.0f} s, every message kept in the inbox meanwhile.",
        ]
    if pywa is not None:
        ratio = ours["m"].main.rate / pywa["m"].main.rate
        cpu_ratio = pywa["m"].cpu_us / max(ours["m"].cpu_us, 1e-9)
        if workers is not None:
            lines += [
                "",
                f"Ratio, `wacrm serve` with its workers / pywa: "
                f"**{workers['m'].main.rate / pywa['m'].main.rate:.1f}×** the rate.",
            ]
        lines += [
            "",
            f"Ratio, ingest only / pywa: **{ratio:.1f}×** the rate; pywa spends "
            f"**{cpu_ratio:.1f}×** the server CPU per webhook (the figure other load on the "
            "machine does not move).",
        ]
        lines.append(
            f"pywa's handler ran {pywa['handled']:,} times for {pywa['m'].main.requests:,} "
            "answered requests in the measured run (it answers 200 first, handles afterwards)."
        )
    for label, result in (("ingest only", ours), ("with workers", workers)):
        if result is None:
            continue
        c = result["check"]
        verdict = "every message stored exactly once" if c["exactly_once"] else "FAILED"
        lines.append(
            f"\nExactly-once check ({label}): {c['sent']:,} unique webhooks sent (warm-up "
            f"included), {c['stored_after_wrk']:,} in the inbox when wrk stopped, "
            f"{c['in_flight_reposted']} in flight re-posted, {c['duplicates_reposted']} "
            f"duplicates re-posted → {c['stored']:,} rows, {c['unique_stored']:,} unique: "
            f"**{verdict}**."
        )
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's ``## Ingest`` section, leaving the others alone."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(r"^## Ingest\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--bodies", type=int, default=300_000, help="unique pre-signed bodies")
    parser.add_argument("--duplicates", type=int, default=500)
    parser.add_argument("--database-url", default="", help="default: a SQLite file on disk")
    parser.add_argument("--skip-pywa", action="store_true")
    parser.add_argument(
        "--with-workers",
        action="store_true",
        help="also measure `wacrm serve` as shipped: inbox processor and outboxes running",
    )
    parser.add_argument(
        "--drain", type=float, default=10.0, help="seconds to watch processing after the burst"
    )
    parser.add_argument("--no-write", action="store_true", help="don't update BENCHMARKS.md")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    run = time.strftime("%H%M%S")
    with tempfile.TemporaryDirectory(prefix="wacrm-bench-", dir=REPO / "bench") as tmp:
        work = Path(tmp)  # on the repo's disk, not a tmpfs: fsync must mean something
        bodies = work / "bodies.txt"
        write_bodies(bodies, run, args.bodies)
        ours = bench_wacrm(args, work, bodies, run, with_workers=False, fresh=True)
        pywa = None if args.skip_pywa else bench_pywa(args, bodies)
        workers = (
            bench_wacrm(args, work, bodies, run, with_workers=True, fresh=True)
            if args.with_workers
            else None
        )
    section = report(args, ours, workers, pywa)
    print(section)
    if not args.no_write:
        write_section(REPO / "BENCHMARKS.md", section)
    checks = [ours["check"]] + ([workers["check"]] if workers else [])
    return 0 if all(c["exactly_once"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
