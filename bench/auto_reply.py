"""Auto-reply latency, end to end: a keyword webhook leaving the customer's side → the price
list's send request arriving at the Cloud API, for 10,000 messages at a steady rate.

    python bench/auto_reply.py                      # SQLite file; writes BENCHMARKS.md
    python bench/auto_reply.py --database-url sqlite \\
        --database-url postgresql://postgres@127.0.0.1:5432/test
    python bench/auto_reply.py --messages 2000 --rate 50 --no-write

Three processes on loopback, as in a deployment: ``wacrm serve`` (uvicorn, the inbox writer,
the inbox processor with the rules, the WhatsApp and CRM outbox workers, the rule timer),
the Cloud API sandbox (which also posts the ``sent``/``delivered``/``read`` status webhooks
of every reply back to the server, as Meta does), and this load generator. Every message is
a signed webhook in Meta's shape asking for the price in one of 8 languages.

A sample starts when the generator hands the request to its HTTP client (so client and
loopback time count against wacrm) and ends when the sandbox accepts the reply, which it
stamps on arrival, before answering; both clocks are this machine's. Messages go out on a
fixed schedule (open loop: a slow reply does not slow the senders), spread over several
business numbers and many senders so that neither Meta's 80 messages/s per number nor its
per-recipient pair rate is what is measured. A warm-up (default 300 messages) runs first and
is not counted.

The baselines, in the same run: the rule engine alone (matching and planning one reply) and
the in-process path without HTTP or workers (the processor's transaction for one message:
contact, message, ticket, rules, reply queued, commit).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import Engine, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.auto_reply_report import Run, notes, pct, section, write_section  # noqa: E402
from bench.processes import free_port, stop, wait_ready  # noqa: E402
from wacrm.model import MessageType  # noqa: E402
from wacrm.rules.events import ContactView, MessageEvent  # noqa: E402
from wacrm.rules.language import LanguageDetector  # noqa: E402
from wacrm.rules.loader import load_ruleset  # noqa: E402
from wacrm.rules.runtime import RuleRuntime  # noqa: E402
from wacrm.store import create_store_engine, migrate  # noqa: E402
from wacrm.store.accounts import ensure_account, register_number  # noqa: E402
from wacrm.whatsapp.meta_webhook import parse_message, sign, split_envelope  # noqa: E402
from wacrm.workers.inbound import handle_message  # noqa: E402

SECRET = "bench-app-secret"  # throwaway secrets for a throwaway store
VERIFY = "bench-verify-token"
TOKEN = "bench-access-token"
PRICE_LIST = "Starter 9.99 USD/month, Business 29 USD/month"
PATH = "/webhooks/whatsapp"
QUESTIONS = (
    "السعر؟",
    "price?",
    "how much is the business plan",
    "¿cuánto cuesta?",
    "qual o preço?",
    "c'est combien ?",
    "harganya berapa kak",
    "价格多少？",
    "कीमत क्या है?",
    "كم السعر لو سمحت",
)


def numbers(count: int) -> dict[str, str]:
    """``count`` business numbers: phone_number_id → display number."""
    return {f"1065403522{n:05d}": f"1555078{n:04d}" for n in range(count)}


def message_webhook(
    pnid: str,
    display: str,
    wa_id: str,
    wamid: str,
    question: str,
    *,
    name: str,
    user_id: str | None = None,
) -> dict[str, Any]:
    """One text message webhook in Meta's shape, sent now; ``user_id``: the sender's
    business-scoped user id (BSUID), in the message and its contact."""
    message = {
        "from": wa_id,
        "id": wamid,
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": question},
    }
    contact: dict[str, Any] = {"profile": {"name": name}, "wa_id": wa_id}
    if user_id is not None:
        message["from_user_id"] = contact["user_id"] = user_id
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": display, "phone_number_id": pnid},
        "contacts": [contact],
        "messages": [message],
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}],
    }


def webhook(pnid: str, display: str, wa_id: str, wamid: str, question: str) -> bytes:
    body = message_webhook(pnid, display, wa_id, wamid, question, name=f"Customer {wa_id[-4:]}")
    return orjson.dumps(body)


# --- the three processes --------------------------------------------------------------


def sandbox_main(config_json: str) -> None:
    """The sandbox process (``auto_reply.py --sandbox CONFIG``)."""
    import uvicorn

    from wacrm.sandbox.whatsapp import SandboxConfig, create_sandbox_app

    cfg = orjson.loads(config_json)
    port = cfg.pop("port")
    app = create_sandbox_app(SandboxConfig(**cfg))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextmanager
def _store(url: str | None, work: Path) -> Iterator[tuple[str, str]]:
    """(database URL for the server, label): a fresh SQLite file or PostgreSQL schema."""
    if url is None:
        yield f"sqlite:///{work / 'wacrm.db'}", "SQLite file (WAL, synchronous=FULL)"
        return
    admin = create_store_engine(url, poolclass=None)
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options=-csearch_path%3D{schema}", "PostgreSQL (local)"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _seed(database_url: str, served: dict[str, str]) -> None:
    """The account ``wacrm serve`` will use, with every business number routed to it."""
    engine = create_store_engine(database_url)
    try:
        migrate(engine)
        account = ensure_account(engine, "default")
        for pnid, display in served.items():
            register_number(engine, account, pnid, display_phone_number=display)
    finally:
        engine.dispose()


async def _post(http: httpx.AsyncClient, raw: bytes, sig: str) -> tuple[float, float, int]:
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sig}
    began = time.time()
    response = await http.post(PATH, content=raw, headers=headers)
    return began, time.time(), response.status_code


async def _drive(base: str, bodies: list[tuple[bytes, str]], rate: float) -> list[Any]:
    """Post ``bodies`` at ``rate`` per second on a fixed schedule; (began, answered, status)."""
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60.0) as http:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.2
        tasks = []
        for i, (raw, sig) in enumerate(bodies):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(_post(http, raw, sig)))
        return list(await asyncio.gather(*tasks))


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its children (the worker process, where there is one)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _batch(
    served: dict[str, str], prefix: str, count: int, senders: int
) -> list[tuple[str, bytes, str]]:
    """``count`` price questions from ``senders`` customers, spread over the numbers."""
    pnids = list(served)
    out = []
    for i in range(count):
        pnid = pnids[i % len(pnids)]
        wa_id = f"9665{prefix}{i % senders:07d}"
        wamid = f"wamid.{prefix}.{i}"
        raw = webhook(pnid, served[pnid], wa_id, wamid, QUESTIONS[i % len(QUESTIONS)])
        out.append((wamid, raw, sign(raw, SECRET)))
    return out


@dataclass
class Stack:
    """``wacrm serve`` and the Cloud API sandbox, each in a process of its own."""

    server: str  # base URLs
    sandbox: str
    server_proc: subprocess.Popen[bytes]


@contextmanager
def serve_with_sandbox(
    database_url: str, served: dict[str, str], work: Path, script: str
) -> Iterator[Stack]:
    """Start the sandbox (``script --sandbox CONFIG``, which calls :func:`sandbox_main`) and
    ``wacrm serve`` on ``database_url`` (sending to the sandbox, which posts its status
    webhooks back); both ready on entry, both stopped on exit."""
    server_port, sandbox_port = free_port(), free_port()
    server, sandbox = f"http://127.0.0.1:{server_port}", f"http://127.0.0.1:{sandbox_port}"
    config = {
        "port": sandbox_port,
        "access_token": TOKEN,
        "app_secret": SECRET,
        "webhook_url": server + PATH,
        "phone_numbers": served,
    }
    sandbox_proc = subprocess.Popen(
        [sys.executable, script, "--sandbox", orjson.dumps(config).decode()], cwd=REPO
    )
    env = {
        **os.environ,
        "WACRM_CONFIG": str(work / "absent.toml"),
        "WACRM_DATABASE_URL": database_url,
        "WACRM_PORT": str(server_port),
        "WACRM_WHATSAPP_APP_SECRET": SECRET,
        "WACRM_WHATSAPP_VERIFY_TOKEN": VERIFY,
        "WACRM_WHATSAPP_ACCESS_TOKEN": TOKEN,
        "WACRM_WHATSAPP_API_BASE_URL": sandbox,
        "WACRM_WHATSAPP_PHONE_NUMBER_ID": next(iter(served)),
        "WACRM_PRICE_LIST_TEXT": PRICE_LIST,
        "WACRM_MEDIA_DIR": str(work / "media"),
    }
    wacrm = Path(sys.executable).parent / "wacrm"
    server_proc = subprocess.Popen([str(wacrm), "serve"], env=env, cwd=work)
    try:
        wait_ready(sandbox + "/_sandbox/sent", sandbox_proc)
        wait_ready(server + "/healthz", server_proc, timeout=60)
        yield Stack(server, sandbox, server_proc)
    finally:
        stop(server_proc)
        stop(sandbox_proc)


def run_end_to_end(args: argparse.Namespace, url: str | None) -> Run:
    served = numbers(args.numbers)
    with (
        tempfile.TemporaryDirectory(prefix="wacrm-bench-") as tmp,
        _store(url, Path(tmp)) as (database_url, backend),
    ):
        _seed(database_url, served)
        with serve_with_sandbox(database_url, served, Path(tmp), __file__) as stack:
            run, stamps = _measure(
                args, served, stack.server, stack.sandbox, stack.server_proc.pid, backend
            )
        run.parts_ms = _parts(database_url, stamps)
        return run


def _parts(database_url: str, stamps: dict[str, tuple[float, float]]) -> dict[str, list[float]]:
    """Where each sample's time went, by the server's own clock readings: ``ingest`` until
    the webhook handler read the body (``inbox.received_at``), ``pick-up`` until the
    processor took the row (``inbox.processed_at``: group commit, wake, queueing), ``reply``
    until the send arrived (the processor's transaction and commit, the outbox's wake,
    claim and HTTP call)."""
    engine = create_store_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT event_id, received_at, processed_at FROM inbox WHERE kind='message'")
            ).all()
    finally:
        engine.dispose()
    parts: dict[str, list[float]] = {"ingest": [], "pick-up": [], "reply": []}
    for event_id, received, processed in rows:
        if event_id not in stamps or processed is None:
            continue
        began, arrived = stamps[event_id]
        received_s, processed_s = epoch(received), epoch(processed)
        parts["ingest"].append((received_s - began) * 1000)
        parts["pick-up"].append((processed_s - received_s) * 1000)
        parts["reply"].append((arrived - processed_s) * 1000)
    return parts


def epoch(value: datetime | str) -> float:
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _measure(
    args: argparse.Namespace,
    served: dict[str, str],
    server: str,
    sandbox: str,
    server_pid: int,
    backend: str,
) -> tuple[Run, dict[str, tuple[float, float]]]:
    warm = _batch(served, "1", args.warmup, max(1, args.warmup // 2))
    main = _batch(served, "2", args.messages, args.senders)
    asyncio.run(_drive(server, [(raw, sig) for _, raw, sig in warm], args.rate))
    _wait_for_replies(sandbox, len(warm), timeout=30)
    load = os.getloadavg()[0]
    cpu0, began = cpu_seconds(server_pid), time.monotonic()
    results = asyncio.run(_drive(server, [(raw, sig) for _, raw, sig in main], args.rate))
    seconds = time.monotonic() - began
    sent = _wait_for_replies(sandbox, len(warm) + len(main), timeout=60)
    cpu = cpu_seconds(server_pid) - cpu0
    arrived = {
        s["body"].get("context", {}).get("message_id"): float(s["accepted_at"]) for s in sent
    }
    samples, answered, missing = [], [], 0
    stamps: dict[str, tuple[float, float]] = {}
    for (wamid, _, _), (t0, t1, status) in zip(main, results, strict=True):
        if status != 200:
            raise SystemExit(f"webhook {wamid} answered {status}")
        answered.append((t1 - t0) * 1000)
        if wamid in arrived:
            samples.append((arrived[wamid] - t0) * 1000)
            stamps[wamid] = (t0, arrived[wamid])
        else:
            missing += 1
    run = Run(backend, args.rate, samples, answered, missing, seconds, cpu, load, {})
    return run, stamps


def _wait_for_replies(sandbox: str, count: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        sent: list[dict[str, Any]] = httpx.get(sandbox + "/_sandbox/sent", timeout=30).json()
        if len(sent) >= count or time.monotonic() > deadline:
            return sent
        time.sleep(0.5)


# --- the baselines, in process --------------------------------------------------------


def run_in_process(messages: int, url: str | None) -> list[float]:
    """The processor's transaction for one message at a time, without HTTP or workers."""
    detector = LanguageDetector()
    detector.warm_up()
    rules = RuleRuntime(load_ruleset(), values={"price_list": PRICE_LIST}, detector=detector)
    served = numbers(1)
    samples = []
    with (
        tempfile.TemporaryDirectory(prefix="wacrm-bench-") as tmp,
        _store(url, Path(tmp)) as (
            database_url,
            _,
        ),
    ):
        _seed(database_url, served)
        engine: Engine = create_store_engine(database_url)
        account = ensure_account(engine, "default")
        for _wamid, raw, _ in _batch(served, "3", messages, max(1, messages // 5)):
            (event,) = split_envelope(orjson.loads(raw))
            t0 = time.perf_counter_ns()
            message = parse_message(event.payload)
            now = datetime.now(UTC)
            with engine.begin() as conn:
                outcome = handle_message(
                    conn,
                    account_id=account,
                    message=message,
                    raw=event.payload["message"],
                    now=now,
                )
                rules.on_message(
                    conn,
                    account_id=account,
                    contact_id=outcome.contact_id,
                    message=message,
                    message_row_id=outcome.message_id,
                    now=now,
                    opened_ticket_id=outcome.ticket_id,
                )
            samples.append((time.perf_counter_ns() - t0) / 1e6)
        engine.dispose()
    return samples


def engine_only(rounds: int = 10_000) -> list[float]:
    """The pure engine on one message: matching every keyword rule, planning the reply (µs)."""
    rules = RuleRuntime(load_ruleset(), values={"price_list": PRICE_LIST})
    now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    contact = ContactView(id=1, phone="+966501234567", language="ar", last_inbound_at=now)
    out = []
    for i in range(rounds):
        at = now + timedelta(seconds=i)
        event = MessageEvent(f"wamid.{i}", MessageType.TEXT, QUESTIONS[i % len(QUESTIONS)], at)
        t0 = time.perf_counter_ns()
        rules.engine.evaluate(event, contact, now)
        out.append((time.perf_counter_ns() - t0) / 1e3)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--sandbox"]:
        sandbox_main(argv[1])
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=20.0, help="questions per second")
    parser.add_argument("--numbers", type=int, default=4, help="business phone_number_ids")
    parser.add_argument("--senders", type=int, default=2_000, help="distinct customers")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument(
        "--database-url",
        action="append",
        help="store(s) to use, repeatable; 'sqlite' is a fresh SQLite file (the default)",
    )
    parser.add_argument("--no-write", action="store_true", help="don't update BENCHMARKS.md")
    args = parser.parse_args(argv)
    urls = [None if u == "sqlite" else u for u in (args.database_url or ["sqlite"])]
    runs = [run_end_to_end(args, url) for url in urls]
    inproc = run_in_process(2_000, urls[0])
    text_ = section(runs, args, inproc, engine_only())
    print(text_)
    for r in runs:
        if r.missing:
            print(f"{r.backend}: {r.missing} replies never arrived", file=sys.stderr)
    if not args.no_write:
        path = REPO / "BENCHMARKS.md"
        write_section(path, text_, notes(path))
    worst = max(pct(r.samples_ms, 99) for r in runs)
    return 0 if worst < 50 and not any(r.missing for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
