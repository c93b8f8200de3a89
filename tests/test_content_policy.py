"""Content and size policy: every limit at its boundary, words and links in any script."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wacrm.config import ConfigError, Settings, load_settings
from wacrm.whatsapp.content_media import KB, MB
from wacrm.whatsapp.content_policy import (
    ContentPolicy,
    Finding,
    blocking,
    lint_media_file,
    lint_send_body,
    split_where,
)

POLICY = ContentPolicy()


def text(body: Any) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "to": "+15551234567",
        "type": "text",
        "text": {"body": body},
    }


def media(kind: str, **obj: Any) -> dict[str, Any]:
    return {"type": kind, kind: {"id": "1013859600285441", **obj}}


def buttons(*titles: str) -> dict[str, Any]:
    return {
        "type": "interactive",
        "interactive": {
            "type": "button",
            "body": {"text": "Pick one"},
            "action": {
                "buttons": [
                    {"type": "reply", "reply": {"id": f"b{i}", "title": t}}
                    for i, t in enumerate(titles)
                ]
            },
        },
    }


def list_message(*sections: list[dict[str, Any]], titles: bool = True) -> dict[str, Any]:
    return {
        "type": "interactive",
        "interactive": {
            "type": "list",
            "body": {"text": "Our menu"},
            "action": {
                "button": "See options",
                "sections": [
                    {**({"title": f"Section {i}"} if titles else {}), "rows": rows}
                    for i, rows in enumerate(sections)
                ],
            },
        },
    }


def rows(count: int, start: int = 0, **extra: str) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "title": f"Row {i}", **extra} for i in range(start, start + count)]


def codes(findings: list[Finding]) -> list[str]:
    return [f.code for f in findings]


# --- limits ---------------------------------------------------------------------------------


def test_given_text_of_4096_chars_when_linted_then_clean() -> None:
    assert lint_send_body(text("a" * 4096), POLICY) == []


def test_given_text_of_4097_chars_when_linted_then_error_points_at_first_char_over() -> None:
    [finding] = lint_send_body(text("a" * 4097), POLICY)

    assert finding.code == "text-too-long"
    assert finding.severity == "error"
    assert "4097 characters; the limit is 4096" in finding.message
    assert finding.where == "text.body, line 1, column 4097"


def test_given_multiline_text_over_limit_when_linted_then_line_and_column_of_char_4097() -> None:
    body = "a" * 99 + "\n" + "b" * 4000  # char 4097 (index 4096) is on line 2, column 3997
    [finding] = lint_send_body(text(body), POLICY)

    assert split_where(finding.where) == ("text.body", 2, 3997)


@pytest.mark.parametrize("body", ["", "   \n", None])
def test_given_empty_or_missing_text_when_linted_then_error(body: Any) -> None:
    assert codes(lint_send_body(text(body), POLICY)) == ["text-empty"]


def test_given_body_without_type_when_linted_then_checked_as_text_like_meta() -> None:
    assert codes(lint_send_body({"text": {"body": "x" * 4097}}, POLICY)) == ["text-too-long"]


def test_given_unknown_type_when_linted_then_error_names_it() -> None:
    [finding] = lint_send_body({"type": "carousel", "carousel": {}}, POLICY)

    assert finding.code == "unknown-type"
    assert "'carousel'" in finding.message


@pytest.mark.parametrize("kind", ["image", "video", "document"])
def test_given_caption_at_1024_ok_and_1025_error(kind: str) -> None:
    assert lint_send_body(media(kind, caption="c" * 1024), POLICY) == []
    [finding] = lint_send_body(media(kind, caption="c" * 1025), POLICY)
    assert (finding.code, finding.where) == (
        "caption-too-long",
        f"{kind}.caption, line 1, column 1025",
    )


@pytest.mark.parametrize("kind", ["audio", "sticker"])
def test_given_caption_on_audio_or_sticker_when_linted_then_error(kind: str) -> None:
    assert codes(lint_send_body(media(kind, caption="hi"), POLICY)) == ["caption-not-allowed"]


def test_given_media_with_neither_or_both_id_and_link_when_linted_then_error() -> None:
    assert codes(lint_send_body({"type": "image", "image": {}}, POLICY)) == ["media-missing"]
    both = {"type": "image", "image": {"id": "1", "link": "https://example.com/a.jpg"}}
    assert codes(lint_send_body(both, POLICY)) == ["media-missing"]


@pytest.mark.parametrize(
    ("kind", "limit"),
    [("image", 5 * MB), ("video", 16 * MB), ("audio", 16 * MB), ("document", 100 * MB)],
)
def test_given_media_at_limit_ok_and_one_byte_over_error(kind: str, limit: int) -> None:
    assert lint_send_body(media(kind), POLICY, media_size=limit) == []
    [finding] = lint_send_body(media(kind), POLICY, media_size=limit + 1)
    assert finding.code == "media-too-large"
    assert str(limit + 1) in finding.message


def test_given_sticker_sizes_when_linted_then_static_limit_warns_and_animated_limit_errors() -> (
    None
):
    sticker = media("sticker")
    assert lint_send_body(sticker, POLICY, media_size=100 * KB) == []
    assert codes(lint_send_body(sticker, POLICY, media_size=100 * KB + 1)) == [
        "sticker-maybe-too-large"
    ]
    assert codes(lint_send_body(sticker, POLICY, media_size=500 * KB)) == [
        "sticker-maybe-too-large"
    ]
    assert codes(lint_send_body(sticker, POLICY, media_size=500 * KB + 1)) == ["media-too-large"]


@pytest.mark.parametrize(
    ("kind", "mime", "ok"),
    [
        ("image", "image/jpeg", True),
        ("image", "image/gif", False),
        ("image", "image/webp", False),
        ("audio", "audio/ogg; codecs=opus", True),
        ("audio", "audio/wav", False),
        ("video", "video/quicktime", False),
        ("document", "application/pdf", True),
        ("document", "application/zip", False),
        ("sticker", "image/webp", True),
        ("sticker", "image/png", False),
    ],
)
def test_given_mime_type_when_linted_then_only_metas_types_pass(
    kind: str, mime: str, ok: bool
) -> None:
    found = lint_send_body(media(kind), POLICY, media_mime=mime)
    assert codes(found) == ([] if ok else ["media-type-unsupported"])


def test_given_link_with_gif_extension_when_linted_then_error_at_the_link() -> None:
    body = {"type": "image", "image": {"link": "https://cdn.example.com/promo.GIF?v=2"}}
    [finding] = lint_send_body(body, POLICY)

    assert (finding.code, finding.where) == ("media-type-unsupported", "image.link")
    assert "image/gif" in finding.message


def test_given_three_buttons_ok_and_four_error() -> None:
    assert lint_send_body(buttons("One", "Two", "Three"), POLICY) == []
    assert codes(lint_send_body(buttons("One", "Two", "Three", "Four"), POLICY)) == ["button-count"]


def test_given_button_title_of_20_ok_and_21_error() -> None:
    assert lint_send_body(buttons("t" * 20), POLICY) == []
    [finding] = lint_send_body(buttons("t" * 21), POLICY)
    assert finding.code == "field-too-long"
    assert finding.where.startswith("interactive.action.buttons[0].reply.title")


def test_given_repeated_button_titles_when_linted_then_error() -> None:
    assert codes(lint_send_body(buttons("Yes", "Yes"), POLICY)) == ["duplicate-title"]


def test_given_interactive_body_over_1024_when_linted_then_error() -> None:
    body = buttons("Yes")
    body["interactive"]["body"]["text"] = "b" * 1024
    assert lint_send_body(body, POLICY) == []
    body["interactive"]["body"]["text"] = "b" * 1025
    assert codes(lint_send_body(body, POLICY)) == ["field-too-long"]


def test_given_ten_rows_over_two_sections_ok_and_eleven_error() -> None:
    assert lint_send_body(list_message(rows(5), rows(5, start=5)), POLICY) == []
    assert codes(lint_send_body(list_message(rows(5), rows(6, start=5)), POLICY)) == ["row-count"]


def test_given_eleven_sections_when_linted_then_error() -> None:
    sections = [rows(0)] * 10 + [rows(1)]
    assert "section-count" in codes(lint_send_body(list_message(*sections), POLICY))


def test_given_row_title_24_and_description_72_ok_one_more_error() -> None:
    assert lint_send_body(list_message(rows(1, description="d" * 72)), POLICY) == []
    long_title = list_message([{"id": "r", "title": "t" * 25}])
    assert codes(lint_send_body(long_title, POLICY)) == ["field-too-long"]
    long_desc = list_message(rows(1, description="d" * 73))
    assert codes(lint_send_body(long_desc, POLICY)) == ["field-too-long"]


def test_given_two_untitled_sections_when_linted_then_titles_required() -> None:
    body = list_message(rows(1), rows(1, start=1), titles=False)
    assert codes(lint_send_body(body, POLICY)) == ["field-empty", "field-empty"]


def test_given_repeated_row_ids_when_linted_then_error() -> None:
    body = list_message([{"id": "same", "title": "A"}, {"id": "same", "title": "B"}])
    assert codes(lint_send_body(body, POLICY)) == ["duplicate-id"]


def test_given_location_out_of_range_when_linted_then_error() -> None:
    body = {"type": "location", "location": {"latitude": 91, "longitude": 0}}
    assert codes(lint_send_body(body, POLICY)) == ["location-out-of-range"]


# --- sensitive words --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "seen"),
    [
        ("Get it FREE today", "FREE"),
        ("Free.", "Free"),
        ("ｆｒｅｅ shipping", "ｆｒｅｅ"),  # full-width letters (NFKC)
        ("Only for a LIMITED\n  time!", "LIMITED\n  time"),  # a phrase across a line break
    ],
)
def test_given_sensitive_word_in_any_case_or_form_when_linted_then_warning(
    message: str, seen: str
) -> None:
    [finding] = lint_send_body(text(message), POLICY)

    assert (finding.code, finding.severity) == ("sensitive-word", "warning")
    assert repr(seen) in finding.message


@pytest.mark.parametrize(
    "message", ["freedom of choice", "carefree", "free_shipping", "limited timer"]
)
def test_given_word_only_inside_another_word_when_linted_then_no_warning(message: str) -> None:
    assert lint_send_body(text(message), POLICY) == []


ARABIC_FREE = "مجاني"


@pytest.mark.parametrize(
    ("message", "seen"),
    [
        ("توصيل مجاني لكل الطلبات", "مجاني"),
        ("توصيل مَجَّانِي اليوم", "مَجَّانِي"),  # with harakat
        ("توصيل مجــاني", "مجــاني"),  # with tatweel
    ],
)
def test_given_arabic_sensitive_word_with_diacritics_or_tatweel_then_warning(
    message: str, seen: str
) -> None:
    policy = ContentPolicy(sensitive_words=(ARABIC_FREE,))
    [finding] = lint_send_body(text(message), policy)

    assert finding.code == "sensitive-word"
    assert finding.message.startswith(repr(seen))
    assert finding.where == "text.body, line 1, column 7"


def test_given_arabic_word_position_when_linted_then_column_counts_characters() -> None:
    policy = ContentPolicy(sensitive_words=(ARABIC_FREE,))
    [finding] = lint_send_body(text("شحن\nتوصيل مجاني"), policy)

    assert split_where(finding.where) == ("text.body", 2, 7)


def test_given_arabic_word_inside_longer_word_when_linted_then_no_warning() -> None:
    policy = ContentPolicy(sensitive_words=(ARABIC_FREE,))
    assert lint_send_body(text("مجانية"), policy) == []


def test_given_chinese_word_without_spaces_when_linted_then_found_anywhere() -> None:
    policy = ContentPolicy(sensitive_words=("免费",))
    assert codes(lint_send_body(text("今天免费送货"), policy)) == ["sensitive-word"]


def test_given_devanagari_word_when_part_of_longer_word_then_no_warning() -> None:
    # "मुफ" is a prefix of "मुफ्त" followed by a virama (a combining mark, still the word).
    policy = ContentPolicy(sensitive_words=("मुफ", "मुफ्त"))
    found = lint_send_body(text("आज मुफ्त डिलीवरी"), policy)
    assert [f.message for f in found] == ["'मुफ्त' is a sensitive word: typical of bulk promotion"]


def test_given_accent_difference_when_linted_then_still_matches() -> None:
    policy = ContentPolicy(sensitive_words=("gratis",))
    assert codes(lint_send_body(text("Entrega GRÁTIS hoje"), policy)) == ["sensitive-word"]


def test_given_sensitive_word_in_button_title_and_template_param_then_warned_there() -> None:
    found = lint_send_body(buttons("Free trial"), POLICY)
    assert [f.where for f in found] == [
        "interactive.action.buttons[0].reply.title, line 1, column 1"
    ]
    template = {
        "type": "template",
        "template": {
            "name": "free",  # a template name is never shown: not checked
            "language": {"code": "en_US"},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "free gift"}]}],
        },
    }
    [finding] = lint_send_body(template, POLICY)
    assert finding.where == "template.components[0].parameters[0].text, line 1, column 1"


# --- link shorteners --------------------------------------------------------------------------


def test_given_shortener_in_caption_when_linted_then_warning_with_place() -> None:
    body = media("image", caption="New menu! https://bit.ly/3xYz")
    [finding] = lint_send_body(body, POLICY)

    assert (finding.code, finding.severity) == ("link-shortener", "warning")
    assert finding.where == "image.caption, line 1, column 11"
    assert "https://bit.ly/3xYz" in finding.message


@pytest.mark.parametrize(
    "message", ["see tinyurl.com/abc.", "see www.t.co/x", "go to HTTP://Bit.Ly/x", "rb.gy/q7"]
)
def test_given_shortened_link_in_any_form_when_linted_then_warning(message: str) -> None:
    assert codes(lint_send_body(text(message), POLICY)) == ["link-shortener"]


@pytest.mark.parametrize(
    "message",
    [
        "https://example.com/offer",
        "mail ops@bit.ly for help",  # an e-mail address, not a link
        "we never use bit.ly",  # a bare mention, not a link
        "https://notbit.ly/x",
    ],
)
def test_given_no_shortened_link_when_linted_then_no_warning(message: str) -> None:
    assert lint_send_body(text(message), POLICY) == []


def test_given_extra_shortener_in_settings_when_linted_then_it_counts_too() -> None:
    policy = ContentPolicy.from_settings(
        Settings(content_shorteners="https://sho.rt/, lnk.example")
    )
    assert codes(lint_send_body(text("https://lnk.example/a and sho.rt/b"), policy)) == [
        "link-shortener",
        "link-shortener",
    ]
    assert "bit.ly" in policy.shortener_domains


# --- policy and settings ------------------------------------------------------------------------


def test_given_default_settings_when_policy_built_then_seed_words_and_warn() -> None:
    policy = ContentPolicy.from_settings(Settings())

    assert policy.sensitive_words == ("free", "limited time")
    assert policy.block_warnings is False


def test_given_words_with_arabic_comma_when_policy_built_then_split() -> None:
    settings = Settings(content_sensitive_words=" free , عرض محدود،مجاني ,, ")
    assert ContentPolicy.from_settings(settings).sensitive_words == ("free", "عرض محدود", "مجاني")


def test_given_block_in_any_case_from_env_when_policy_built_then_warnings_block() -> None:
    settings = load_settings(
        env={"WACRM_CONTENT_POLICY": " Block "}, toml_path=Path("/nonexistent")
    )
    assert ContentPolicy.from_settings(settings).block_warnings is True


def test_given_invalid_policy_value_when_policy_built_then_config_error_names_it() -> None:
    with pytest.raises(
        ConfigError, match=r"^WACRM_CONTENT_POLICY must be 'warn' or 'block', got 'stop'$"
    ):
        ContentPolicy.from_settings(Settings(content_policy="stop"))


def test_given_invalid_shortener_domain_when_policy_built_then_config_error_names_it() -> None:
    with pytest.raises(
        ConfigError, match=r"^WACRM_CONTENT_SHORTENERS: 'domain!' is not a domain like bit\.ly$"
    ):
        ContentPolicy.from_settings(Settings(content_shorteners="bit.do, domain!"))


def test_given_warn_policy_when_blocking_then_only_errors_and_block_policy_all() -> None:
    found = lint_send_body(text("free " + "x" * 4096), POLICY)
    assert codes(found) == ["text-too-long", "sensitive-word"]

    assert codes(blocking(found, ContentPolicy())) == ["text-too-long"]
    assert codes(blocking(found, ContentPolicy(block_warnings=True))) == [
        "text-too-long",
        "sensitive-word",
    ]
    assert blocking(lint_send_body(text("free"), POLICY), POLICY) == []


# --- files ------------------------------------------------------------------------------------


def _file(path: Path, size: int, head: bytes = b"") -> Path:
    with path.open("wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return path


def test_given_jpeg_over_5_mb_when_file_linted_then_error(tmp_path: Path) -> None:
    assert lint_media_file(_file(tmp_path / "a.jpg", 5 * MB), "image", POLICY) == []
    [finding] = lint_media_file(_file(tmp_path / "b.JPEG", 5 * MB + 1), "image", POLICY)
    assert finding.code == "media-too-large"


def test_given_gif_or_unknown_extension_when_file_linted_then_unsupported(tmp_path: Path) -> None:
    assert codes(lint_media_file(_file(tmp_path / "a.gif", 10), "image", POLICY)) == [
        "media-type-unsupported"
    ]
    assert codes(lint_media_file(_file(tmp_path / "a.xyz", 10), "document", POLICY)) == [
        "media-type-unsupported"
    ]


def test_given_webp_stickers_when_file_linted_then_static_and_animated_limits(
    tmp_path: Path,
) -> None:
    static = b"RIFF\0\0\0\0WEBPVP8X" + b"\0" * 16
    animated = b"RIFF\0\0\0\0WEBPVP8X" + b"\0\0\0\0\x02" + b"\0" * 11
    big = 150 * KB

    assert codes(lint_media_file(_file(tmp_path / "s.webp", big, static), "sticker", POLICY)) == [
        "media-too-large"
    ]
    assert lint_media_file(_file(tmp_path / "a.webp", big, animated), "sticker", POLICY) == []
    assert codes(
        lint_media_file(_file(tmp_path / "b.webp", 500 * KB + 1, animated), "sticker", POLICY)
    ) == ["media-too-large"]


@pytest.mark.parametrize(
    "body",
    [
        {"type": ["text"]},
        {"type": "text", "text": "hello"},
        {"type": "text", "text": {"body": 42}},
        {"type": "interactive", "interactive": {"type": {"x": 1}}},
        {"type": "interactive", "interactive": {"type": "button", "body": {"text": "a"}}},
        {"type": "interactive", "interactive": {"type": "button", "action": {"buttons": "x"}}},
        {"type": "interactive", "interactive": {"type": "button", "action": {"buttons": [1]}}},
        {
            "type": "interactive",
            "interactive": {"type": "list", "action": {"sections": [{"rows": 3}]}},
        },
        {
            "type": "interactive",
            "interactive": {"type": "list", "action": {"sections": [{"rows": [7]}]}},
        },
        {"type": "location", "location": {"latitude": "north"}},
        {"type": "template", "template": {"name": None, "language": "en"}},
        {"type": "image", "image": {"link": 5, "caption": ["x"]}},
    ],
)
def test_given_malformed_body_when_linted_then_errors_never_an_exception(body: Any) -> None:
    found = lint_send_body(body, POLICY)

    assert found
    assert all(f.severity == "error" for f in found)
