"""``wacrm hooks``: REST-hook subscriptions and their deliveries, for the account
``WACRM_ACCOUNT_NAME``. The running server's hook worker does the sending.

Imports of the store and the rules stay inside the commands: ``wacrm --help`` loads none.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click

from wacrm.cli_support import UsageError, settings_from, user_errors

_STATES = ("pending", "delivered", "dead")


@click.group("hooks")
def hooks_group() -> None:
    """REST hooks: subscribe URLs to rule events; see and retry deliveries."""


@contextmanager
def _store(ctx: click.Context) -> Iterator[tuple[Any, int]]:
    """The migrated store and the id of the configured account."""
    from wacrm.store import create_store_engine, migrate
    from wacrm.store.accounts import ensure_account

    settings = settings_from(ctx)
    engine = create_store_engine(settings.database_url)
    try:
        migrate(engine)
        yield engine, ensure_account(engine, settings.account_name)
    finally:
        engine.dispose()


def _whole_number(raw: str, what: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise UsageError(f"{what} must be a whole number, got {raw!r}")
    return int(raw)


def _json(value: Any) -> None:
    import orjson

    click.echo(orjson.dumps(value).decode())


@hooks_group.command("add")
@click.argument("event")
@click.argument("url")
@click.pass_context
@user_errors
def hooks_add(ctx: click.Context, event: str, url: str) -> None:
    """Send rule event EVENT (or '*' for all) to URL, signed with a new secret (stored
    sealed with WACRM_SECRET_KEY, or the key file beside a SQLite store). URL must be https
    on a public address, unless WACRM_HOOKS_ALLOW_PRIVATE_TARGETS is true."""
    from wacrm.hooks.subscriptions import HookError, emitted_events, subscribe
    from wacrm.rules.loader import load_ruleset
    from wacrm.rules.schema import RuleFileError
    from wacrm.store.secrets import SecretBox

    settings = settings_from(ctx)
    try:
        known = emitted_events(load_ruleset(settings.rules_dir or None))
    except RuleFileError as exc:
        raise UsageError(f"rules: {exc}") from None
    box = SecretBox.from_settings(settings)
    box.ready()  # a missing or bad key: one error line, exit 2, before the store is touched
    with _store(ctx) as (engine, account_id):
        try:
            new = subscribe(
                engine,
                account_id,
                event,
                url,
                datetime.now(UTC),
                box=box,
                known_events=known,
                allow_private=settings.hooks_allow_private_targets,
            )
        except HookError as exc:
            raise UsageError(str(exc)) from None
    sub = new.subscription
    click.echo(f"subscription {sub.id}: {sub.event} -> {sub.target_url}")
    # The one time the secret is shown: receivers verify X-Wacrm-Signature with it.
    click.echo(f"secret: {new.secret.reveal()}")
    click.echo("(shown once: keep it to verify X-Wacrm-Signature)")


@hooks_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of lines.")
@click.pass_context
@user_errors
def hooks_list(ctx: click.Context, as_json: bool) -> None:
    """The subscriptions (without their secrets); a disabled one with its reason."""
    from wacrm.hooks.subscriptions import list_subscriptions

    with _store(ctx) as (engine, account_id):
        subs = list_subscriptions(engine, account_id)
    if as_json:
        _json({"hooks": [s.as_dict() for s in subs]})
        return
    if not subs:
        click.echo("no subscriptions")
    for s in subs:
        reason = f" ({s.disabled_reason})" if s.disabled_reason else ""
        click.echo(f"{s.id}\t{s.state}{reason}\t{s.event}\t{s.target_url}")


@hooks_group.command("remove")
@click.argument("subscription_id", metavar="ID")
@click.pass_context
@user_errors
def hooks_remove(ctx: click.Context, subscription_id: str) -> None:
    """Remove subscription ID and its deliveries."""
    from wacrm.hooks.subscriptions import unsubscribe

    sub_id = _whole_number(subscription_id, "subscription ID")
    with _store(ctx) as (engine, account_id):
        if not unsubscribe(engine, account_id, sub_id):
            raise UsageError(f"no subscription {sub_id}")
    click.echo(f"subscription {sub_id} removed")


@hooks_group.command("deliveries")
@click.option("--state", metavar="STATE", help="Only pending, delivered or dead ones.")
@click.option("--subscription", "subscription_id", metavar="ID", help="Only this one's.")
@click.option("--limit", default="50", show_default=True, metavar="N", help="At most N.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of lines.")
@click.pass_context
@user_errors
def hooks_deliveries(
    ctx: click.Context,
    state: str | None,
    subscription_id: str | None,
    limit: str,
    as_json: bool,
) -> None:
    """Recent deliveries, newest first: state, attempts, last status and error."""
    from wacrm.hooks.delivery import list_deliveries

    if state is not None and state not in _STATES:
        raise UsageError(f"--state must be one of {', '.join(_STATES)}, got {state!r}")
    sub_id = None if subscription_id is None else _whole_number(subscription_id, "--subscription")
    count = _whole_number(limit, "--limit")
    if count < 1:
        raise UsageError(f"--limit must be at least 1, got {limit!r}")
    with _store(ctx) as (engine, account_id):
        rows = list_deliveries(engine, account_id, subscription_id=sub_id, state=state, limit=count)
    if as_json:
        _json({"deliveries": rows})
        return
    if not rows:
        click.echo("no deliveries")
    for r in rows:
        status = r["last_status"] if r["last_status"] is not None else "-"
        line = (
            f"{r['id']}\t{r['state']}\tsubscription {r['subscription_id']}\t"
            f"event {r['event_id']} {r['event']}\tattempts {r['attempts']}\tstatus {status}"
        )
        click.echo(line + (f"\t{r['last_error']}" if r["last_error"] else ""))


@hooks_group.command("retry")
@click.argument("delivery_id", metavar="ID", required=False)
@click.option("--dead", "all_dead", is_flag=True, help="Every dead delivery.")
@click.pass_context
@user_errors
def hooks_retry(ctx: click.Context, delivery_id: str | None, all_dead: bool) -> None:
    """Queue dead delivery ID (or, with --dead, all of them) again, with fresh bounds.
    Deliveries of a disabled subscription stay dead."""
    from wacrm.hooks.delivery import requeue_dead

    if (delivery_id is None) == (not all_dead):
        raise UsageError("give a delivery ID or --dead (not both)")
    one = None if delivery_id is None else _whole_number(delivery_id, "delivery ID")
    with _store(ctx) as (engine, account_id):
        count = requeue_dead(engine, account_id, datetime.now(UTC), delivery_id=one)
    if one is not None and count == 0:
        raise UsageError(
            f"delivery {one} is not a dead delivery of an active subscription of this account"
        )
    click.echo(f"{count} dead deliver{'y' if count == 1 else 'ies'} queued again")
