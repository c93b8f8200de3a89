"""Cloud-API-shaped message bodies (what the outbox stores, see
:mod:`wacrm.whatsapp.meta_bodies`) translated into Twilio ``Messages.json`` fields.

- ``text`` → ``Body``.
- ``image`` / ``document`` / ``video`` / ``audio`` with a public ``link`` → ``MediaUrl``, the
  caption (if any) as ``Body``. Twilio fetches media from a URL; a Cloud API media *id* means
  nothing to Twilio.
- ``template`` → ``ContentSid`` + ``ContentVariables``: Twilio sends WhatsApp templates only
  as Content API templates (since 2025-04-01 a template in ``Body`` outside the 24 h window
  fails with 63016, twilio.com/docs/api/errors/63016). The Content SID for a template comes
  from ``WACRM_TWILIO_CONTENT_SIDS``; body text parameters ``{{1}}``, ``{{2}}``… become the
  variables ``"1"``, ``"2"``…
- anything else (location, interactive buttons/lists, stickers, reactions) has no plain
  ``Messages.json`` form: :class:`NotSendable`, a permanent failure with the reason.

Twilio takes at most 1,600 characters in ``Body`` and in each ``ContentVariables`` value, on
every channel (WhatsApp too), less than Meta's 4,096 for a text: a longer one is
:class:`NotSendable` here, with the code Twilio would answer (21617, 21658), so it costs no
request and no pacing token.

A reply's ``context`` (quoting the message answered) and ``preview_url`` have no
``Messages.json`` parameter and are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wacrm.config import ConfigError
from wacrm.whatsapp.content_text import line_col
from wacrm.whatsapp.twilio_errors import TWILIO_ERROR_TABLE

CONTENT_SIDS_SETTING = "WACRM_TWILIO_CONTENT_SIDS"
_CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")  # twilio.com/docs/api/errors/21655
_MEDIA_KINDS = ("image", "document", "video", "audio")
# Twilio's limit for Body and for each ContentVariables value, in characters, on every
# channel: https://www.twilio.com/docs/api/errors/21617 ("The concatenated message body
# exceeds the 1600 character limit"), https://www.twilio.com/docs/api/errors/21658
# ("Parameter exceeded character limit": a Content template variable value, too), and
# https://support.twilio.com/hc/en-us/articles/360033806753 (WhatsApp included). Counted as
# Python counts (code points): a text Twilio counts longer still costs one request, which
# 21617 then fails without a retry.
MAX_BODY = 1600
BODY_TOO_LONG = 21617
VARIABLE_TOO_LONG = 21658

# (template name, language code or None for any language) → Content SID
ContentSids = Mapping[tuple[str, str | None], str]


@dataclass(frozen=True, slots=True)
class TwilioRequest:
    """The fields of one ``Messages.json`` POST besides ``From`` and ``StatusCallback``."""

    to: str
    body: str | None = None
    media_url: str | None = None
    content_sid: str | None = None
    content_variables: Mapping[str, str] | None = None


class NotSendable(ValueError):
    """The body cannot be sent through Twilio as it is; ``code`` is stored on the message."""

    def __init__(self, code: str, title: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.title = title
        self.reason = reason


def parse_content_sids(raw: str) -> dict[tuple[str, str | None], str]:
    """``"hello=HX…, order_update/pt_BR=HX…"`` → the mapping; a malformed entry is a
    :class:`~wacrm.config.ConfigError` naming the setting."""
    found: dict[tuple[str, str | None], str] = {}
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        key, sep, sid = (part.strip() for part in entry.partition("="))
        name, _, language = (part.strip() for part in key.partition("/"))
        if not sep or not name or not _CONTENT_SID.match(sid):
            raise ConfigError(
                f"{CONTENT_SIDS_SETTING}: {entry!r} is not NAME[/LANG]=HX<32 hex digits>"
            )
        found[(name, language or None)] = sid
    return found


def _unsupported(kind: str, why: str) -> NotSendable:
    return NotSendable("twilio_unsupported", f"{kind} not supported by Twilio", why)


def _refuse_long(value: str, where: str, parameter: str, code: int) -> None:
    """Raise :class:`NotSendable` with Twilio's ``code`` if ``value`` is over its limit."""
    if len(value) <= MAX_BODY:
        return
    line, col = line_col(value, MAX_BODY)
    raise NotSendable(
        str(code),
        TWILIO_ERROR_TABLE[code].title,
        f"{where} is {len(value)} characters; Twilio's limit for {parameter} is {MAX_BODY} "
        f"({len(value) - MAX_BODY} over, from line {line}, column {col}); Twilio would refuse "
        f"it with {code}",
    )


def _template(template: Any, to: str, content_sids: ContentSids) -> TwilioRequest:
    if not isinstance(template, Mapping) or not template.get("name"):
        raise _unsupported("template", "the stored template has no name")
    name = str(template["name"])
    language = template.get("language")
    code = str(language.get("code")) if isinstance(language, Mapping) else None
    sid = content_sids.get((name, code)) or content_sids.get((name, None))
    if sid is None:
        raise NotSendable(
            "twilio_no_content_sid",
            "No Twilio Content SID for the template",
            f"template {name}/{code} has no Twilio Content SID: add {name}/{code}=HX… (or "
            f"{name}=HX…) to {CONTENT_SIDS_SETTING}",
        )
    variables: dict[str, str] = {}
    for component in template.get("components") or ():
        parameters = component.get("parameters") if isinstance(component, Mapping) else None
        if not parameters:
            continue
        if component.get("type") != "body":
            raise _unsupported(
                "template",
                f"template {name}: only body text parameters map to ContentVariables, not "
                f"{component.get('type')} parameters",
            )
        for parameter in parameters:
            if not isinstance(parameter, Mapping) or parameter.get("type") != "text":
                kind = parameter.get("type") if isinstance(parameter, Mapping) else parameter
                raise _unsupported(
                    "template",
                    f"template {name}: only text parameters map to ContentVariables, not {kind}",
                )
            key = str(len(variables) + 1)
            variables[key] = str(parameter.get("text", ""))
            _refuse_long(
                variables[key],
                f"template {name} body parameter {key}",
                f'the ContentVariables value "{key}"',
                VARIABLE_TOO_LONG,
            )
    return TwilioRequest(to=to, content_sid=sid, content_variables=variables or None)


def twilio_request(body: Mapping[str, Any], content_sids: ContentSids) -> TwilioRequest:
    """The Twilio form for a Cloud API ``body``; raises :class:`NotSendable`."""
    to = str(body.get("to") or "")
    kind = str(body.get("type") or "text")
    if not to:
        raise NotSendable("twilio_unsupported", "No recipient", "the stored body has no 'to'")
    if kind == "text":
        text = body.get("text")
        value = text.get("body") if isinstance(text, Mapping) else None
        if not value:
            raise _unsupported("text", "the text message has no body")
        _refuse_long(str(value), "text.body", "Body", BODY_TOO_LONG)
        return TwilioRequest(to=to, body=str(value))
    if kind in _MEDIA_KINDS:
        media = body.get(kind)
        link = media.get("link") if isinstance(media, Mapping) else None
        if not link:
            raise _unsupported(
                kind,
                f"{kind} by Cloud API media id: Twilio sends media only from a public URL "
                "(MediaUrl); give a link",
            )
        caption = media.get("caption") if isinstance(media, Mapping) else None
        if caption:
            _refuse_long(str(caption), f"{kind}.caption", "Body", BODY_TOO_LONG)
        return TwilioRequest(to=to, body=str(caption) if caption else None, media_url=str(link))
    if kind == "template":
        return _template(body.get("template"), to, content_sids)
    if kind in ("location", "interactive"):
        raise _unsupported(
            kind,
            f"{kind} messages have no plain Twilio Messages.json form (only as a Content API "
            "template); send text or a template instead",
        )
    raise _unsupported(kind, f"{kind} messages are not mapped to Twilio")
