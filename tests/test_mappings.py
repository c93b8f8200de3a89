"""Mapping files: the packaged ones load, malformed ones are refused with file and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from wacrm.mappings import MappingError, load_mapping, load_mapping_file

VALID_FIELD = "  - {field: phone, property: phone, type: string, direction: both}\n"


def test_given_packaged_local_contacts_mapping_when_loaded_then_fields_and_directions() -> None:
    mapping = load_mapping("local", "contacts")

    assert (mapping.crm, mapping.object) == ("local", "contacts")
    name = mapping.by_field("name")
    assert name is not None
    assert (name.crm_property, name.direction, name.conflict) == ("full_name", "both", "newest")
    wa_id = mapping.by_property("whatsapp_id")
    assert wa_id is not None
    assert (wa_id.writes_to_crm, wa_id.reads_from_crm) == (True, False)
    order = mapping.by_field("order_status_code")
    assert order is not None
    assert (order.writes_to_crm, order.reads_from_crm) == (False, True)


def test_given_no_mapping_file_when_loaded_then_error_names_the_missing_file() -> None:
    with pytest.raises(MappingError, match=r"local_deals\.yaml: mapping file not found"):
        load_mapping("local", "deals")


def test_given_path_like_names_when_loaded_then_refused_before_any_file_access() -> None:
    with pytest.raises(MappingError, match="invalid crm name"):
        load_mapping("../../etc", "passwd")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("- a\n", "top level must be a mapping"),
        ("crm: local\nobject: contacts\nfields: []\n", "'fields' must be a non-empty list"),
        ("crm: Local\nobject: contacts\nfields:\n" + VALID_FIELD, "'crm' must be"),
        ("crm: local\nobject: contacts\nextra: 1\nfields:\n" + VALID_FIELD, "unknown top-level"),
        (
            "crm: local\nobject: contacts\nfields:\n"
            "  - {field: phone, property: 'phone; drop', type: string, direction: both}\n",
            "'property' must be an identifier",
        ),
        (
            "crm: local\nobject: contacts\nfields:\n"
            "  - {field: phone, property: phone, type: text, direction: both}\n",
            "'type' must be one of",
        ),
        (
            "crm: local\nobject: contacts\nfields:\n"
            "  - {field: phone, property: phone, type: string, direction: sideways}\n",
            "'direction' must be one of",
        ),
        (
            "crm: local\nobject: contacts\nfields:\n"
            "  - {field: phone, property: phone, type: string, direction: both, conflict: x}\n",
            "'conflict' must be one of",
        ),
        (
            "crm: local\nobject: contacts\nfields:\n"
            "  - {field: phone, property: phone, type: string, direction: both, "
            "transform: '{{ value | upper }}'}\n",
            "unknown keys ['transform']",
        ),
        (
            "crm: local\nobject: contacts\nfields:\n" + VALID_FIELD * 2,
            "field 'phone' is mapped twice",
        ),
        (
            "crm: local\nobject: contacts\nfields:\n"
            + VALID_FIELD
            + "  - {field: mobile, property: phone, type: string, direction: both}\n",
            "property 'phone' is mapped twice",
        ),
        ("crm: local\nfields: [\n", "not valid YAML"),
    ],
)
def test_given_malformed_mapping_file_when_loaded_then_error_names_file_and_problem(
    tmp_path: Path, body: str, problem: str
) -> None:
    path = tmp_path / "local_contacts.yaml"
    path.write_text(body, encoding="utf-8")

    with pytest.raises(MappingError) as excinfo:
        load_mapping_file(path)

    assert str(path) in str(excinfo.value)
    assert problem in str(excinfo.value)
