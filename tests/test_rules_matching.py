"""Keyword matching in any script: folding, word boundaries, Arabic clitics, CJK."""

from __future__ import annotations

import re

import pytest

from wacrm.rules.matching import TextMatcher, normalize


@pytest.mark.parametrize(
    ("raw", "folded"),
    [
        ("PRICE", "price"),
        ("ｐｒｉｃｅ", "price"),  # full-width
        ("PREÇO", "preco"),
        ("¿Cuánto?", "¿cuanto?"),
        ("السِّعْر", "السعر"),  # harakat
        ("الســـعر", "السعر"),  # tatweel
        ("أسعار", "اسعار"),  # hamza on alef
        ("कीमत", "कीमत"),  # Devanagari vowel signs are kept
        ("  how \n much ", "how much"),
    ],
)
def test_given_text_when_normalized_then_variants_fold_together(raw: str, folded: str) -> None:
    assert normalize(raw) == folded


PRICE = TextMatcher.build(
    ["price", "السعر", "سعر", "precio", "preço", "价格", "कीमत", "how much"], []
)


@pytest.mark.parametrize(
    ("text", "keyword"),
    [
        ("price", "price"),
        ("Price?", "price"),
        ("السعر؟", "السعر"),
        ("كم السعر", "السعر"),
        ("بالسعر", "السعر"),  # preposition attached
        ("سعره كم؟", "سعر"),  # pronoun attached
        ("Qual o preco?", "preço"),
        ("请问价格多少", "价格"),  # no spaces in Chinese
        ("कीमत क्या है?", "कीमत"),
        ("HOW   MUCH is it", "how much"),
    ],
)
def test_given_price_question_in_any_script_when_matched_then_keyword_found(
    text: str, keyword: str
) -> None:
    assert PRICE.first_match(text) == keyword


@pytest.mark.parametrize(
    "text",
    [
        "priceless",  # inside a longer word
        "overprice",
        "سعرات حرارية",  # "calories": a plural ending is not a pronoun
        "how is it",
        "",
        "कीमती",  # "precious": Devanagari vowel sign continues the word
    ],
)
def test_given_unrelated_text_when_matched_then_no_keyword(text: str) -> None:
    assert PRICE.first_match(text) is None


@pytest.mark.parametrize("text", ["السعر", "بالسعر", "وبالسعر", "للسعر", "سعرها", "سعركم"])
def test_given_arabic_keyword_when_clitics_attached_then_still_matches(text: str) -> None:
    assert TextMatcher.build(["سعر"], []).first_match(text) == "سعر"


def test_given_pattern_when_text_matches_folded_form_then_pattern_reported() -> None:
    matcher = TextMatcher.build([], [r"order\s*#?\d{4,}"])

    assert matcher.first_match("ORDER #12345 where is it") == r"/order\s*#?\d{4,}/"
    assert matcher.first_match("order me a pizza") is None


def test_given_bad_pattern_when_built_then_re_error() -> None:
    with pytest.raises(re.error):
        TextMatcher.build([], ["(unclosed"])


# Latin accents fold both ways, and together with the Arabic affixes in one matcher: the
# shipped price rule lists "preço", "precio", "السعر" and "سعر" side by side.
MIXED = TextMatcher.build(["preco", "preço", "cuánto cuesta", "سعر", "zloty"], [])


@pytest.mark.parametrize(
    ("text", "keyword"),
    [
        ("Qual o PREÇO?", "preco"),  # accent in the text, not in the keyword
        ("QUAL O PRECO", "preco"),  # typed without the cedilla
        ("cuanto cuesta el plan", "cuánto cuesta"),  # keyword with accent, text without
        ("¿CUÁNTO  CUESTA?", "cuánto cuesta"),
        ("Ｐｒｅｃｏ?", "preco"),  # full-width letters, as some keyboards send them
        ("préçô", "preco"),  # accents on every letter
        ("بالسِّعر؟", "سعر"),  # preposition + article attached, and harakat
        ("سعرها كم", "سعر"),  # pronoun attached
        ("ile kosztuje złoty", "zloty"),  # a stroke is a diacritic too
    ],
)
def test_given_latin_accents_or_arabic_affixes_when_matched_then_keyword_found(
    text: str, keyword: str
) -> None:
    assert MIXED.first_match(text) == keyword


@pytest.mark.parametrize("text", ["pri ce", "precos", "precoce", "spring", "سعرات"])
def test_given_keyword_not_a_whole_word_when_matched_then_none(text: str) -> None:
    assert TextMatcher.build(["price", "preco", "سعر"], []).first_match(text) is None


def test_given_accented_keyword_when_normalized_then_same_as_plain_text() -> None:
    assert normalize("PREÇO") == normalize("preco") == "preco"
    assert normalize("Łódź") == "lodz"
