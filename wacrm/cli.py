"""The ``wacrm`` command. Each subcommand is a thin shell over a function in its room;
user mistakes end as one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from wacrm import __version__
from wacrm.config import ConfigError, Settings, load_settings
from wacrm.store import StoreError

F = TypeVar("F", bound=Callable[..., Any])


class UsageError(click.ClickException):
    """A user mistake: printed as ``wacrm: error: …`` with exit status 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"wacrm: error: {self.format_message()}", err=True)


def user_errors(func: F) -> F:
    """Turn configuration and input errors into a one-line message and exit 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ConfigError, StoreError) as exc:
            raise UsageError(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def settings_from(ctx: click.Context) -> Settings:
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        try:
            obj["settings"] = load_settings()
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    settings: Settings = obj["settings"]
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wacrm")
def cli() -> None:
    """WhatsApp Business Platform connector for CRMs."""


# --- subcommands are added below, one block per room -------------------------------------


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="wacrm", standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
