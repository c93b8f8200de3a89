"""Mapping files: which standard field is which CRM property, of what type, owned by whom.

One YAML file per CRM and object (``<crm>_<object>.yaml`` beside this module). A file is data
with a schema, validated when loaded; it holds no expressions or templates (that is a CVE
surface in other connectors). Transforms, when a CRM needs them, are named Python functions in
the connector.

File shape::

    crm: local
    object: contacts
    crm_object: contacts        # optional: what the CRM calls the object (default: object)
    constants:                  # optional: CRM property → fixed string, written on every record
      source: WHATSAPP
    fields:
      - field: phone            # standard name (model.Contact)
        property: phone         # the CRM's property name
        type: string            # string | integer | number | boolean | datetime | enumeration
                                # | string_list
        direction: both         # whatsapp: we write it | crm: the CRM owns it | both
        conflict: newest        # optional, for direction both: newest | whatsapp | crm
        max_length: 65536       # optional, strings only: longer values are cut with a marker
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAPPINGS_DIR = Path(__file__).parent

TYPES = frozenset(
    {"string", "integer", "number", "boolean", "datetime", "enumeration", "string_list"}
)
DIRECTIONS = frozenset({"whatsapp", "crm", "both"})
CONFLICT_POLICIES = frozenset({"newest", "whatsapp", "crm"})

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# CRM property names differ per CRM (HubSpot snake_case, Salesforce Foo__c, Dynamics new_foo);
# allow identifiers only, so a name can never smuggle syntax into a query or URL.
_PROPERTY = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,119}$")
_FIELD_KEYS = frozenset({"field", "property", "type", "direction", "conflict", "max_length"})
_TOP_KEYS = frozenset({"crm", "object", "crm_object", "constants", "fields"})


class MappingError(ValueError):
    """A mapping file is missing or malformed; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class FieldMapping:
    field: str
    crm_property: str  # ``property`` in the file; renamed so it does not shadow the builtin
    type: str
    direction: str
    conflict: str = "newest"
    max_length: int | None = None  # strings: the CRM property's limit, in characters

    @property
    def writes_to_crm(self) -> bool:
        return self.direction in ("whatsapp", "both")

    @property
    def reads_from_crm(self) -> bool:
        return self.direction in ("crm", "both")


@dataclass(frozen=True, slots=True)
class Mapping:
    crm: str
    object: str
    fields: tuple[FieldMapping, ...]
    source: str  # the file it came from, for error messages
    crm_object: str = ""  # what the CRM calls the object; empty: the same as ``object``
    constants: tuple[tuple[str, str], ...] = ()  # (CRM property, value) on every record

    @property
    def crm_name(self) -> str:
        return self.crm_object or self.object

    @property
    def constant_properties(self) -> dict[str, str]:
        return dict(self.constants)

    def by_field(self, name: str) -> FieldMapping | None:
        return next((f for f in self.fields if f.field == name), None)

    def by_property(self, name: str) -> FieldMapping | None:
        return next((f for f in self.fields if f.crm_property == name), None)


def mapping_path(crm: str, object: str) -> Path:
    for what, value in (("crm", crm), ("object", object)):
        if not _NAME.match(value):
            raise MappingError(f"invalid {what} name {value!r} for a mapping file")
    return MAPPINGS_DIR / f"{crm}_{object}.yaml"


def load_mapping(crm: str, object: str) -> Mapping:
    """Load and validate the packaged mapping for ``crm``'s ``object``."""
    mapping = load_mapping_file(mapping_path(crm, object))
    if (mapping.crm, mapping.object) != (crm, object):
        raise MappingError(
            f"{mapping.source}: declares crm={mapping.crm!r} object={mapping.object!r}, "
            f"expected crm={crm!r} object={object!r}"
        )
    return mapping


def load_mapping_file(path: Path) -> Mapping:
    """Load and validate one mapping file; raises :class:`MappingError` naming the file."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MappingError(f"{path}: mapping file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"{path}: cannot be read ({exc})") from None
    except yaml.YAMLError as exc:
        raise MappingError(f"{path}: not valid YAML ({exc})") from None
    return _validate(doc, str(path))


def _validate(doc: Any, source: str) -> Mapping:
    if not isinstance(doc, dict):
        raise MappingError(f"{source}: the top level must be a mapping")
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise MappingError(f"{source}: unknown top-level keys {sorted(map(str, unknown))}")
    crm, obj, raw_fields = doc.get("crm"), doc.get("object"), doc.get("fields")
    crm_object = doc.get("crm_object", obj)
    for what, value in (("crm", crm), ("object", obj), ("crm_object", crm_object)):
        if not isinstance(value, str) or not _NAME.match(value):
            raise MappingError(f"{source}: '{what}' must be a lower-case name, got {value!r}")
    if not isinstance(raw_fields, list) or not raw_fields:
        raise MappingError(f"{source}: 'fields' must be a non-empty list")
    fields = tuple(_field(item, i, source) for i, item in enumerate(raw_fields, start=1))
    _no_duplicates(source, "field", (f.field for f in fields))
    constants = _constants(doc.get("constants", {}), source)
    properties = [f.crm_property for f in fields] + [prop for prop, _value in constants]
    _no_duplicates(source, "property", properties)
    assert isinstance(crm, str) and isinstance(obj, str) and isinstance(crm_object, str)
    return Mapping(
        crm=crm,
        object=obj,
        fields=fields,
        source=source,
        crm_object=crm_object,
        constants=constants,
    )


def _constants(raw: Any, source: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict):
        raise MappingError(f"{source}: 'constants' must map CRM properties to strings")
    for prop, value in raw.items():
        if not isinstance(prop, str) or not _PROPERTY.match(prop):
            raise MappingError(f"{source}: constant {prop!r} is not an identifier")
        if not isinstance(value, str):
            raise MappingError(f"{source}: constant {prop!r} must be a string, got {value!r}")
    return tuple(sorted(raw.items()))


def _field(item: Any, index: int, source: str) -> FieldMapping:
    where = f"{source}: fields[{index}]"
    if not isinstance(item, dict):
        raise MappingError(f"{where} must be a mapping")
    unknown = set(item) - _FIELD_KEYS
    if unknown:
        raise MappingError(f"{where}: unknown keys {sorted(map(str, unknown))}")
    name, prop = item.get("field"), item.get("property")
    ftype, direction = item.get("type"), item.get("direction")
    conflict = item.get("conflict", "newest")
    if not isinstance(name, str) or not _NAME.match(name):
        raise MappingError(f"{where}: 'field' must be a lower-case name, got {name!r}")
    where = f"{source}: field {name!r}"
    if not isinstance(prop, str) or not _PROPERTY.match(prop):
        raise MappingError(f"{where}: 'property' must be an identifier, got {prop!r}")
    if ftype not in TYPES:
        raise MappingError(f"{where}: 'type' must be one of {sorted(TYPES)}, got {ftype!r}")
    if direction not in DIRECTIONS:
        raise MappingError(
            f"{where}: 'direction' must be one of {sorted(DIRECTIONS)}, got {direction!r}"
        )
    if conflict not in CONFLICT_POLICIES:
        raise MappingError(
            f"{where}: 'conflict' must be one of {sorted(CONFLICT_POLICIES)}, got {conflict!r}"
        )
    max_length = item.get("max_length")
    if max_length is not None and (
        ftype != "string"
        or isinstance(max_length, bool)
        or not isinstance(max_length, int)
        or max_length < 1
    ):
        raise MappingError(
            f"{where}: 'max_length' must be a positive integer on a string field, "
            f"got {max_length!r}"
        )
    return FieldMapping(
        field=name,
        crm_property=prop,
        type=str(ftype),
        direction=str(direction),
        conflict=conflict,
        max_length=max_length,
    )


def _no_duplicates(source: str, what: str, names: Iterable[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise MappingError(f"{source}: {what} {name!r} is mapped twice")
        seen.add(name)


__all__ = [
    "CONFLICT_POLICIES",
    "DIRECTIONS",
    "TYPES",
    "FieldMapping",
    "Mapping",
    "MappingError",
    "load_mapping",
    "load_mapping_file",
    "mapping_path",
]
