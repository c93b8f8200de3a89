"""What every ``wacrm`` subcommand shares: the user-mistake exception, the decorator that
turns configuration and store errors into it, and the settings of the invocation.

Kept apart from :mod:`wacrm.cli` so that a command defined in its own room's module can use
them without importing the whole command tree."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from sqlalchemy.exc import OperationalError

from wacrm.config import ConfigError, Settings, load_settings
from wacrm.store import StoreError

F = TypeVar("F", bound=Callable[..., Any])


class UsageError(click.ClickException):
    """A user mistake: printed as ``wacrm: error: …`` with exit status 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"wacrm: error: {self.format_message()}", err=True)


class StoreUnavailable(click.ClickException):
    """The store did not answer (server down, wrong host): one line, exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"wacrm: error: {self.format_message()}", err=True)


def user_errors(func: F) -> F:
    """Turn configuration and input errors into a one-line message and exit 2, and a store
    that cannot be reached into one line and exit 1: never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ConfigError, StoreError) as exc:
            raise UsageError(str(exc)) from None
        except OperationalError as exc:
            # The driver's first line says why (refused, unknown host, locked); the statement
            # and its parameters, which may hold customer data, are left out.
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            raise StoreUnavailable(f"the store is unavailable: {reason}") from None

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
