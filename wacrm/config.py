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
    # Messages per second a business number may send (Meta: 80 by default, up to 1,000 once
    # upgraded, 20 for coexistence numbers); the sender paces a little under it.
    whatsapp_mps: int = 80
    # The WABA id (entry.id of its webhooks): template, quality and account updates name only
    # it. Learned from the first message webhook too; set it to route them before that.
    whatsapp_business_account_id: str = ""
    default_region: str = ""
    account_name: str = "default"
    rules_dir: str = ""
    media_dir: str = "media"
    # Twilio (WhatsApp through Twilio): inbound at POST /webhooks/twilio, sends via Messages.json.
    twilio_account_sid: str = ""
    twilio_auth_token: Secret = field(default_factory=lambda: Secret(""))
    twilio_api_base_url: str = DEFAULT_TWILIO_BASE_URL
    # The WhatsApp sender `wacrm send` uses through Twilio (e.g. +14155238886), and each
    # template's Content API SID: "name=HX…, name/lang=HX…" (Twilio sends templates only so).
    twilio_from_number: str = ""
    twilio_content_sids: str = ""
    # The public base URL providers call (e.g. https://crm-hooks.example.com). Twilio signs the
    # URL it called, which behind a proxy differs from what the server sees; empty: use the
    # request's own Host and scheme.
    public_url: str = ""
    max_body_bytes: int = 3 * 1024 * 1024
    # (helpers: add your settings directly below your marker, nowhere else)
    # [content-policy settings]
    # Checked before a send and by `wacrm lint` (wacrm/whatsapp/content_policy.py): words and
    # phrases that draw spam flags, comma separated (an Arabic comma works too), each matched
    # as a whole word ignoring case; extra link-shortener domains, added to the built-in list;
    # and whether such warnings stop a send ("block") or are only reported ("warn"). Errors
    # (a text over 4096 characters, media over its size limit…) always stop a send.
    content_sensitive_words: str = "free,limited time"
    content_shorteners: str = ""
    content_policy: str = "warn"
    # [hooks settings]
    # Bearer token for the REST API (/api/hooks: REST-hook subscriptions). Empty: those routes
    # answer 503 and do nothing (fail closed).
    api_token: Secret = field(default_factory=lambda: Secret(""))
    # Fernet key(s) sealing stored secrets (hook signing secrets, CRM tokens): one or more,
    # comma separated, newest first (`wacrm secrets keygen` makes one; put a new key first,
    # then run `wacrm secrets rotate`). Empty: a key file beside a SQLite store
    # (wacrm.db -> wacrm.key, made on first need, mode 0600); PostgreSQL needs this set.
    secret_key: Secret = field(default_factory=lambda: Secret(""))
    # Whether REST-hook targets may be private: loopback, RFC 1918, link-local (cloud metadata
    # at 169.254.169.254), fc00::/7… and plain http. Off (false), a target must be https and
    # its host must be and resolve to public addresses only, checked when subscribing and
    # again, pinned, at every delivery (wacrm/hooks/targets.py: no request forgery into the
    # deployment's network). Turn on (true) for development, or for on-premise setups whose
    # receivers live on the LAN.
    hooks_allow_private_targets: bool = False
    # [crm-webhook settings]
    # CRM change webhooks (POST /webhooks/crm, HubSpot's shape, X-HubSpot-Signature-v3): the CRM
    # app's client secret (empty: the route answers 404, nothing unsigned is read), our app id
    # (events our own writes caused carry it and trigger nothing), and the CRM's portal/org id
    # of the default account (how a webhook finds it).
    crm_webhook_secret: Secret = field(default_factory=lambda: Secret(""))
    crm_app_id: str = ""
    crm_tenant: str = ""
    # Each WhatsApp message, in and out, becomes an activity on its contact in the CRM (HubSpot:
    # a Communication), outbound ones updated with their delivery status. Turn off (false) when
    # the CRM plan counts records.
    crm_message_activity: bool = True
    price_list_text: str = (
        "Our price list: Starter 9.99 USD/month, Business 29 USD/month, "
        "Enterprise on request. Reply 'agent' to talk to a person."
    )

    @property
    def graph_url(self) -> str:
        return f"{self.whatsapp_api_base_url.rstrip('/')}/{self.whatsapp_api_version}"


_SECRET_FIELDS = {f.name for f in fields(Settings) if f.type in ("Secret", Secret)}
_INT_FIELDS = {f.name for f in fields(Settings) if f.type in ("int", int)}
_BOOL_FIELDS = {f.name for f in fields(Settings) if f.type in ("bool", bool)}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _coerce(name: str, raw: Any) -> Any:
    if name in _SECRET_FIELDS:
        return Secret(str(raw))
    if name in _BOOL_FIELDS:
        if isinstance(raw, bool):
            return raw
        word = str(raw).strip().lower()
        if word not in _TRUE | _FALSE:
            raise ConfigError(f"WACRM_{name.upper()} must be true or false, got {raw!r}")
        return word in _TRUE
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
    settings = replace(Settings(), **values)
    if not 1 <= settings.whatsapp_mps <= 10_000:
        raise ConfigError(
            f"WACRM_WHATSAPP_MPS must be a rate between 1 and 10000, got {settings.whatsapp_mps}"
        )
    return settings
