"""The ``## Auto-reply latency`` section of BENCHMARKS.md, from ``bench/auto_reply.py``'s runs."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

SECTION = "## Auto-reply latency"


@dataclass
class Run:
    backend: str
    rate: float
    samples_ms: list[float]  # webhook handed to the client → reply arrived at the Cloud API
    answered_ms: list[float]  # webhook handed to the client → its 200 received
    missing: int  # messages whose reply never arrived
    seconds: float  # sending time of the measured messages
    server_cpu: float  # CPU seconds the server process used while measuring
    load: float  # the machine's 1-minute load average when the run began
    parts_ms: dict[str, list[float]]  # the samples cut at the server's own timestamps


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def section(
    runs: list[Run], args: argparse.Namespace, inproc: list[float], eng: list[float]
) -> str:
    lines = [
        SECTION,
        "",
        "`python bench/auto_reply.py` — keyword auto-reply, end to end: a signed webhook",
        "handed to the load generator's HTTP client → the price list's send request arriving",
        "at the Cloud API sandbox. Three programs on loopback: `wacrm serve` (the webhook",
        "server and inbox writer; the inbox processor with the rules engine, the WhatsApp",
        "outbox, the sync loop, the media fetcher and the rule timer run in the same process",
        "on SQLite and in its worker process on PostgreSQL), the sandbox (which posts the",
        "sent/delivered/read status webhooks of every reply back, so the server takes 4",
        "webhooks per question), and the",
        f"generator: {args.messages:,} price questions in 8 languages at a fixed {args.rate:g}/s",
        f"from {args.senders:,} customers to {args.numbers} business numbers, after a",
        f"{args.warmup}-message warm-up. 2 cores (shared by all three and the database),",
        "24 GiB; `server CPU` counts the worker process too; `load` is the machine's load",
        "average when the measured part began (the machine is shared with other work).",
        "",
        "| store | replies | p50 | p90 | p99 | max | webhook 200 p50 / p99 | server CPU | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        s = r.samples_ms
        lines.append(
            f"| {r.backend} | {len(s):,} of {len(s) + r.missing:,} | {pct(s, 50):.1f} ms | "
            f"{pct(s, 90):.1f} ms | {pct(s, 99):.1f} ms | {max(s):.1f} ms | "
            f"{pct(r.answered_ms, 50):.1f} / {pct(r.answered_ms, 99):.1f} ms | "
            f"{r.server_cpu / r.seconds:.0%} of a core | {r.load:.1f} |"
        )
    lines += [
        "",
        "Where the time goes (p50 / p99, cut at the server's own clock readings): "
        + "; ".join(
            f"{r.backend.split(' ')[0]}: "
            + ", ".join(
                f"{name} {pct(v, 50):.1f} / {pct(v, 99):.1f} ms"
                for name, v in r.parts_ms.items()
                if v
            )
            for r in runs
        )
        + ". `ingest`: client, loopback and HTTP parsing until the handler has the body; "
        "`pick-up`: the inbox's group commit, the processor's wake-up and any queue in front "
        "of it; `reply`: the processor's transaction (rules included) and commit, the hand-over "
        "to the sender, its HTTP call and the sandbox reading the request.",
        "",
        "Baselines from the same run, in process (no HTTP, no workers, nothing else running):",
        f"the processor's transaction for one message (contact, message, ticket, rules, reply "
        f"queued, commit) p50 {pct(inproc, 50):.2f} ms, p99 {pct(inproc, 99):.2f} ms "
        f"({runs[0].backend.split(' ')[0]}); the rule engine alone (matching all rules, "
        f"planning the reply) p50 {pct(eng, 50):.0f} µs, p99 {pct(eng, 99):.0f} µs.",
    ]
    return "\n".join(lines)


def write_section(path: Path, text_: str, notes: str) -> None:
    """Replace this benchmark's section of BENCHMARKS.md (keeping its hand-written notes,
    which start at ``### ``), leaving the other sections alone."""
    current = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.M | re.S)
    block = text_ + ("\n\n" + notes.strip() if notes.strip() else "") + "\n\n"
    if pattern.search(current):
        current = pattern.sub(lambda _m: block, current, count=1)
    else:
        current = current.rstrip("\n") + "\n\n" + block
    path.write_text(current.rstrip("\n") + "\n", encoding="utf-8")


def notes(path: Path) -> str:
    """The hand-written part of the section: from its first ``### `` heading on."""
    if not path.exists():
        return ""
    found = re.search(
        rf"^{re.escape(SECTION)}\n.*?(^### .*?)(?=^## |\Z)", path.read_text("utf-8"), re.M | re.S
    )
    return found.group(1) if found else ""
