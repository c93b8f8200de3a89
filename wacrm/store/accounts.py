"""Accounts, and the WhatsApp numbers and business accounts (WABAs) that route webhooks to
them."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from sqlalchemy import Column, Connection, Engine, select
from sqlalchemy.exc import IntegrityError

from wacrm.store.schema import accounts, whatsapp_business_accounts, whatsapp_numbers
from wacrm.store.unique import insert_new


def ensure_account(engine: Engine, name: str, crm: str = "local") -> int:
    """Return the id of the account called ``name``, creating it if needed."""
    with engine.begin() as conn:
        found = conn.execute(select(accounts.c.id).where(accounts.c.name == name)).scalar()
        if found is not None:
            return int(found)
        try:
            with conn.begin_nested():
                result = conn.execute(
                    accounts.insert().values(name=name, crm=crm, created_at=datetime.now(UTC))
                )
                assert result.inserted_primary_key is not None
                return int(result.inserted_primary_key[0])
        except IntegrityError:  # created concurrently by another worker
            found = conn.execute(select(accounts.c.id).where(accounts.c.name == name)).scalar()
            assert found is not None
            return int(found)


def register_number(
    engine: Engine,
    account_id: int,
    phone_number_id: str,
    provider: str = "meta",
    display_phone_number: str | None = None,
) -> None:
    """Route webhooks for ``phone_number_id`` to ``account_id`` (idempotent)."""
    with engine.begin() as conn:
        current = conn.execute(
            select(whatsapp_numbers.c.account_id).where(
                whatsapp_numbers.c.phone_number_id == phone_number_id
            )
        ).scalar()
        if current is None:
            conn.execute(
                whatsapp_numbers.insert().values(
                    phone_number_id=phone_number_id,
                    account_id=account_id,
                    provider=provider,
                    display_phone_number=display_phone_number,
                )
            )
        elif int(current) != account_id:
            raise ValueError(
                f"phone number id {phone_number_id} already belongs to account {current}"
            )


def register_waba(engine: Engine, account_id: int, waba_id: str) -> None:
    """Route webhooks that name only the WhatsApp Business Account ``waba_id`` (template,
    quality and account updates) to ``account_id``; idempotent, :class:`ValueError` if the
    WABA belongs to another account."""
    with engine.begin() as conn:
        owner = learn_waba(conn, account_id, waba_id)
    if owner != account_id:
        raise ValueError(f"WhatsApp Business Account {waba_id} already belongs to account {owner}")


def learn_waba(conn: Connection, account_id: int, waba_id: str) -> int:
    """Record that ``waba_id`` belongs to ``account_id`` unless it is already known; the
    account it belongs to (the first one recorded wins)."""
    table = whatsapp_business_accounts
    values = {"waba_id": waba_id, "account_id": account_id}
    if insert_new(conn, table, values, returning="account_id") is not None:
        return account_id
    owner = conn.execute(select(table.c.account_id).where(table.c.waba_id == waba_id)).scalar()
    return account_id if owner is None else int(owner)


class NumberDirectory:
    """phone_number_id (or WABA id) → account id, cached; webhooks look it up on every
    request. An id not found is not cached: it may be registered or learned later."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._cache: dict[str, int] = {}  # phone_number_id → account
        self._waba_cache: dict[str, int] = {}  # WABA id → account
        self._lock = threading.Lock()

    def account_for(self, phone_number_id: str) -> int | None:
        found = self._cache.get(phone_number_id)  # the hot path: one dict look-up
        if found is not None:
            return found
        return self._load(self._cache, whatsapp_numbers.c.phone_number_id, phone_number_id)

    def account_for_waba(self, waba_id: str) -> int | None:
        found = self._waba_cache.get(waba_id)
        if found is not None:
            return found
        return self._load(self._waba_cache, whatsapp_business_accounts.c.waba_id, waba_id)

    def _load(self, cache: dict[str, int], key: Column[str], value: str) -> int | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(key.table.c.account_id).where(key == value)).scalar()
        if row is None:
            return None
        with self._lock:
            cache[value] = int(row)
        return int(row)


def set_crm_tenant(engine: Engine, account_id: int, tenant: str) -> None:
    """Record the CRM's own id of ``account_id`` (HubSpot portal, Salesforce org), so its
    change webhooks find it. Idempotent; :class:`ValueError` if another account on the same
    CRM already has that id."""
    with engine.begin() as conn:
        row = conn.execute(
            select(accounts.c.crm, accounts.c.crm_tenant).where(accounts.c.id == account_id)
        ).first()
        if row is None:
            raise ValueError(f"account {account_id} does not exist")
        if row.crm_tenant == tenant:
            return
        owner = conn.execute(
            select(accounts.c.id).where(accounts.c.crm == row.crm, accounts.c.crm_tenant == tenant)
        ).scalar()
        if owner is not None:
            raise ValueError(f"CRM tenant {tenant} already belongs to account {owner}")
        try:
            with conn.begin_nested():
                conn.execute(
                    accounts.update().where(accounts.c.id == account_id).values(crm_tenant=tenant)
                )
        except IntegrityError:  # claimed concurrently
            raise ValueError(f"CRM tenant {tenant} already belongs to another account") from None


class TenantDirectory:
    """CRM portal/org id → account id, for the CRMs one webhook dialect serves; cached
    (hits only: an unknown portal is looked up again, so a newly installed one is found)."""

    def __init__(self, engine: Engine, crms: tuple[str, ...]) -> None:
        self._engine = engine
        self._crms = crms
        self._cache: dict[str, int] = {}
        self._lock = threading.Lock()

    def account_for(self, tenant: str) -> int | None:
        found = self._cache.get(tenant)
        if found is not None:
            return found
        with self._engine.connect() as conn:
            row = conn.execute(
                select(accounts.c.id)
                .where(accounts.c.crm_tenant == tenant, accounts.c.crm.in_(self._crms))
                .order_by(accounts.c.id)
                .limit(1)
            ).scalar()
        if row is None:
            return None
        with self._lock:
            self._cache[tenant] = int(row)
        return int(row)
