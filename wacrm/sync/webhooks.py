"""CRM change webhooks: which accounts and objects to read now.

HubSpot-style payloads are a JSON list of events (``subscriptionType``
``contact.propertyChange``, ``portalId``, ``changeSource``, ``sourceId``). An event caused by our
own app (``changeSource: INTEGRATION`` with our app id) is the echo of a write we made: it
triggers nothing. Everything else wakes the sync loop for that account and object, so the
change reaches the mirror at once instead of at the next baseline run.

The server's route (:mod:`wacrm.server.crm_webhook`) checks ``X-HubSpot-Signature-v3`` and
then calls :func:`route_changes`. :func:`change_webhook_endpoint` is the same routing with no
signature check, for in-process tests only: nothing public may mount it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

_OBJECTS = {"contact": "contacts", "ticket": "tickets", "task": "tasks"}


class ChangeListener(Protocol):
    def notify_crm_change(self, account_id: int, object: str = "contacts") -> None: ...


@dataclass(frozen=True, slots=True)
class ChangeRouting:
    """What one webhook delivery asks for: (account, object) pairs to read now, and the
    portals no account is known for."""

    wake: tuple[tuple[int, str], ...]
    unknown_portals: tuple[str, ...]


def is_event_list(events: Any) -> bool:
    """HubSpot posts a JSON array of event objects (up to 100 per request)."""
    return isinstance(events, list) and all(isinstance(e, dict) for e in events)


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


def route_changes(
    events: Any, *, own_app_id: str | None, account_for: Callable[[str], int | None]
) -> ChangeRouting:
    """The (account, object) pairs to read now, each once, and the unknown portals."""
    wake: set[tuple[int, str]] = set()
    unknown: set[str] = set()
    for portal, obj in foreign_changes(events, own_app_id=own_app_id):
        account_id = account_for(portal)
        if account_id is None:
            unknown.add(portal)
        else:
            wake.add((account_id, obj))
    return ChangeRouting(tuple(sorted(wake)), tuple(sorted(unknown)))


def change_webhook_endpoint(
    listener: ChangeListener,
    account_for_portal: Callable[[str], int | None],
    *,
    own_app_id: str | None = None,
) -> Callable[[Request], Awaitable[Response]]:
    """Unsigned routing for in-process tests; the server mounts :mod:`wacrm.server.crm_webhook`."""

    async def endpoint(request: Request) -> Response:
        try:
            events = await request.json()
        except ValueError:
            return JSONResponse({"error": "body is not JSON"}, status_code=400)
        routing = route_changes(events, own_app_id=own_app_id, account_for=account_for_portal)
        for account_id, obj in routing.wake:
            listener.notify_crm_change(account_id, obj)
        return JSONResponse({"woken": len(routing.wake)})

    return endpoint
