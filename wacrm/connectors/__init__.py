"""CRM connectors: one module per CRM, registered under the ``wacrm.connectors`` entry point."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from wacrm.connectors.base import (
    ChangePage,
    CheckResult,
    ConnectorError,
    CrmConnector,
    IncomingRecord,
    OutgoingRecord,
    RateLimit,
)

__all__ = [
    "ChangePage",
    "CheckResult",
    "ConnectorError",
    "CrmConnector",
    "IncomingRecord",
    "OutgoingRecord",
    "RateLimit",
    "available_connectors",
    "load_connector_class",
]


def available_connectors() -> list[str]:
    return sorted(ep.name for ep in entry_points(group="wacrm.connectors"))


def load_connector_class(name: str) -> Any:
    for ep in entry_points(group="wacrm.connectors"):
        if ep.name == name:
            return ep.load()
    known = ", ".join(available_connectors()) or "none installed"
    raise ValueError(f"unknown CRM connector {name!r} (available: {known})")
