"""Secrets at rest: sealed with Fernet before they are stored, opened when they are used.

Fernet (``cryptography``) is AES-128-CBC with an HMAC-SHA256 over a versioned token: a token
altered by one bit, or sealed under a key we do not hold, does not open. Keys come newest
first (:class:`~cryptography.fernet.MultiFernet`): :meth:`SecretBox.seal` uses the newest,
:meth:`SecretBox.open` tries each, :meth:`SecretBox.rotate` re-seals under the newest, and
:func:`reseal_all` does that for every stored secret (``wacrm secrets rotate``).

Where the keys come from (:meth:`SecretBox.from_settings`), read on first need:

1. ``WACRM_SECRET_KEY``: one or more Fernet keys, comma separated, newest first;
2. else, for a SQLite store ``path/wacrm.db``, the key file ``path/wacrm.key`` beside it,
   created with mode 0600 the first time a secret is sealed or opened (atomically: two
   processes starting together agree on one key), with a warning to back it up;
3. else (PostgreSQL, an in-memory store, a missing directory): a :class:`ConfigError`
   naming ``WACRM_SECRET_KEY``. Nothing is ever sealed in plain text instead.

Neither errors nor log lines carry a key, a token or a plaintext.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Column, Engine, Table, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from wacrm.config import ConfigError, Secret, Settings
from wacrm.store.schema import hook_subscriptions

logger = logging.getLogger(__name__)

KEY_SETTING = "WACRM_SECRET_KEY"
_KEYGEN_HINT = "make one with `wacrm secrets keygen`"
# Every stored column holding a sealed secret: what `wacrm secrets rotate` re-seals.
SEALED_COLUMNS: tuple[Column[str], ...] = (hook_subscriptions.c.secret,)

KeyLoader = Callable[[], Sequence[Fernet]]


class SecretError(Exception):
    """A sealed secret does not open: altered, or sealed under a key no longer configured.
    The message never holds the token or what it seals."""


def generate_key() -> str:
    """A fresh Fernet key (32 random bytes, url-safe base64), for ``WACRM_SECRET_KEY``."""
    return Fernet.generate_key().decode("ascii")


def parse_keys(keys: str | Sequence[str | bytes], source: str = KEY_SETTING) -> list[Fernet]:
    """Fernet keys, newest first, from a sequence or comma-separated text; a malformed one is
    a :class:`ConfigError` naming ``source`` and its position, never its value."""
    parts = re.split(r"[,\s]+", keys) if isinstance(keys, str) else list(keys)
    parts = [p for p in parts if p]
    if not parts:
        raise ConfigError(f"{source} holds no key; {_KEYGEN_HINT}")
    fernets = []
    for n, part in enumerate(parts, 1):
        try:
            fernets.append(Fernet(part))
        except (ValueError, TypeError):  # binascii.Error is a ValueError
            raise ConfigError(
                f"{source}: key {n} of {len(parts)} is not a Fernet key "
                f"(32 bytes in url-safe base64); {_KEYGEN_HINT}"
            ) from None
    return fernets


class SecretBox:
    """Seals under the newest key, opens under any. Thread-safe.

    ``keys``: newest first, as a sequence or comma-separated text (checked now), or a
    function returning them, called on first need (and again after it failed)."""

    def __init__(self, keys: str | Sequence[str | bytes] | KeyLoader) -> None:
        self._lock = threading.Lock()
        self._loader: KeyLoader | None = None
        self._keys: tuple[Fernet, MultiFernet] | None = None
        if callable(keys):
            self._loader = keys
        else:
            self._keys = _ring(parse_keys(keys))

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        """The box of ``WACRM_SECRET_KEY``, else of the key file beside a SQLite store
        (see the module docstring). Nothing is read until a secret is sealed or opened."""
        return cls(partial(load_keys, settings.secret_key, settings.database_url))

    def ready(self) -> None:
        """Load the keys now: a :class:`ConfigError` if there are none to be had."""
        self._ring()

    def seal(self, plaintext: str) -> str:
        """``plaintext`` sealed under the newest key: a token safe to store."""
        newest, _ = self._ring()
        return newest.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def open(self, token: str) -> str:
        """What ``token`` seals; :class:`SecretError` if no configured key opens it."""
        _, ring = self._ring()
        try:
            return ring.decrypt(_token_bytes(token)).decode("utf-8")
        except (InvalidToken, ValueError, TypeError):  # UnicodeError is a ValueError
            raise SecretError(_NOT_OPENED) from None

    def rotate(self, token: str) -> str:
        """``token`` re-sealed under the newest key (a fresh token each time)."""
        _, ring = self._ring()
        try:
            return ring.rotate(_token_bytes(token)).decode("ascii")
        except (InvalidToken, ValueError, TypeError):
            raise SecretError(_NOT_OPENED) from None

    def is_current(self, token: str) -> bool:
        """Whether the newest key opens ``token`` (then :meth:`rotate` has nothing to do)."""
        newest, _ = self._ring()
        try:
            newest.decrypt(_token_bytes(token))
        except (InvalidToken, ValueError, TypeError):
            return False
        return True

    def __repr__(self) -> str:
        return "SecretBox(***)"

    def _ring(self) -> tuple[Fernet, MultiFernet]:
        with self._lock:
            if self._keys is None:
                assert self._loader is not None
                self._keys = _ring(list(self._loader()))
            return self._keys


_NOT_OPENED = f"the sealed secret does not open: altered, or its key is not in {KEY_SETTING}"


def _ring(fernets: list[Fernet]) -> tuple[Fernet, MultiFernet]:
    return fernets[0], MultiFernet(fernets)


def _token_bytes(token: str) -> bytes:
    if not isinstance(token, str):
        raise TypeError("a sealed secret is text")
    return token.encode("ascii")


# -- where the keys come from ----------------------------------------------------------------


def key_file_for(database_url: str) -> Path | None:
    """The key file beside a SQLite store file (``path/wacrm.db`` → ``path/wacrm.key``);
    None for any other store (PostgreSQL, in-memory SQLite)."""
    try:
        url = make_url(database_url)
    except ArgumentError:
        return None
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if database.startswith("file:") or url.query.get("mode") == "memory":
        return None
    store = Path(database)
    key = store.with_suffix(".key")
    return key if key != store else store.with_name(store.name + ".key")


def load_keys(secret_key: Secret, database_url: str) -> list[Fernet]:
    """The keys of ``WACRM_SECRET_KEY``, else of the key file beside a SQLite store (made
    now if missing); a :class:`ConfigError` naming ``WACRM_SECRET_KEY`` if neither."""
    if secret_key.reveal().strip():
        return parse_keys(secret_key.reveal())
    path = key_file_for(database_url)
    if path is None:
        raise ConfigError(
            f"set {KEY_SETTING}: stored secrets are sealed with it, and only a SQLite store "
            f"file keeps a key file beside itself; {_KEYGEN_HINT}"
        )
    if not path.parent.is_dir():
        raise ConfigError(
            f"set {KEY_SETTING}: the key file {path} cannot be made, "
            f"{path.parent} is not a directory"
        )
    return parse_keys(read_or_create_key_file(path), f"{KEY_SETTING} (unset, so) key file {path}")


def read_or_create_key_file(path: Path) -> str:
    """The text of the key file at ``path``, created first (one fresh key, mode 0600) if
    there is none. Creating is atomic: the key is written to a private temporary file, which
    is then hard-linked into place, which fails if another process got there first (then its
    key is the one read)."""
    try:
        return path.read_text(encoding="ascii")
    except FileNotFoundError:
        pass
    except (OSError, UnicodeError) as exc:
        raise _unreadable(path, exc) from None
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    created = False
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)  # whatever the umask
            out.write(generate_key().encode("ascii") + b"\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp, path)
            created = True
        except FileExistsError:
            pass  # another process made it first: its key is the key
        _sync_directory(path.parent)
    except OSError as exc:
        raise ConfigError(
            f"set {KEY_SETTING}, or make the key file {path} possible: cannot create it "
            f"({exc.strerror or type(exc).__name__})"
        ) from None
    finally:
        temp.unlink(missing_ok=True)
    if created:
        logger.warning(
            "created the secret key file %s (mode 0600): back it up with the store, as without "
            "it the stored secrets cannot be opened (or set %s instead)",
            path,
            KEY_SETTING,
        )
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeError) as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: Exception) -> ConfigError:
    reason = exc.strerror if isinstance(exc, OSError) else "not text"
    return ConfigError(f"{KEY_SETTING} is unset and its key file {path} cannot be read ({reason})")


def _sync_directory(directory: Path) -> None:
    """Make a new directory entry durable (where the platform allows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- re-sealing what is stored ---------------------------------------------------------------


@dataclass
class Resealed:
    """What :func:`reseal_all` did: re-sealed, already under the newest key, or not
    openable with any configured key (named ``table id``, left as they were)."""

    resealed: int = 0
    current: int = 0
    unopened: list[str] = field(default_factory=list)


def reseal_all(engine: Engine, box: SecretBox, *, batch: int = 500) -> Resealed:
    """Re-seal every stored secret under the newest key. Idempotent: a secret the newest key
    already opens is left alone; each change is compare-and-set, so it is safe while the
    server runs."""
    done = Resealed()
    for column in SEALED_COLUMNS:
        table = column.table
        assert isinstance(table, Table)
        row_id = table.c.id
        after = 0
        while True:
            with engine.connect() as conn:
                rows = conn.execute(
                    select(row_id, column)
                    .where(row_id > after, column.is_not(None))
                    .order_by(row_id)
                    .limit(batch)
                ).all()
            for sealed_id, token in rows:
                if box.is_current(token):
                    done.current += 1
                    continue
                try:
                    fresh = box.rotate(token)
                except SecretError:
                    done.unopened.append(f"{table.name} {sealed_id}")
                    continue
                with engine.begin() as conn:
                    changed = conn.execute(
                        table.update()
                        .where(row_id == sealed_id, column == token)
                        .values({column.name: fresh})
                    )
                # Changed meanwhile (another run re-sealed it) or removed: nothing to do.
                done.resealed += int(changed.rowcount == 1)
            if len(rows) < batch:
                break
            after = int(rows[-1][0])
    return done
