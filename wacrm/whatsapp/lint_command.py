"""``wacrm lint MESSAGE_FILE``: check a message against the content and size policy before
it is sent, and explain each finding; also the lint part of ``wacrm rules check``.

A plain text file is one text message (findings give its line and column); a ``.json`` file
is a Cloud API send body or a list of them (findings point at the field in the file).
Exit status: 0 clean or warnings only, 1 errors (or warnings with ``--strict`` or
``WACRM_CONTENT_POLICY=block``), 2 a usage mistake.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import click

from wacrm.cli_support import UsageError, settings_from, user_errors
from wacrm.config import ConfigError, Settings
from wacrm.whatsapp import json_positions
from wacrm.whatsapp.content_policy import (
    ContentPolicy,
    Finding,
    blocking,
    lint_send_body,
    split_where,
)
from wacrm.whatsapp.content_text import line_col

_REJECTED = "Meta rejects the whole message with a parameter error (such as 131009); "
ADVICE: Mapping[str, str] = MappingProxyType(
    {
        "sensitive-word": "why: words typical of bulk promotion get messages reported and "
        "blocked, which lowers the number's quality rating until Meta limits it. "
        "What to do: say plainly what the customer gets, or send offers as an approved "
        "marketing template to people who opted in.",
        "link-shortener": "why: shortened links hide where they lead and are a top cause of "
        "spam flags. What to do: link your own domain in full (https://example.com/offer), "
        "or put the link in a call-to-action URL button.",
        "text-too-long": _REJECTED + "split the text into several messages, or link to the "
        "full text.",
        "text-empty": "WhatsApp does not deliver an empty text: write the message.",
        "caption-too-long": _REJECTED + "shorten the caption and send the rest as a text.",
        "caption-not-allowed": _REJECTED + "send the words as a text message of their own.",
        "field-too-long": _REJECTED + "shorten the field to the limit.",
        "field-empty": _REJECTED + "fill in the field.",
        "button-count": _REJECTED + "for more than 3 choices send a list message (up to 10 rows).",
        "row-count": _REJECTED + "a list holds at most 10 rows in all its sections; split "
        "the choices over two messages.",
        "section-count": _REJECTED + "use at most 10 sections.",
        "duplicate-id": _REJECTED + "give every button or row an id of its own; the reply "
        "carries the id, so repeats cannot be told apart.",
        "duplicate-title": _REJECTED + "give every button a title of its own.",
        "media-missing": _REJECTED + "give either the id of an uploaded file (preferred) or "
        "a public link, not both.",
        "media-too-large": "Meta refuses media over the limit for its type. Compress or "
        "resize it, or send it as a document (up to 100 MB).",
        "media-type-unsupported": "WhatsApp only delivers these types for this message type; "
        "a mismatch fails with 131053. Convert the file, or send it as a document.",
        "sticker-maybe-too-large": "a static sticker may be 100 KB at most, an animated one "
        "500 KB; shrink it unless it is animated.",
        "location-out-of-range": _REJECTED + "latitude must be within ±90, longitude ±180.",
        "unknown-type": _REJECTED + "see the Cloud API message types.",
        "bad-shape": _REJECTED + "see the Cloud API reference for this message type.",
    }
)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _json_kind(value: object) -> str:
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "a number"


def _read(name: str) -> tuple[str, str]:
    """(label, text) of MESSAGE_FILE; ``-`` is stdin."""
    if name == "-":
        return "<stdin>", sys.stdin.read()
    path = Path(name)
    if not path.exists():
        raise UsageError(f"{name}: no such file")
    if path.is_dir():
        raise UsageError(f"{name}: is a directory, not a message file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{name}: cannot read it ({exc.strerror})") from None
    try:
        return name, data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{name}: not UTF-8 text (byte {exc.start} is invalid)") from None


def _lint_text(text: str, policy: ContentPolicy) -> list[tuple[int, int, str, Finding]]:
    text = text.replace("\r\n", "\n")
    text = text.removesuffix("\n")  # the newline an editor adds at the end is not sent
    body = {"messaging_product": "whatsapp", "type": "text", "text": {"body": text}}
    out = []
    for finding in lint_send_body(body, policy):
        _field, line, col = split_where(finding.where)
        out.append((line or 1, col or 1, finding.message, finding))
    return out


def _lint_json(label: str, raw: str, policy: ContentPolicy) -> list[tuple[int, int, str, Finding]]:
    try:
        data = json_positions.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{label}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    bodies = data if isinstance(data, list) else [data]
    if not bodies:
        raise UsageError(f"{label}: an empty list; there is no message to check")
    out = []
    for index, body in enumerate(bodies):
        prefix = f"message [{index}]: " if isinstance(data, list) else ""
        if not isinstance(body, dict):
            what = f"item {index}" if isinstance(data, list) else "the file"
            raise UsageError(
                f"{label}: {what} is {_json_kind(body)}, not a send body (a JSON object)"
            )
        for finding in lint_send_body(body, policy):
            field, line, col = split_where(finding.where)
            text = finding.message
            if field and not text.startswith(field):
                text = f"{field}: {text}"
            if line:
                text += f" (at line {line}, column {col} of the text)"
            at = line_col(raw, json_positions.position(body, field))
            out.append((*at, prefix + text, finding))
    return out


def _report(
    lines: Iterable[tuple[str, str, Finding]], policy: ContentPolicy, strict: bool
) -> tuple[list[Finding], bool]:
    """Echo ``location: severity code: explanation`` lines, the advice once per code; the
    findings and whether they fail the run."""
    findings: list[Finding] = []
    advised: set[str] = set()
    for place, explanation, finding in lines:
        click.echo(f"{place}: {finding.severity} {finding.code}: {explanation}")
        if finding.code not in advised and finding.code in ADVICE:
            advised.add(finding.code)
            click.echo(f"    {ADVICE[finding.code]}")
        findings.append(finding)
    fails = bool(blocking(findings, policy)) or (strict and bool(findings))
    return findings, fails


def _summary(findings: Sequence[Finding], policy: ContentPolicy, strict: bool) -> str:
    errors = sum(f.severity == "error" for f in findings)
    warnings = len(findings) - errors
    if not findings:
        return "clean: no findings"
    text = f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}"
    if warnings and (strict or policy.block_warnings):
        why = "--strict" if strict else "WACRM_CONTENT_POLICY=block"
        text += f" (warnings fail: {why})"
    return text


@click.command("lint")
@click.argument("message_file", metavar="MESSAGE_FILE")
@click.option(
    "--type",
    "file_type",
    type=click.Choice(["text", "json"]),
    help="How to read MESSAGE_FILE (default: json for a .json file, else text).",
)
@click.option("--strict", is_flag=True, help="Warnings fail too (exit 1).")
@click.pass_context
@user_errors
def lint_cmd(ctx: click.Context, message_file: str, file_type: str | None, strict: bool) -> None:
    """Check a message before sending it: WhatsApp's size limits (errors) and words and
    links that draw spam flags (warnings), each explained. MESSAGE_FILE is a text file (the
    message), a .json Cloud API send body or a list of them, or - for stdin."""
    policy = ContentPolicy.from_settings(settings_from(ctx))
    label, raw = _read(message_file)
    kind = file_type or ("json" if message_file.lower().endswith(".json") else "text")
    found = _lint_text(raw, policy) if kind == "text" else _lint_json(label, raw, policy)
    findings, fails = _report(
        ((f"{label}:{line}:{col}", text, f) for line, col, text, f in found), policy, strict
    )
    click.echo(f"{label}: {_summary(findings, policy, strict)}")
    if fails:
        ctx.exit(1)


def lint_rule_texts(texts: Iterable[tuple[str, str]], settings: Settings) -> None:
    """For ``wacrm rules check``: lint each (where, text) an auto-reply sends; print nothing
    when all are clean, else the findings and a count. Exits 1 when one would stop a send."""
    try:
        policy = ContentPolicy.from_settings(settings)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    lines = []
    for where, text in texts:
        body = {"type": "text", "text": {"body": text}}
        for finding in lint_send_body(body, policy):
            _field, line, col = split_where(finding.where)
            spot = f" (line {line}, column {col})" if line else ""
            lines.append((where + spot, finding.message, finding))
    if not lines:
        return
    findings, fails = _report(lines, policy, strict=False)
    click.echo(f"auto-reply texts: {_summary(findings, policy, strict=False)}")
    if fails:
        raise click.exceptions.Exit(1)
