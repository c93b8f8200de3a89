"""Who wins when a field changed on both sides: ownership and merge rules from the mapping.

Per field, the mapping file declares ``direction``:

- ``whatsapp``: ours. A CRM value is never read back (the CRM holds a copy).
- ``crm``: theirs. The CRM value always goes into the mirror.
- ``both`` with ``conflict``: ``string_list`` fields (tags) merge as sets, three-way against the
  value both sides last agreed on: what either side added is kept, and what either side
  removed stays removed (a plain union would bring back a tag a CRM user or a rule took off);
  otherwise ``newest`` (latest timestamp wins), ``whatsapp`` (the CRM may only fill a blank)
  or ``crm`` (the CRM always wins).

An incoming value equal to the mirror's is no change at all: that is how the echo of our own
write, read back from the CRM, is recognised and not written again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from wacrm.mappings import FieldMapping, Mapping


@dataclass(frozen=True, slots=True)
class LocalState:
    """The mirror's side of one record."""

    values: dict[str, Any]  # standard names
    pending: dict[str, datetime] = field(default_factory=dict)  # field → queued for the CRM at
    # string_list field → its value when last seen equal on both sides (the merge base)
    synced: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Resolution:
    mirror: dict[str, Any]  # set these in the mirror
    outbound: dict[str, Any]  # write these to the CRM (merged sets it lacks)
    superseded: frozenset[str]  # pending outbound fields the CRM's newer value replaces
    # string_list fields both sides now agree on, with the value: the next merge's base
    synced: dict[str, list[str]] = field(default_factory=dict)

    @property
    def unchanged(self) -> bool:
        return not (self.mirror or self.outbound or self.superseded)


def normalise(kind: str, value: Any) -> Any:
    """One representation per value, so equal values compare equal whoever sent them."""
    if value is None or value == "":
        return [] if kind == "string_list" else None
    if kind == "string_list":
        items = value.split(";") if isinstance(value, str) else value
        return sorted({str(v) for v in items if str(v)})
    if kind == "integer":
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    if kind == "datetime":
        when = (
            datetime.fromisoformat(value.replace("Z", "+00:00"))
            if isinstance(value, str)
            else value
        )
        if isinstance(when, datetime):
            return when if when.tzinfo else when.replace(tzinfo=UTC)
        return None
    if kind == "boolean":
        return value if isinstance(value, bool) else str(value).lower() == "true"
    return str(value)


def resolve(
    mapping: Mapping, local: LocalState, remote: dict[str, Any], remote_at: datetime
) -> Resolution:
    mirror: dict[str, Any] = {}
    outbound: dict[str, Any] = {}
    superseded: set[str] = set()
    synced: dict[str, list[str]] = {}
    for name, raw in remote.items():
        fm = mapping.by_field(name)
        if fm is None or not fm.reads_from_crm:
            continue  # WhatsApp owns it, or nobody declared it: never read back
        theirs = normalise(fm.type, raw)
        ours = normalise(fm.type, local.values.get(name))
        if fm.type == "string_list" and fm.direction == "both":
            base = local.synced.get(name)
            merged = merge_sets(base, ours, theirs)
            if merged != ours:
                mirror[name] = merged
            if merged != theirs:
                outbound[name] = merged  # the base moves when the CRM is seen to have it
            elif merged != base:
                synced[name] = merged
            continue
        if theirs == ours:
            continue  # no change, or the echo of our own write
        if fm.direction == "crm":
            mirror[name] = theirs
            superseded.add(name)
            continue
        if _crm_wins(fm, local, ours, remote_at):
            mirror[name] = theirs
            superseded.add(name)
    return Resolution(mirror, outbound, frozenset(superseded & set(local.pending)), synced)


def merge_sets(base: list[str] | None, ours: list[str], theirs: list[str]) -> list[str]:
    """Three-way set merge: kept by both, or added by either since ``base``; an element
    either side removed since ``base`` is gone. Without a base, the union."""
    if base is None:
        return sorted(set(ours) | set(theirs))
    was, a, b = set(base), set(ours), set(theirs)
    return sorted((a & b) | (a - was) | (b - was))


def _crm_wins(fm: FieldMapping, local: LocalState, ours: Any, remote_at: datetime) -> bool:
    if fm.conflict == "crm":
        return True
    if fm.conflict == "whatsapp":
        return ours is None  # the CRM may fill a blank, never overwrite
    # "newest": the outbox is the per-field version. A value still queued for the CRM was
    # changed at its queue time; with nothing queued, our value already reached the CRM, so a
    # different CRM value was made after it.
    queued_at = local.pending.get(fm.field)
    return queued_at is None or remote_at > queued_at
