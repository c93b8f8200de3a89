"""``wacrm serve`` for the ingest benchmark: the same app, settings and uvicorn set-up, but no
background workers, so the figure is the webhook path alone (receive, verify, split, store).

The inbox processor and outbox senders, which ``wacrm serve`` also runs, compete for the same
cores; ``bench/ingest.py --with-workers`` measures that configuration as well.
"""

from __future__ import annotations

from wacrm.config import load_settings
from wacrm.server.runtime import serve

if __name__ == "__main__":
    serve(load_settings(), make_workers=lambda _settings, _engine: ())
