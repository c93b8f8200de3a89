"""CRM change webhooks: which accounts and objects to read now.

HubSpot-style payloads are a JSON list of events (``subscriptionType``
``contact.propertyChange``, ``portalId``, ``changeSource``, ``sourceId``). An event caused by our
own app (``changeSource: INTEGRATION`` with our app id) is the echo of a write we made: it
triggers nothing. Everything else wakes the sync loop for that account and object, so the
change reaches the mirror at once instead of at the next baseline run.

The server mounts :func:`change_webhook_endpoint`; signature verification
(``X-HubSpot-Signature-v3``) belongs to the real HubSpot route and is not done here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

_OBJECTS = {"contact": "contacts", "ticket": "tickets", "task": "tasks"}


class ChangeListener(Protocol):
    def notify_crm_change(self, account_id: int, object: str = "contacts") -> None: ...


def foreign_changes(events: Any, *, own_app_id: str | None) -> set[tuple[str, str]]:
    """(portal id, object) pairs that something other than us changed."""
    found: set[tuple[str, str]] = set()
    if not isinstance(events, list):
        return found
    for event in events:
        if not isinstance(event, dict):
            continue
        kind = str(event.get("subscriptionType", "")).split(".", 1)[0]
        obj = _OBJECTS.get(kind)
        if obj is None:
            continue
        ours = event.get("changeSource") == "INTEGRATION" and (
            own_app_id is not None and str(event.get("sourceId")) == str(own_app_id)
        )
        if not ours:
            found.add((str(event.get("portalId", "")), obj))
    return found


def change_webhook_endpoint(
    listener: ChangeListener,
    account_for_portal: Callable[[str], int | None],
    *,
    own_app_id: str | None = None,
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            events = await request.json()
        except ValueError:
            return JSONResponse({"error": "body is not JSON"}, status_code=400)
        woken = 0
        for portal, obj in sorted(foreign_changes(events, own_app_id=own_app_id)):
            account_id = account_for_portal(portal)
            if account_id is not None:
                listener.notify_crm_change(account_id, obj)
                woken += 1
        return JSONResponse({"woken": woken})

    return endpoint
