"""``wacrm numbers``: the business numbers the outbox sends from, which worker holds each
(one sender per number), which are halted and why; and resuming a halted number once ops
have fixed what Meta reported (a restricted account, an unregistered number).

Imports of the store stay inside the commands: ``wacrm --help`` loads none of it.
"""

from __future__ import annotations

import click

from wacrm.cli_support import UsageError, settings_from, user_errors


@click.group("numbers")
def numbers_group() -> None:
    """Business numbers: who sends from each, halts, resume."""


@numbers_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
@user_errors
def numbers_list(ctx: click.Context, as_json: bool) -> None:
    """Each number: provider, messages queued, the worker sending from it, and a halt with
    its reason."""
    from datetime import UTC, datetime

    import orjson

    from wacrm.store import create_store_engine, migrate
    from wacrm.store.sending_numbers import number_states

    engine = create_store_engine(settings_from(ctx).database_url)
    try:
        migrate(engine)
        states = number_states(engine, datetime.now(UTC))
    finally:
        engine.dispose()
    if not states and not as_json:
        click.echo("no business numbers yet (wacrm serve registers WACRM_WHATSAPP_PHONE_NUMBER_ID)")
    for s in states:
        if as_json:
            click.echo(
                orjson.dumps(
                    {
                        "phone_number_id": s.phone_number_id,
                        "provider": s.provider,
                        "display_phone_number": s.display_phone_number,
                        "queued": s.queued,
                        "sender": s.sender,
                        "halted_reason": s.halted_reason,
                        "halted_at": s.halted_at.isoformat() if s.halted_at else None,
                    }
                ).decode()
            )
            continue
        sending = f"sent by {s.sender}" if s.sender else "no sender now"
        halted = (
            f"; HALTED since {s.halted_at:%Y-%m-%d %H:%M} UTC: {s.halted_reason}"
            if (s.halted_reason and s.halted_at)
            else ""
        )
        click.echo(
            f"{s.phone_number_id} ({s.provider or 'not registered'}): {s.queued} queued, "
            f"{sending}{halted}"
        )


@numbers_group.command("resume")
@click.argument("phone_number_id", required=False)
@click.option("--all", "every", is_flag=True, help="Resume every halted number.")
@click.pass_context
@user_errors
def numbers_resume(ctx: click.Context, phone_number_id: str | None, every: bool) -> None:
    """Send again from a halted number (every sender, at its next pass)."""
    from wacrm.store import create_store_engine, migrate
    from wacrm.store.sending_numbers import resume

    if every == (phone_number_id is not None):
        raise UsageError("give a PHONE_NUMBER_ID or --all")
    engine = create_store_engine(settings_from(ctx).database_url)
    try:
        migrate(engine)
        resumed = resume(engine, phone_number_id)
    finally:
        engine.dispose()
    if phone_number_id is not None and not resumed:
        raise UsageError(f"number {phone_number_id} is not halted (see wacrm numbers list)")
    click.echo(f"resumed: {', '.join(resumed) if resumed else 'nothing was halted'}")
