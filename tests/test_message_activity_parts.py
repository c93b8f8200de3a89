"""The parts of message activity: cutting to a limit, descriptions, the mapping files."""

from __future__ import annotations

from pathlib import Path

import pytest

from wacrm.connectors.base import TRUNCATION_MARKER, fit_text
from wacrm.mappings import MappingError, load_mapping, load_mapping_file
from wacrm.store.keys import message_record_key
from wacrm.workers.message_activity import describe_outbound


@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [
        ("short", 10, "short"),
        ("exactly10!", 10, "exactly10!"),
        ("x" * 30, 20, "x" * (20 - len(TRUNCATION_MARKER)) + TRUNCATION_MARKER),
        ("abcdef", 3, "abc"),  # no room for the marker: cut only
        ("anything", None, "anything"),
    ],
)
def test_given_text_and_limit_when_fitted_then_cut_with_marker_only_when_too_long(
    value: str, limit: int | None, expected: str
) -> None:
    fitted = fit_text(value, limit)
    assert fitted == expected
    assert limit is None or len(fitted) <= limit


def test_given_provider_id_when_keyed_then_msg_prefix_distinct_from_ticket_key() -> None:
    assert message_record_key("wamid.X") == "msg:wamid.X"


@pytest.mark.parametrize(
    ("kind", "text", "body", "expected"),
    [
        ("text", "hello", {"type": "text", "text": {"body": "hello"}}, "hello"),
        ("text", None, {"type": "text", "text": {"body": "from body"}}, "from body"),
        (
            "template",
            None,
            {"type": "template", "template": {"name": "order_update", "language": {"code": "en"}}},
            "[template] order_update (en)",
        ),
        (
            "image",
            None,
            {"type": "image", "image": {"link": "x", "caption": "receipt"}},
            "[image] receipt",
        ),
        (
            "document",
            None,
            {"type": "document", "document": {"filename": "invoice.pdf"}},
            "[document] invoice.pdf",
        ),
        (
            "interactive",
            None,
            {"type": "interactive", "interactive": {"body": {"text": "Pick one"}}},
            "[reply] Pick one",
        ),
        ("audio", None, {}, "[audio]"),
    ],
)
def test_given_outbound_body_when_described_then_short_readable_text(
    kind: str, text: str | None, body: dict[str, object], expected: str
) -> None:
    assert describe_outbound(kind, text, body) == expected


def test_given_hubspot_messages_mapping_when_loaded_then_communications_with_constants() -> None:
    mapping = load_mapping("hubspot", "messages")

    assert (mapping.object, mapping.crm_name) == ("messages", "communications")
    assert mapping.constant_properties == {
        "hs_communication_channel_type": "WHATS_APP",
        "hs_communication_logged_from": "CRM",
    }
    body = mapping.by_field("body")
    assert body is not None
    assert (body.crm_property, body.max_length) == ("hs_communication_body", 65_536)
    timestamp = mapping.by_field("timestamp")
    assert timestamp is not None and timestamp.crm_property == "hs_timestamp"
    assert all(f.writes_to_crm and not f.reads_from_crm for f in mapping.fields)


def test_given_local_messages_mapping_when_loaded_then_same_standard_fields_as_hubspot() -> None:
    local, hubspot = load_mapping("local", "messages"), load_mapping("hubspot", "messages")

    assert local.crm_name == "messages"
    assert {f.field for f in local.fields} == {f.field for f in hubspot.fields}


HEAD = "crm: local\nobject: messages\n"
FIELD = "  - {field: body, property: body, type: string, direction: whatsapp}\n"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (HEAD + "crm_object: 'a/b'\nfields:\n" + FIELD, "'crm_object' must be a lower-case name"),
        (HEAD + "constants: [a]\nfields:\n" + FIELD, "'constants' must map CRM properties"),
        (HEAD + "constants: {body: X}\nfields:\n" + FIELD, "property 'body' is mapped twice"),
        (HEAD + "constants: {'a b': X}\nfields:\n" + FIELD, "constant 'a b' is not an identifier"),
        (HEAD + "constants: {kind: 3}\nfields:\n" + FIELD, "constant 'kind' must be a string"),
        (
            HEAD + "fields:\n  - {field: n, property: n, type: integer, direction: whatsapp,"
            " max_length: 5}\n",
            "'max_length' must be a positive integer on a string field",
        ),
        (
            HEAD + "fields:\n  - {field: b, property: b, type: string, direction: whatsapp,"
            " max_length: 0}\n",
            "'max_length' must be a positive integer",
        ),
    ],
)
def test_given_malformed_activity_mapping_when_loaded_then_refused_with_reason(
    tmp_path: Path, body: str, problem: str
) -> None:
    path = tmp_path / "local_messages.yaml"
    path.write_text(body, encoding="utf-8")

    with pytest.raises(MappingError, match=problem.replace("(", r"\(")):
        load_mapping_file(path)
