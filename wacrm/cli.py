"""The ``wacrm`` command. Each subcommand is a thin shell over a function in its room;
user mistakes end as one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import sys
from typing import Any

import click

from wacrm import __version__
from wacrm.cli_support import UsageError, settings_from, user_errors

__all__ = ["UsageError", "cli", "main", "settings_from", "user_errors"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wacrm")
def cli() -> None:
    """WhatsApp Business Platform connector for CRMs."""


# --- subcommands are added below, one block per room -------------------------------------


# server: uvicorn and starlette are imported inside the command, not at `wacrm --help`.
@cli.command()
@click.option("--host", default=None, help="Address to listen on; default: WACRM_HOST.")
@click.option("--port", type=int, default=None, help="Port to listen on; default: WACRM_PORT.")
@click.option(
    "--workers",
    "processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Server processes (each reads its settings from the environment).",
)
@click.option(
    "--inline-workers",
    is_flag=True,
    help="Run the background workers inside the server process (always so on SQLite).",
)
@click.pass_context
@user_errors
def serve(
    ctx: click.Context, host: str | None, port: int | None, processes: int, inline_workers: bool
) -> None:
    """Receive WhatsApp webhooks, store them durably, and run the background workers (inbox,
    rules, WhatsApp and CRM outboxes, media, sync): on PostgreSQL in a supervised worker
    process of their own, on SQLite inside the server process."""
    from dataclasses import replace

    from wacrm.server.runtime import serve as run_server

    settings = settings_from(ctx)
    settings = replace(
        settings,
        host=host if host is not None else settings.host,
        port=port if port is not None else settings.port,
    )
    run_server(settings, processes=processes, inline_workers=inline_workers)


@cli.command()
@click.option(
    "--wake-fd",
    type=int,
    default=None,
    hidden=True,
    help="UDP socket inherited from `wacrm serve` for new-work wake-ups.",
)
@click.pass_context
@user_errors
def worker(ctx: click.Context, wake_fd: int | None) -> None:
    """Run the background workers only (`wacrm serve` starts this for you)."""
    from wacrm.server.runtime import run_worker_process

    run_worker_process(settings_from(ctx), wake_fd)


# phone: imports stay inside the commands so `wacrm --help` does not load phonenumbers.
@cli.group()
def phone() -> None:
    """Phone numbers: normalise to E.164."""


@phone.command("normalize")
@click.argument("number", nargs=-1, required=True)
@click.option(
    "--region",
    metavar="CC",
    help="Region (ISO 3166, e.g. GB) for national numbers; default: WACRM_DEFAULT_REGION.",
)
@click.option(
    "--wa-id", "wa_id", is_flag=True, help="NUMBER is a WhatsApp id: country code and digits."
)
@click.pass_context
def phone_normalize(
    ctx: click.Context, number: tuple[str, ...], region: str | None, wa_id: bool
) -> None:
    """Print NUMBER in E.164 form, or say why it is not a valid number."""
    from wacrm.phone import PhoneError, check_region, normalize, normalize_wa_id

    raw = " ".join(number)  # `wacrm phone normalize +44 20 7946 0018` needs no quotes

    if region is not None:
        try:
            region = check_region(region)
        except PhoneError as exc:
            raise UsageError(f"--region {exc}") from None
    elif not wa_id:
        setting = settings_from(ctx).default_region
        try:
            region = check_region(setting)
        except PhoneError as exc:
            raise UsageError(f"default_region setting (WACRM_DEFAULT_REGION) {exc}") from None
    try:
        click.echo(normalize_wa_id(raw) if wa_id else normalize(raw, region))
    except PhoneError as exc:
        raise UsageError(str(exc)) from None


# export
@cli.command("export")
@click.argument("obj", metavar="contacts|messages|tickets|tasks")
@click.option("--format", "fmt", default="jsonl", show_default=True, help="Output format.")
@click.option("--account", metavar="NAME", help="Export only this account (default: all).")
@click.pass_context
@user_errors
def export_cmd(ctx: click.Context, obj: str, fmt: str, account: str | None) -> None:
    """Print the store's contacts, messages, tickets or tasks, one JSON object per line."""
    import os

    from sqlalchemy.exc import OperationalError

    from wacrm.export import FORMATS, ExportError, export_rows, write_jsonl
    from wacrm.store import create_store_engine, migrate

    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    engine = create_store_engine(settings_from(ctx).database_url)
    out = sys.stdout.buffer
    try:
        migrate(engine)
        write_jsonl(export_rows(engine, obj, account), out)
        out.flush()
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "unreachable"
        raise UsageError(f"cannot read the store: {reason}") from None
    except BrokenPipeError:
        # The reader (e.g. `| head`) has gone: stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        engine.dispose()


# sandbox (WhatsApp): the `sandbox` group is shared with the CRM simulators, so it is found
# or created here rather than declared twice.
def _sandbox_cli_group() -> click.Group:
    existing = cli.commands.get("sandbox")
    if isinstance(existing, click.Group):
        return existing
    group = click.Group("sandbox", help="Run local simulators of the provider APIs.")
    cli.add_command(group)
    return group


@_sandbox_cli_group().command("whatsapp")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8081, show_default=True, help="Port to listen on.")
@click.option("--webhook-url", metavar="URL", help="Where to post signed status webhooks.")
@click.option(
    "--enforce-window/--no-enforce-window",
    default=False,
    show_default=True,
    help="Fail free-form sends (131047) to users who have not written in 24 h.",
)
@click.pass_context
@user_errors
def sandbox_whatsapp(
    ctx: click.Context, host: str, port: int, webhook_url: str | None, enforce_window: bool
) -> None:
    """Run a local WhatsApp Cloud API (send endpoint + status webhooks)."""
    from wacrm.sandbox.whatsapp import (
        DEFAULT_DISPLAY_NUMBER,
        DEFAULT_PHONE_NUMBER_ID,
        SandboxConfig,
        serve_sandbox,
    )

    settings = settings_from(ctx)
    missing = [
        name
        for name, value in (
            ("WACRM_WHATSAPP_ACCESS_TOKEN", settings.whatsapp_access_token),
            ("WACRM_WHATSAPP_APP_SECRET", settings.whatsapp_app_secret),
        )
        if not value
    ]
    if missing:
        raise UsageError(f"set {' and '.join(missing)}: the sandbox checks and signs with them")
    pnid = settings.whatsapp_phone_number_id or DEFAULT_PHONE_NUMBER_ID
    numbers = {pnid: settings.whatsapp_display_phone_number or DEFAULT_DISPLAY_NUMBER}
    config = SandboxConfig(
        access_token=settings.whatsapp_access_token.reveal(),
        app_secret=settings.whatsapp_app_secret.reveal(),
        webhook_url=webhook_url,
        phone_numbers=numbers,
        enforce_window=enforce_window,
    )
    base = f"http://{host}:{port}"
    click.echo(f"WhatsApp sandbox on {base}")
    click.echo(f"  export WACRM_WHATSAPP_API_BASE_URL={base}")
    click.echo(f"  phone number ids: {', '.join(config.phone_numbers)}")
    click.echo(f"  status webhooks: {webhook_url or 'off (no --webhook-url)'}")
    serve_sandbox(config, host=host, port=port)


# send (WhatsApp outbox): one message now, stored so its status webhooks find it.
@cli.command("send")
@click.option("--to", "to", required=True, metavar="+E164", help="Recipient, with country code.")
@click.option("--text", help="Free-form text (only within 24 h of the user's last message).")
@click.option("--template", metavar="NAME", help="An approved template.")
@click.option(
    "--lang",
    help="Template language code (e.g. es, pt_BR); default: the contact's language "
    "preference, else en_US.",
)
@click.option("--param", "params", multiple=True, help="Template body parameter, in order.")
@click.option("--media", metavar="FILE_OR_URL", help="A file to upload, or a public URL.")
@click.option("--caption", help="Caption for --media.")
@click.option(
    "--provider",
    type=click.Choice(["meta", "twilio"]),
    help="Which provider sends, when both Meta and Twilio are configured.",
)
@click.option(
    "--from",
    "from_number",
    metavar="+E164",
    help="Twilio WhatsApp sender to send from; default: WACRM_TWILIO_FROM_NUMBER.",
)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to try.")
@click.pass_context
@user_errors
def send_cmd(
    ctx: click.Context,
    to: str,
    text: str | None,
    template: str | None,
    lang: str | None,
    params: tuple[str, ...],
    media: str | None,
    caption: str | None,
    provider: str | None,
    from_number: str | None,
    timeout: float,
) -> None:
    """Send a WhatsApp message through the configured provider (Meta Cloud API or Twilio)
    and print its provider message id (wamid or Twilio SM… sid)."""
    import logging

    import httpx

    from wacrm.server.runtime import ensure_default_account, open_store
    from wacrm.store.accounts import register_number
    from wacrm.whatsapp.content_policy import ContentPolicy, blocking, lint_send_body
    from wacrm.whatsapp.meta_send import CloudApiClient, SendError
    from wacrm.whatsapp.template_language import template_language
    from wacrm.whatsapp.twilio_send import TwilioSender
    from wacrm.workers.whatsapp_send import (
        build_body,
        check_sendable,
        choose_route,
        contact_language,
        local_media,
        local_media_findings,
        recipient_e164,
        send_now,
    )

    # The outcome is printed once at the end; the worker's per-try warnings would repeat it.
    logging.getLogger("wacrm.workers.whatsapp_outbox").setLevel(logging.ERROR)
    settings = settings_from(ctx)
    try:
        route = choose_route(settings, provider, from_number)
        to = recipient_e164(to, settings.default_region)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    content_policy = ContentPolicy.from_settings(settings)
    # A file Meta would refuse (size, type) is refused before it is uploaded.
    refused = blocking(local_media_findings(media, content_policy), content_policy)
    if refused:
        raise UsageError(
            "refused by the content policy: " + "; ".join(f"{f.code}: {f.message}" for f in refused)
        )
    engine = open_store(settings)
    try:
        account_id = ensure_default_account(engine, settings)
        if template is not None and lang is None:
            preference = contact_language(engine, account_id, to)
            lang = template_language(preference, "en_US")
            if preference:
                click.echo(f"wacrm: template language {lang} (the contact's preference)", err=True)
        if route.provider == "twilio":
            try:
                register_number(engine, account_id, route.phone_number_id, provider="twilio")
            except ValueError as exc:
                raise UsageError(f"--from {route.phone_number_id}: {exc}") from None
        with httpx.Client(timeout=30.0) as http:
            meta = CloudApiClient(settings, http=http) if route.provider == "meta" else None
            twilio = TwilioSender.from_settings(http, settings) if meta is None else None
            try:
                body, stored_text = build_body(
                    to,
                    client=meta,
                    phone_number_id=route.phone_number_id,
                    text=text,
                    template=template,
                    language=lang or "en_US",
                    params=params,
                    media=media,
                    caption=caption,
                )
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            except SendError as exc:
                raise click.ClickException(f"media upload failed: {exc.summary}") from None
            size, mime = local_media(media)
            findings = lint_send_body(body, content_policy, media_size=size, media_mime=mime)
            refused = blocking(findings, content_policy)
            if refused:
                raise UsageError(
                    "refused by the content policy: "
                    + "; ".join(f"{f.code}: {f.message}" for f in refused)
                )
            # Then what the route's provider cannot take (Twilio: no Content SID, a Body over
            # 1,600 characters…), after the content policy, in the outbox worker's order.
            try:
                check_sendable(route, body, settings)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            for finding in findings:
                click.echo(f"wacrm: warning: {finding.code}: {finding.message}", err=True)
            outcome = send_now(
                engine,
                settings,
                meta,
                body,
                account_id=account_id,
                phone_number_id=route.phone_number_id,
                twilio=twilio,
                provider=route.provider,
                text=stored_text,
                timeout=timeout,
            )
    finally:
        engine.dispose()
    if outcome.state == "sent" and outcome.provider_message_id:
        click.echo(outcome.provider_message_id)
        return
    if outcome.state == "failed":
        raise click.ClickException(f"not sent: {outcome.error}")
    raise click.ClickException(
        f"not sent yet: {outcome.error}; message {outcome.message_id} stays queued, and the "
        "server's outbox worker (wacrm serve) sends it when it can"
    )


# rules: the engine and lingua load inside the commands, not at `wacrm --help`.
@cli.group()
def rules() -> None:
    """Tagging and auto-reply rules: check files, try a message."""


def _load_rules(ctx: click.Context, directory: str | None) -> Any:
    from wacrm.rules.loader import load_rules, load_ruleset
    from wacrm.rules.schema import RuleFileError

    try:
        if directory is not None:
            return load_rules([directory])
        return load_ruleset(settings_from(ctx).rules_dir or None)
    except RuleFileError as exc:
        raise UsageError(str(exc)) from None


@rules.command("check")
@click.argument("directory", required=False, metavar="[DIR]")
@click.pass_context
def rules_check(ctx: click.Context, directory: str | None) -> None:
    """Validate rule files and list their rules (default: shipped rules + WACRM_RULES_DIR)."""
    from wacrm.rules.checks import reply_texts
    from wacrm.rules.report import check_lines
    from wacrm.whatsapp.lint_command import lint_rule_texts

    ruleset = _load_rules(ctx, directory)
    for line in check_lines(ruleset):
        click.echo(line)
    settings = settings_from(ctx)  # auto-reply texts go through the content policy too
    lint_rule_texts(reply_texts(ruleset, {"price_list": settings.price_list_text}), settings)


@rules.command("test")
@click.option("--phone", required=True, help="The sender, e.g. +966501234567.")
@click.option("--message", required=True, help="The message text.")
@click.option("--type", "message_type", default="text", show_default=True, help="Message type.")
@click.option("--language", help="The contact's language (default: detect from the message).")
@click.option("--unread", default=1, show_default=True, type=click.IntRange(min=0))
@click.option("--dir", "directory", help="Rule directory to use instead of the configured rules.")
@click.pass_context
def rules_test(
    ctx: click.Context,
    phone: str,
    message: str,
    message_type: str,
    language: str | None,
    unread: int,
    directory: str | None,
) -> None:
    """Show which rules a message would fire, in order, and what each would do (changes
    nothing)."""
    from datetime import UTC, datetime

    from wacrm.model import MessageType
    from wacrm.phone import PhoneError, normalize
    from wacrm.rules.language import LanguageDetector
    from wacrm.rules.report import trial, trial_lines

    settings = settings_from(ctx)
    try:
        e164 = normalize(phone, settings.default_region or None)
    except PhoneError as exc:
        raise UsageError(f"--phone {exc}") from None
    mtype = MessageType.parse(message_type.lower())
    if mtype is MessageType.UNKNOWN and message_type.lower() != "unknown":
        raise UsageError(f"--type {message_type!r} is not a WhatsApp message type")
    ruleset = _load_rules(ctx, directory)
    result = trial(
        ruleset,
        phone=e164,
        message=message,
        message_type=mtype,
        now=datetime.now(UTC),
        values={"price_list": settings.price_list_text},
        language=language,
        detector=None if language else LanguageDetector(),
        unread=unread,
    )
    for line in trial_lines(result):
        click.echo(line)


# sync: both directions between the store and each account's CRM.
def _sync_target(simulator: str | None, max_batch: int, rate: str, timeout: float) -> Any:
    from wacrm.sync.commands import SimulatorTarget, parse_rate

    if simulator is None:
        return None
    try:
        return SimulatorTarget(simulator, max_batch, parse_rate(rate), timeout)
    except ValueError as exc:
        raise UsageError(f"--rate-limit: {exc}") from None


@cli.group(invoke_without_command=True)
@click.option("--once", is_flag=True, help="Run one sync (both directions) and exit.")
@click.option("--simulator", metavar="URL", help="Sync every account against the CRM simulator.")
@click.option(
    "--max-batch",
    default=100,
    show_default=True,
    type=click.IntRange(min=1),
    help="The simulator's batch maximum.",
)
@click.option(
    "--rate-limit",
    "rate",
    default="110/10",
    show_default=True,
    metavar="N/S",
    help="The simulator's rate limit: N requests per S seconds.",
)
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Seconds to wait for one CRM answer.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Draw a progress bar (default: when the output is a terminal).",
)
@click.pass_context
@user_errors
def sync(
    ctx: click.Context,
    once: bool,
    simulator: str | None,
    max_batch: int,
    rate: str,
    timeout: float,
    progress: bool | None,
) -> None:
    """Sync contacts, tickets and tasks with the CRM: `--once`, or loop until interrupted."""
    if ctx.invoked_subcommand is not None:
        return
    import asyncio
    import contextlib

    from rich.console import Console

    from wacrm.store import create_store_engine, migrate
    from wacrm.sync.commands import build_sync, report_lines, run_once

    target = _sync_target(simulator, max_batch, rate, timeout)
    engine = create_store_engine(settings_from(ctx).database_url)
    try:
        migrate(engine)
        if once:
            console = Console(stderr=True)
            draw = console.is_terminal if progress is None else progress
            report = run_once(engine, target, console if draw else None)
            for line in report_lines(report):
                click.echo(line)
            if report.errors:
                ctx.exit(1)
            return
        from wacrm.sync.worker import SyncWorker

        worker = SyncWorker(build_sync(engine, target))
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(worker.run(asyncio.Event()))
    finally:
        engine.dispose()


@sync.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_context
@user_errors
def sync_status_cmd(ctx: click.Context, as_json: bool) -> None:
    """Cursors, queue depth, last errors and dead letters."""
    from datetime import UTC, datetime

    from rich.console import Console

    from wacrm.store import create_store_engine, migrate
    from wacrm.sync.commands import status_tables
    from wacrm.sync.status import sync_status

    engine = create_store_engine(settings_from(ctx).database_url)
    try:
        migrate(engine)
        status = sync_status(engine, datetime.now(UTC))
    finally:
        engine.dispose()
    if as_json:
        click.echo(status.to_json())
        return
    console = Console()
    for table in status_tables(status):
        console.print(table)


@_sandbox_cli_group().command("crm")
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address.")
@click.option("--port", type=int, default=8082, show_default=True, help="Port to listen on.")
@click.option("--max-batch", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--rate-limit", "rate", default="110/10", show_default=True, metavar="N/S")
@click.option(
    "--fault-rate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of calls answered 429/500/503, timed out or reset.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the fault generator.")
@click.option("--webhook-url", metavar="URL", help="Where to post change webhooks.")
@click.option(
    "--client-secret",
    envvar="WACRM_CRM_WEBHOOK_SECRET",
    default="",
    show_default=False,
    metavar="SECRET",
    help="The CRM app's client secret: sign change webhooks with X-HubSpot-Signature-v3 "
    "(default: $WACRM_CRM_WEBHOOK_SECRET, as `wacrm serve` reads it).",
)
@click.option(
    "--portal-id",
    envvar="WACRM_CRM_TENANT",
    default=62515,
    show_default=True,
    type=click.IntRange(min=1),
    help="The portal id the change events carry (default: $WACRM_CRM_TENANT).",
)
def sandbox_crm(
    host: str,
    port: int,
    max_batch: int,
    rate: str,
    fault_rate: float,
    seed: int,
    webhook_url: str | None,
    client_secret: str,
    portal_id: int,
) -> None:
    """Run the HubSpot-like CRM simulator (batch upsert, search, 429s, faults, webhooks)."""
    from wacrm.sandbox.crm_app import main as simulator_main
    from wacrm.sync.commands import parse_rate

    try:
        limit = parse_rate(rate)
    except ValueError as exc:
        raise UsageError(f"--rate-limit: {exc}") from None
    argv = [
        "--host",
        host,
        "--port",
        str(port),
        "--max-batch",
        str(max_batch),
        "--rate-limit",
        str(limit.requests),
        "--window",
        str(limit.per_seconds),
        "--fault-rate",
        str(fault_rate),
        "--seed",
        str(seed),
        "--portal-id",
        str(portal_id),
    ]
    if client_secret:
        argv += ["--client-secret", client_secret]
    simulator_main(argv + (["--webhook-url", webhook_url] if webhook_url else []))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for every message to pass.",
)
@user_errors
def demo(as_json: bool, timeout: float) -> None:
    """Send the five test messages through the whole path on loopback; exit 0 only if all pass."""
    from wacrm.demo import render_table, run_demo

    checks = run_demo(timeout=timeout)
    passed = sum(c.passed for c in checks)
    if as_json:
        import orjson

        click.echo(
            orjson.dumps(
                {"passed": passed, "total": len(checks), "messages": [c.as_dict() for c in checks]}
            ).decode()
        )
    else:
        from rich.console import Console

        console = Console()
        if not console.is_terminal:  # piped or in CI: don't squeeze the table into 80 columns
            console = Console(width=140)
        console.print(render_table(checks))
        console.print(f"{passed}/{len(checks)} passed")
    if passed != len(checks):
        sys.exit(1)


# media: inbound attachments fetched by the media worker (wacrm.workers.media).
@cli.group()
def media() -> None:
    """Inbound attachments: what is stored, pending or failed; retry the failed."""


def _media_store(ctx: click.Context) -> Any:
    from wacrm.store import create_store_engine, migrate

    engine = create_store_engine(settings_from(ctx).database_url)
    migrate(engine)
    return engine


@media.command("status")
@click.pass_context
@user_errors
def media_status(ctx: click.Context) -> None:
    """Count attachments by state."""
    from wacrm.workers.media import media_states

    engine = _media_store(ctx)
    try:
        states = media_states(engine)
    finally:
        engine.dispose()
    for state in ("stored", "pending", "failed"):
        click.echo(f"{state}: {states.pop(state, 0)}")
    for state, count in sorted(states.items()):
        click.echo(f"{state}: {count}")


@media.command("retry")
@click.pass_context
@user_errors
def media_retry(ctx: click.Context) -> None:
    """Queue every failed attachment again (the running server's media worker fetches it)."""
    from datetime import UTC, datetime

    from wacrm.workers.media import retry_failed

    engine = _media_store(ctx)
    try:
        count = retry_failed(engine, datetime.now(UTC))
    finally:
        engine.dispose()
    click.echo(f"{count} failed attachment(s) queued again")


# Commands defined in their own room's module, each registered on one line here.
# (helpers: add your `cli.add_command(...)` line directly below your marker, nowhere else)
# [lint]
from wacrm.whatsapp.lint_command import lint_cmd  # noqa: E402

cli.add_command(lint_cmd)
# [hooks]
from wacrm.hooks.cli import hooks_group  # noqa: E402

cli.add_command(hooks_group)
# [crm-webhooks]
from wacrm.store.secrets_cli import secrets_group  # noqa: E402

cli.add_command(secrets_group)
# [numbers]
from wacrm.store.numbers_cli import numbers_group  # noqa: E402

cli.add_command(numbers_group)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="wacrm", standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
