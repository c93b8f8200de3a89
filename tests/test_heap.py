"""Settling the heap after start-up (wacrm.heap): what was alive then is exempt from later
collections, and what the server makes afterwards is still collected."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

from conftest import APP_SECRET, VERIFY_TOKEN
from test_server_webhooks import lifespan

from wacrm.config import Secret, Settings
from wacrm.heap import settle_heap
from wacrm.server.runtime import build_app


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_given_settled_heap_then_startup_objects_frozen_and_young_threshold_raised() -> None:
    gc.unfreeze()
    settle_heap()
    assert gc.get_freeze_count() > 1000  # the interpreter, pytest and wacrm's modules
    assert gc.get_threshold()[0] == 20_000


def test_given_settled_heap_when_cycle_made_after_then_still_collected() -> None:
    settle_heap()
    ref = _cycle()
    assert ref() is not None  # only a cycle keeps it: reference counting cannot free it
    gc.collect()
    assert ref() is None


def test_given_cycle_alive_at_settling_then_frozen_until_thawed() -> None:
    ref = _cycle()
    settle_heap()  # the cycle is garbage already, so this collect frees it first
    assert ref() is None
    keep = _Node()
    keep.other = keep
    held = weakref.ref(keep)
    settle_heap()
    del keep
    gc.collect()
    assert held() is not None  # frozen: the collector no longer looks at it
    gc.unfreeze()
    gc.collect()
    assert held() is None


def test_given_served_app_when_lifespan_started_then_heap_settled(tmp_path: Path) -> None:
    gc.unfreeze()
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'wacrm.db'}",
        whatsapp_app_secret=Secret(APP_SECRET),
        whatsapp_verify_token=Secret(VERIFY_TOKEN),
    )
    app = build_app(settings, lambda _s, _e: ())

    async def start_and_stop() -> int:
        async with lifespan(app):
            return gc.get_freeze_count()

    assert asyncio.run(start_and_stop()) > 1000
