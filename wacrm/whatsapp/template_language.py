"""The template language code for a contact's language preference.

Contacts carry a language as the CRM or the language detector wrote it: ISO 639-1 (``es``),
sometimes with a region in a web locale's form (``pt-BR``, ``en_gb``). A Cloud API template
is sent with Meta's code, case-sensitive, underscore-separated (``pt_BR``, not ``pt-br``),
and Portuguese and Chinese have only regional codes (Meta's supported-languages reference,
https://developers.facebook.com/documentation/business-messaging/whatsapp/templates/supported-languages).
"""

from __future__ import annotations

import re

# Languages Meta lists only with a region: the region taken when the contact gives none.
_REGION_REQUIRED = {"pt": "pt_BR", "zh": "zh_CN"}
# A language, and maybe a region: two letters, or a UN M.49 area such as 419 (Latin America),
# which Meta has no codes for (its language alone is taken).
_PREFERENCE = re.compile(r"^([A-Za-z]{2,3})(?:[-_]([A-Za-z]{2}|[0-9]{3}))?$")


def template_language(preference: str | None, default: str) -> str:
    """Meta's code for ``preference`` (``es`` → ``es``, ``pt-br`` → ``pt_BR``, ``pt`` →
    ``pt_BR``); ``default`` when there is none or it is not a language code."""
    found = _PREFERENCE.match((preference or "").strip())
    if found is None:
        return default
    language, region = found.group(1).lower(), found.group(2)
    if region and region.isalpha():
        return f"{language}_{region.upper()}"
    return _REGION_REQUIRED.get(language, language)
