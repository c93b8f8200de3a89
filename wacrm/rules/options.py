"""The tag and priority values rules use, as picklist options for the CRM fields.

Each connector's installer reads :func:`options_from` and makes them the options of its tag
and priority fields, so a rule never writes a value the CRM would reject. The embedded CRM
gets them through :func:`install_local_options`, which the server calls at start-up.
"""

from __future__ import annotations

import orjson
from sqlalchemy import Connection, and_, select

from wacrm.model import Priority
from wacrm.rules.schema import (
    AddTags,
    ContactField,
    FieldChanged,
    FieldOp,
    HandOver,
    RemoveTags,
    RuleSet,
)
from wacrm.store.schema import accounts, local_crm_properties

# Where the embedded CRM keeps them, when no mapping file says otherwise.
LOCAL_TAGS_PROPERTY = ("whatsapp_tags", "WhatsApp tags", "string_list")
LOCAL_PRIORITY_PROPERTY = ("priority", "Priority", "enumeration")


_TAG_OPS = (FieldOp.CONTAINS, FieldOp.NOT_CONTAINS)  # only ever on tags (checked at load)


def options_from(ruleset: RuleSet) -> dict[str, list[str]]:
    """``{"tags": [...], "priority": [...]}``: every tag a rule adds, removes, tests or
    waits for (sorted), and the priority values (all of them, as the field is an
    enumeration of them, highest first; rules only ever set these)."""
    tags: set[str] = set()
    for rule in ruleset.rules:
        for action in rule.actions:
            if isinstance(action, AddTags | RemoveTags):
                tags.update(action.tags)
            elif isinstance(action, HandOver):
                tags.add(action.tag)
        for cond in rule.conditions:
            if isinstance(cond, ContactField) and cond.op in _TAG_OPS:
                tags.add(str(cond.operand))
        if isinstance(rule.trigger, FieldChanged) and rule.trigger.field == "tags":
            tags.update(rule.trigger.to | rule.trigger.from_)
    return {"tags": sorted(tags), "priority": [p.value for p in Priority]}


def _local_property(field: str, fallback: tuple[str, str, str]) -> tuple[str, str, str]:
    """(name, label, type) of ``field`` in the embedded CRM, from its mapping file."""
    from wacrm.mappings import MappingError, load_mapping

    try:
        found = load_mapping("local", "contacts").by_field(field)
    except (MappingError, OSError):
        found = None
    if found is None:
        return fallback
    return found.crm_property, fallback[1], found.type


def install_local_options(conn: Connection, account_id: int, ruleset: RuleSet) -> bool:
    """Make the rules' tags and priorities options of the embedded CRM's contact fields.

    Options already there stay (records may hold them); new ones are added. Returns True
    when something changed, so a second run with the same rules shows it is a no-op.
    """
    wanted = options_from(ruleset)
    changed = False
    for field, fallback in (("tags", LOCAL_TAGS_PROPERTY), ("priority", LOCAL_PRIORITY_PROPERTY)):
        name, label, ptype = _local_property(field, fallback)
        changed |= _merge_options(conn, account_id, name, label, ptype, wanted[field])
    return changed


def _merge_options(
    conn: Connection, account_id: int, name: str, label: str, ptype: str, options: list[str]
) -> bool:
    p = local_crm_properties
    where = and_(p.c.account_id == account_id, p.c.object == "contacts", p.c.name == name)
    row = conn.execute(select(p.c.options).where(where).with_for_update()).first()
    if row is None:
        conn.execute(
            p.insert().values(
                account_id=account_id,
                object="contacts",
                name=name,
                label=label,
                type=ptype,
                options=orjson.dumps(options).decode(),
            )
        )
        return True
    current: list[str] = list(orjson.loads(row.options or "[]"))
    missing = [o for o in options if o not in current]
    if not missing:
        return False
    conn.execute(p.update().where(where).values(options=orjson.dumps(current + missing).decode()))
    return True


def install_all_local_options(conn: Connection, ruleset: RuleSet) -> int:
    """:func:`install_local_options` for every account; the number of accounts changed."""
    ids = [int(i) for i in conn.execute(select(accounts.c.id)).scalars()]
    return sum(install_local_options(conn, account_id, ruleset) for account_id in ids)
