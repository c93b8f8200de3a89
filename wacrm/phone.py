"""E.164 normalisation and validation of phone numbers as people type them.

:func:`normalize` takes what a person or a CRM field holds (spaces, dashes, dots, brackets,
``00`` or another international prefix, a Twilio ``whatsapp:`` prefix, Arabic-Indic, Persian
or full-width digits, a national number with a region); :func:`normalize_wa_id` takes a
WhatsApp ``wa_id`` (country code and digits, no ``+``). Both return E.164 or raise
:class:`PhoneError`, whose message names the input and the reason.
"""

from __future__ import annotations

import re
import unicodedata

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, PhoneNumberFormat, ValidationResult

__all__ = [
    "PhoneError",
    "check_region",
    "normalize",
    "normalize_wa_id",
    "try_normalize",
]

_WHATSAPP_PREFIX = "whatsapp:"
_SHOWN_MAX = 64  # an error line quotes at most this much of the input

_PARSE_REASONS = {
    NumberParseException.NOT_A_NUMBER: "not a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too short after the international prefix",
    NumberParseException.TOO_SHORT_NSN: "too short",
    NumberParseException.TOO_LONG: "too long",
}


class PhoneError(ValueError):
    """A phone number (or region) that cannot be normalised; ``reason`` says why."""

    def __init__(self, raw: str, reason: str) -> None:
        self.raw = raw
        self.reason = reason
        super().__init__(f"{_shown(raw)}: {reason}")


def _shown(raw: str) -> str:
    # Quote input that would be invisible or break the one-line error; cut long input.
    text = raw if len(raw) <= _SHOWN_MAX else raw[:_SHOWN_MAX] + "…"
    return text if text.strip() and text.isprintable() else repr(text)


def check_region(region: str | None) -> str | None:
    """Return ``region`` as an upper-case ISO 3166 code (``None``/"" stay ``None``)."""
    if region is None or not region.strip():
        return None
    code = region.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise PhoneError(region, "unknown region code; use a two-letter country code such as US")
    return code


def _clean(raw: str) -> str:
    """Fold the many ways of writing digits and punctuation into ASCII digits and ``+``."""
    # NFKC turns full-width digits, plus and brackets into ASCII; Arabic-Indic and
    # Persian digits are already decimal digits, so map every decimal digit explicitly.
    text = unicodedata.normalize("NFKC", raw)
    out = []
    for char in text:
        if char.isdecimal():
            out.append(str(unicodedata.decimal(char)))
        elif unicodedata.category(char) != "Cf":  # drop RLM/LRM marks around Arabic text
            out.append(char)
    return "".join(out).strip()


def normalize(raw: str, region: str | None = None) -> str:
    """Return ``raw`` in E.164 (``+14155552671``), or raise :class:`PhoneError`.

    ``region`` (ISO 3166, e.g. ``"GB"``) is needed only for national numbers; numbers with
    ``+``, ``00`` or a ``whatsapp:`` prefix carry their own country code.
    """
    default_region = check_region(region)
    text = _clean(raw)
    if not text:
        raise PhoneError(raw, "empty")
    if text[: len(_WHATSAPP_PREFIX)].lower() == _WHATSAPP_PREFIX:
        # Twilio writes "whatsapp:+E164"; tolerate the separators a person adds to it.
        address = re.sub(r"[\s().-]", "", text[len(_WHATSAPP_PREFIX) :])
        return _from_wa_digits(raw, address)
    digits = re.sub(r"[^0-9+]", "", text)
    candidates: list[tuple[str, str | None]] = []
    if default_region is not None or not digits.startswith("00"):
        # phonenumbers strips the region's own international prefix (011 in US, 00 in DE).
        candidates.append((text, default_region))
    if digits.startswith("00"):
        # "00" is the international prefix in most of the world, whatever the region says.
        candidates.append(("+" + digits[2:], None))
    first_error: PhoneError | None = None
    for candidate, cand_region in candidates:
        try:
            number = _parse(raw, candidate, cand_region)
            _check_text(raw, text, number)
            return _valid_e164(raw, number, cand_region)
        except PhoneError as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise first_error


def normalize_wa_id(wa_id: str) -> str:
    """Return the E.164 form of a WhatsApp ``wa_id`` (e.g. ``"16315551234"``).

    A wa_id is the international number without ``+``. Older Mexican (``521…``) and
    Brazilian (no mobile ninth digit) wa_ids are not valid E.164 as they stand; they are
    mapped to the number they stand for.
    """
    text = _clean(wa_id)
    if not text:
        raise PhoneError(wa_id, "empty")
    return _from_wa_digits(wa_id, text)


def try_normalize(raw: str | None, region: str | None = None) -> str | None:
    """Like :func:`normalize`, but ``None`` for a missing or unusable number.

    A bad ``region`` still raises: it is a configuration mistake, and swallowing it would
    quietly drop every number.
    """
    check_region(region)
    if raw is None:
        return None
    try:
        return normalize(raw, region)
    except PhoneError:
        return None


def _from_wa_digits(raw: str, text: str) -> str:
    digits = text.removeprefix("+")
    if not digits:
        raise PhoneError(raw, "empty")
    if not digits.isdigit():
        raise PhoneError(raw, "a WhatsApp id holds only digits (country code and number)")
    number = _parse(raw, "+" + digits, None)
    if not phonenumbers.is_valid_number(number):
        for variant in _legacy_wa_forms(digits):
            fixed = phonenumbers.parse("+" + variant, None)
            if phonenumbers.is_valid_number(fixed):
                return _e164(fixed)
    return _valid_e164(raw, number, None)


def _legacy_wa_forms(digits: str) -> list[str]:
    """E.164 candidates for wa_ids WhatsApp kept from before a national renumbering."""
    forms = []
    # Mexico dropped the mobile "1" after +52 in 2019; WhatsApp still reports 521 + 10 digits.
    if digits.startswith("521") and len(digits) == 13:
        forms.append("52" + digits[3:])
    # Brazil added a leading 9 to mobiles (2012-2016); old wa_ids have 2-digit area + 8 digits.
    if digits.startswith("55") and len(digits) == 12 and digits[4] in "6789":
        forms.append(digits[:4] + "9" + digits[4:])
    return forms


def _parse(raw: str, text: str, region: str | None) -> PhoneNumber:
    try:
        return phonenumbers.parse(text, region)
    except NumberParseException as exc:
        if exc.error_type == NumberParseException.INVALID_COUNTRY_CODE:
            if text.lstrip().startswith("+"):
                reason = "unknown country code after +"
            else:
                reason = "national number and no region; add the country code (+…) or a region"
        else:
            reason = _PARSE_REASONS.get(exc.error_type, "not a phone number")
        raise PhoneError(raw, reason) from None


def _check_text(raw: str, text: str, number: PhoneNumber) -> None:
    if number.extension:
        raise PhoneError(raw, "has an extension, which a WhatsApp number cannot have")
    # phonenumbers reads letters as keypad digits (1-800-FLOWERS) and finds numbers inside
    # prose; in a CRM field either is a mistake, not a number.
    body = text[4:] if text[:4].lower() == "tel:" else text
    if any(char.isalpha() for char in body):
        raise PhoneError(raw, "contains letters")


def _valid_e164(raw: str, number: PhoneNumber, region: str | None) -> str:
    cc = number.country_code
    possible = phonenumbers.is_possible_number_with_reason(number)
    where = f"country code +{cc}"
    if possible == ValidationResult.INVALID_COUNTRY_CODE:
        raise PhoneError(raw, f"unknown {where}")
    if possible == ValidationResult.TOO_SHORT:
        raise PhoneError(raw, f"too short for {where}")
    if possible == ValidationResult.TOO_LONG:
        raise PhoneError(raw, f"too long for {where}")
    if possible == ValidationResult.INVALID_LENGTH:
        raise PhoneError(raw, f"wrong length for {where}")
    if possible == ValidationResult.IS_POSSIBLE_LOCAL_ONLY:
        raise PhoneError(raw, "a local number; add the area code")
    if not phonenumbers.is_valid_number(number):
        if region and phonenumbers.country_code_for_region(region) == cc:
            where = f"region {region}"
        raise PhoneError(raw, f"not a valid number for {where}")
    return _e164(number)


def _e164(number: PhoneNumber) -> str:
    return str(phonenumbers.format_number(number, PhoneNumberFormat.E164))
