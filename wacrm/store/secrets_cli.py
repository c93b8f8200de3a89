"""``wacrm secrets``: make a key for ``WACRM_SECRET_KEY``, and re-seal stored secrets under
the newest key after adding one.

Imports of the store and ``cryptography`` stay inside the commands: ``wacrm --help`` loads
neither.
"""

from __future__ import annotations

import click

from wacrm.cli_support import UsageError, settings_from, user_errors

_SHOWN = 10  # unopenable secrets named in the error line


@click.group("secrets")
def secrets_group() -> None:
    """The key that seals stored secrets (WACRM_SECRET_KEY): make one, rotate to a new one."""


@secrets_group.command("keygen")
def secrets_keygen() -> None:
    """Print a fresh key for WACRM_SECRET_KEY (nothing is stored).

    To rotate: put the new key first, the old after it (WACRM_SECRET_KEY=new,old), run
    `wacrm secrets rotate`, then drop the old key."""
    from wacrm.store.secrets import generate_key

    click.echo(generate_key())


@secrets_group.command("rotate")
@click.pass_context
@user_errors
def secrets_rotate(ctx: click.Context) -> None:
    """Re-seal every stored secret under the newest key of WACRM_SECRET_KEY (or of the key
    file beside a SQLite store). Safe to run again, and while the server runs."""
    from wacrm.store import create_store_engine, migrate
    from wacrm.store.secrets import SecretBox, reseal_all

    settings = settings_from(ctx)
    box = SecretBox.from_settings(settings)
    box.ready()  # a missing or malformed key: one error line, before the store is touched
    engine = create_store_engine(settings.database_url)
    try:
        migrate(engine)
        done = reseal_all(engine, box)
    finally:
        engine.dispose()
    click.echo(
        f"{done.resealed} secret(s) re-sealed under the newest key; {done.current} already were"
    )
    if done.unopened:
        shown = ", ".join(done.unopened[:_SHOWN]) + (", …" if len(done.unopened) > _SHOWN else "")
        raise UsageError(
            f"{len(done.unopened)} stored secret(s) open with no configured key ({shown}); "
            "left as they were: add their old key after the newest in WACRM_SECRET_KEY and "
            "run again"
        )
