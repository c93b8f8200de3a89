"""The record of rule firings: what makes each firing happen exactly once.

A firing is claimed by inserting its key inside the transaction that carries out its actions.
If the key is already there (a restart, a redelivered webhook, the next timer tick), the claim
fails and nothing is done; if the transaction rolls back, the claim goes with it and the next
run tries again. So a firing is neither repeated nor lost.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from wacrm.store.schema import rule_firings
from wacrm.store.unique import insert_new

_KEY_CHARS = 255


def claim_firing(
    conn: Connection,
    *,
    account_id: int,
    rule: str,
    firing_key: str,
    now: datetime,
    contact_id: int | None = None,
    message_id: int | None = None,
) -> bool:
    """True if this call recorded the firing; False if it was recorded before."""
    values = {
        "account_id": account_id,
        "rule": rule,
        "firing_key": firing_key[:_KEY_CHARS],
        "contact_id": contact_id,
        "message_id": message_id,
        "fired_at": now,
    }
    # ON CONFLICT DO NOTHING: a concurrent claimer waits for ours and then finds the row,
    # instead of failing the whole transaction on the unique key.
    return insert_new(conn, rule_firings, values) is not None
