"""The baseline for ``bench/ingest.py``: pywa 4.5.0's own FastAPI webhook, nothing added.

Run as ``uvicorn bench.pywa_app:app`` with ``BENCH_APP_SECRET``/``BENCH_VERIFY_TOKEN`` set. The
handler only counts, so the figure is pywa's receive path (signature check, dedupe, parse) and
not any storage: pywa stores nothing. ``GET /_count`` reports the count for the bench.
"""

from __future__ import annotations

import os
import threading

from fastapi import FastAPI
from pywa.client import WhatsApp
from pywa.types.message import Message

app = FastAPI()
_handled = {"messages": 0}
_lock = threading.Lock()

wa = WhatsApp(
    phone_id=os.environ.get("BENCH_PHONE_NUMBER_ID", "106540352242922"),
    token="bench-token-unused",  # never sent: the handler makes no API call
    server=app,
    webhook_endpoint="/webhooks/whatsapp",
    verify_token=os.environ["BENCH_VERIFY_TOKEN"],
    app_secret=os.environ["BENCH_APP_SECRET"],
    validate_updates=True,
)


# pywa 4.5's on_message overloads include `self: None`, which mypy rejects on a bound call.
@wa.on_message()  # type: ignore[misc]
def count(_client: WhatsApp, _msg: Message) -> None:
    with _lock:
        _handled["messages"] += 1


@app.get("/_count")
def handled() -> dict[str, int]:
    return dict(_handled)
