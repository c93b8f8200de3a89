"""Keep the garbage collector's pauses out of webhook latency.

CPython's full (generation 2) collection walks every tracked object. A started server holds
about 80,000 of them (modules, functions, SQLAlchemy's compiled statements), none of which
will ever be garbage, and a full collection over them took 35-50 ms on this project's 2-core
benchmark machine: every webhook waiting at that moment waited that long too, which was the
whole of the ingest p99 (measured: 33-50 ms with the collector, 8.6 ms with it off).

``gc.freeze()`` moves everything alive at start-up into a permanent generation the
collector no longer walks, so later full collections look only at what the server
allocated since; a larger first-generation threshold makes the young collections, which
every request's garbage triggers, fewer and each a little longer. The collector still runs:
reference cycles created while serving are still freed.
"""

from __future__ import annotations

import gc

# Objects allocated (net) before a young collection; CPython's default is 700. Requests make
# short-lived containers by the thousand, nearly all freed by reference counting.
_YOUNG_THRESHOLD = 20_000


def settle_heap() -> None:
    """Collect once, then exempt what survives from later collections. Call when start-up is
    over (app built, workers started); calling it again later adds what is alive then."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(_YOUNG_THRESHOLD, older, oldest)
