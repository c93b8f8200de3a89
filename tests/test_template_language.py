"""A contact's language preference as Meta's template language code."""

from __future__ import annotations

import pytest

from wacrm.whatsapp.template_language import template_language


@pytest.mark.parametrize(
    ("preference", "code"),
    [
        ("es", "es"),
        ("ar", "ar"),
        ("EN", "en"),
        ("pt", "pt_BR"),  # Meta has no bare Portuguese
        ("zh", "zh_CN"),
        ("pt-br", "pt_BR"),  # a web locale, as a CRM may write it
        ("pt_PT", "pt_PT"),
        ("en-gb", "en_GB"),
        ("fil", "fil"),
        (" es ", "es"),
        ("es-419", "es"),  # Latin American Spanish: no such code at Meta
    ],
)
def test_given_contact_language_when_mapped_then_metas_template_code(
    preference: str, code: str
) -> None:
    assert template_language(preference, "en_US") == code


@pytest.mark.parametrize("preference", [None, "", "Spanish", "e", "es-ES-x", "12"])
def test_given_no_usable_language_when_mapped_then_the_default(preference: str | None) -> None:
    assert template_language(preference, "en_US") == "en_US"
