"""Configuration: ``WACRM_*`` environment variables over an optional ``wacrm.toml``.

Every setting has one name; the TOML key is the variable name without the ``WACRM_`` prefix,
in lower case (``WACRM_DATABASE_URL`` ↔ ``database_url``). Secrets are held in
:class:`Secret` so that a repr, a log line or an error message never shows them.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_DATABASE_FILE = "wacrm.db"
DEFAULT_GRAPH_BASE_URL = "https://graph.facebook.com"
DEFAULT_GRAPH_VERSION = "v25.0"
DEFAULT_TWILIO_BASE_URL = "https://api.twilio.com"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""


class Secret:
    """A string that never shows itself in repr/str/format."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    database_url: str = f"sqlite:///{DEFAULT_DATABASE_FILE}"
    host: str = "127.0.0.1"
    port: int = 8000
    whatsapp_verify_token: Secret = field(default_factory=lambda: Secret(""))
    whatsapp_app_secret: Secret = field(default_factory=lambda: Secret(""))
    whatsapp_access_token: Secret = field(default_factory=lambda: Secret(""))
    whatsapp_api_base_url: str = DEFAULT_GRAPH_BASE_URL
    whatsapp_api_version: str = DEFAULT_GRAPH_VERSION
    whatsapp_phone_number_id: str = ""
    whatsapp_display_phone_number: str = ""
    default_region: str = ""
    account_name: str = "default"
    rules_dir: str = ""
    media_dir: str = "media"
    # Twilio (WhatsApp through Twilio): inbound at POST /webhooks/twilio, sends via Messages.json.
    twilio_account_sid: str = ""
    twilio_auth_token: Secret = field(default_factory=lambda: Secret(""))
    twilio_api_base_url: str = DEFAULT_TWILIO_BASE_URL
    # The public base URL providers call (e.g. https://crm-hooks.example.com). Twilio signs the
    # URL it called, which behind a proxy differs from what the server sees; empty: use the
    # request's own Host and scheme.
    public_url: str = ""
    max_body_bytes: int = 3 * 1024 * 1024
    # (helpers: add your settings directly below your marker, nowhere else)
    # [content-policy settings]
    # [hooks settings]
    # [crm-webhook settings]
    price_list_text: str = (
        "Our price list: Starter 9.99 USD/month, Business 29 USD/month, "
        "Enterprise on request. Reply 'agent' to talk to a person."
    )

    @property
    def graph_url(self) -> str:
        return f"{self.whatsapp_api_base_url.rstrip('/')}/{self.whatsapp_api_version}"


_SECRET_FIELDS = {f.name for f in fields(Settings) if f.type in ("Secret", Secret)}
_INT_FIELDS = {f.name for f in fields(Settings) if f.type in ("int", int)}


def _coerce(name: str, raw: Any) -> Any:
    if name in _SECRET_FIELDS:
        return Secret(str(raw))
    if name in _INT_FIELDS:
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"WACRM_{name.upper()} must be an integer, got {raw!r}") from None
    return str(raw)


def load_settings(
    env: dict[str, str] | None = None, toml_path: Path | None = None, **overrides: Any
) -> Settings:
    """Read ``wacrm.toml`` (or ``WACRM_CONFIG``), then the environment, then ``overrides``."""
    env = dict(os.environ) if env is None else env
    values: dict[str, Any] = {}
    path = toml_path or Path(env.get("WACRM_CONFIG", "wacrm.toml"))
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        known = {f.name for f in fields(Settings)}
        for key, raw in data.items():
            if key not in known:
                raise ConfigError(f"{path}: unknown setting {key!r}")
            values[key] = _coerce(key, raw)
    for f in fields(Settings):
        raw = env.get(f"WACRM_{f.name.upper()}")
        if raw is not None and raw != "":
            values[f.name] = _coerce(f.name, raw)
    for key, raw in overrides.items():
        if raw is not None:
            values[key] = raw if isinstance(raw, Secret) else _coerce(key, raw)
    return replace(Settings(), **values)
