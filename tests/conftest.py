"""Shared fixtures: a migrated store on SQLite (always) and PostgreSQL (when configured)."""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from wacrm.store import create_store_engine, migrate
from wacrm.store.accounts import ensure_account, register_number

PG_URL = os.environ.get("WACRM_TEST_DATABASE_URL", "")
APP_SECRET = "test-app-secret"
VERIFY_TOKEN = "test-verify-token"
PHONE_NUMBER_ID = "106540352242922"


@pytest.fixture(autouse=True)
def _thawed_heap() -> Iterator[None]:
    """A test that starts the server freezes the heap (wacrm.heap); thaw it after, so the
    rest of the session's garbage is still collected."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def _pg_engine() -> Iterator[Engine]:
    admin = create_store_engine(PG_URL, poolclass=None)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = create_store_engine(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty store: every test using it runs on both backends."""
    if request.param == "sqlite":
        eng = create_store_engine(f"sqlite:///{tmp_path / 'wacrm.db'}")
        migrate(eng)
        yield eng
        eng.dispose()
        return
    if not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("WACRM_TEST_DATABASE_URL must be set in CI")
        pytest.skip("WACRM_TEST_DATABASE_URL not set")
    for eng in _pg_engine():
        migrate(eng)
        yield eng


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    """A migrated PostgreSQL store, for behaviour only a server database has."""
    if not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("WACRM_TEST_DATABASE_URL must be set in CI")
        pytest.skip("WACRM_TEST_DATABASE_URL not set")
    for eng in _pg_engine():
        migrate(eng)
        yield eng


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    eng = create_store_engine(f"sqlite:///{tmp_path / 'wacrm.db'}")
    migrate(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def account_id(engine: Engine) -> int:
    acc = ensure_account(engine, "default")
    register_number(engine, acc, PHONE_NUMBER_ID, display_phone_number="15550783881")
    return acc
