"""Secrets never reach fixtures or cassettes: recorded HTTP must have its credentials filtered."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# Credential shapes as they would appear if a recording forgot to filter them.
_LEAKS = {
    "bearer token": re.compile(r"Bearer\s+(?!\*|<|REDACTED|FILTERED)[A-Za-z0-9._\-]{8,}"),
    "Meta access token": re.compile(r"\bEAA[A-Za-z0-9]{20,}"),
    "Twilio auth header": re.compile(r"Basic\s+(?!\*|<|REDACTED|FILTERED)[A-Za-z0-9+/=]{12,}"),
    "HubSpot private app token": re.compile(r"\bpat-[a-z0-9]{2,4}-[0-9a-f-]{20,}"),
    "authorization header": re.compile(r"(?im)^\s*-?\s*['\"]?authorization['\"]?\s*:\s*\S{8,}"),
}


def _fixture_files() -> list[Path]:
    return sorted(p for p in FIXTURES.rglob("*") if p.is_file())


def test_given_fixtures_dir_when_listed_then_it_holds_recordings() -> None:
    assert any(p.suffix in {".yaml", ".yml"} for p in _fixture_files()), "no cassettes found"


@pytest.mark.parametrize("path", _fixture_files(), ids=lambda p: str(p.relative_to(FIXTURES)))
def test_given_fixture_file_when_scanned_then_no_credentials(path: Path) -> None:
    text = path.read_text(encoding="utf-8", errors="replace")

    found = [name for name, pattern in _LEAKS.items() if pattern.search(text)]

    assert not found, f"{path.name} contains what looks like a {', '.join(found)}"


def test_given_leaky_cassette_text_when_scanned_then_detected() -> None:
    leaky = "headers:\n  Authorization:\n  - Bearer EAAGm0PX4ZCpsBAKZAZBb1234567890abcdef\n"

    assert _LEAKS["bearer token"].search(leaky)
    assert _LEAKS["Meta access token"].search(leaky)
