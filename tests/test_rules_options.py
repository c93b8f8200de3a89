"""Tag and priority options from the rules, and their installation into the embedded CRM."""

from __future__ import annotations

from pathlib import Path

import orjson
from sqlalchemy import Engine
from test_rules_support import rows

from wacrm.connectors.local import LocalConnector
from wacrm.rules.loader import load_rules, load_ruleset
from wacrm.rules.options import install_all_local_options, install_local_options, options_from
from wacrm.store.schema import local_crm_properties


def test_given_shipped_rules_when_options_read_then_every_tag_rules_use_is_listed() -> None:
    options = options_from(load_ruleset())

    assert options == {
        "tags": ["delivery-failed", "handover", "no-reply-48h", "price-enquiry"],
        "priority": ["high", "medium", "low"],
    }


def test_given_tags_in_conditions_and_triggers_when_options_read_then_included(
    tmp_path: Path,
) -> None:
    (tmp_path / "r.yaml").write_text(
        "version: 1\nrules:\n"
        "  - name: a\n    when: {field_changed: {field: tags, to: [vip]}}\n"
        "    if: [{contact: {field: tags, not_contains: blocked}}]\n"
        "    then: [{remove_tags: [cold]}, {hand_over: {tag: human}}]\n",
        encoding="utf-8",
    )

    tags = options_from(load_rules([tmp_path]))["tags"]

    assert tags == ["blocked", "cold", "human", "vip"]


def test_given_embedded_crm_when_options_installed_twice_then_second_is_no_op(
    engine: Engine, account_id: int
) -> None:
    ruleset = load_ruleset()

    with engine.begin() as conn:
        assert install_local_options(conn, account_id, ruleset) is True
    with engine.begin() as conn:
        assert install_local_options(conn, account_id, ruleset) is False

    shown = {p.name: p for p in LocalConnector(engine, account_id).list_properties("contacts")}
    assert shown["whatsapp_tags"].options == (
        "delivery-failed",
        "handover",
        "no-reply-48h",
        "price-enquiry",
    )
    assert shown["priority"].type == "enumeration"
    assert shown["priority"].options == ("high", "medium", "low")


def test_given_options_an_admin_added_when_installed_then_kept_and_new_ones_appended(
    engine: Engine, account_id: int
) -> None:
    LocalConnector(engine, account_id).define_property(
        "contacts", "whatsapp_tags", label="Tags", type="string_list", options=["vip", "handover"]
    )

    with engine.begin() as conn:
        changed = install_all_local_options(conn, load_ruleset())

    assert changed == 1
    (row,) = rows(engine, local_crm_properties, name="whatsapp_tags")
    assert orjson.loads(row.options) == [
        "vip",
        "handover",
        "delivery-failed",
        "no-reply-48h",
        "price-enquiry",
    ]
