"""Phone numbers as people type them → E.164, and clear reasons when they are not numbers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import phonenumbers
import pytest
from click.testing import CliRunner
from hypothesis import assume, given
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from wacrm.cli import cli
from wacrm.phone import PhoneError, check_region, normalize, normalize_wa_id, try_normalize

ARABIC_INDIC = "٠١٢٣٤٥٦٧٨٩"
PERSIAN = "۰۱۲۳۴۵۶۷۸۹"
FULL_WIDTH = "０１２３４５６７８９"
RLM = "\u200f"


def in_script(text: str, digits: str) -> str:
    return text.translate(str.maketrans("0123456789", digits))


# National numbers typed the way people in each region write them.
NATIONAL = [
    ("US", "(201) 555-0123", "+12015550123"),
    ("CA", "506.234.5678", "+15062345678"),
    ("GB", "07400 123456", "+447400123456"),
    ("DE", "01512 3456789", "+4915123456789"),
    ("FR", "06 12 34 56 78", "+33612345678"),
    ("ES", "612 34 56 78", "+34612345678"),
    ("IT", "312 345 6789", "+393123456789"),
    ("IN", "081234-56789", "+918123456789"),
    ("BR", "(11) 96123-4567", "+5511961234567"),
    ("MX", "55 1234 5678", "+525512345678"),
    ("AR", "011 15-2345-6789", "+5491123456789"),
    ("SA", "050 123 4567", "+966501234567"),
    ("AE", "050-123-4567", "+971501234567"),
    ("EG", "010 01234567", "+201001234567"),
    ("MA", "0650-123456", "+212650123456"),
    ("NG", "0802 123 4567", "+2348021234567"),
    ("KE", "0712 123456", "+254712123456"),
    ("ZA", "071 123 4567", "+27711234567"),
    ("PK", "0301 2345678", "+923012345678"),
    ("BD", "01812-345678", "+8801812345678"),
    ("ID", "0812-345-678", "+62812345678"),
    ("CN", "131 2345 6789", "+8613123456789"),
    ("JP", "090-1234-5678", "+819012345678"),
    ("AU", "0412 345 678", "+61412345678"),
    ("RU", "8 (912) 345-67-89", "+79123456789"),
    ("TR", "0501 234 56 78", "+905012345678"),
]


@pytest.mark.parametrize(("region", "typed", "e164"), NATIONAL)
def test_given_national_number_and_region_when_normalized_then_e164(
    region: str, typed: str, e164: str
) -> None:
    assert normalize(typed, region) == e164


@pytest.mark.parametrize(("region", "typed", "e164"), NATIONAL)
def test_given_international_form_when_normalized_without_region_then_same_e164(
    region: str, typed: str, e164: str
) -> None:
    spaced = "+" + " ".join([e164[1:4], e164[4:7], e164[7:]])
    assert normalize(spaced) == e164
    assert normalize("00" + e164[1:]) == e164


@pytest.mark.parametrize(
    ("typed", "region", "e164"),
    [
        ("+44 20 7946 0018", None, "+442079460018"),
        ("+44-20-7946-0018", None, "+442079460018"),
        ("+44.20.7946.0018", None, "+442079460018"),
        ("+44 (0) 20 7946 0018", None, "+442079460018"),
        ("+1 (201) 555-0123", "DE", "+12015550123"),  # the + wins over the region
        ("  +44 20 7946 0018\t", None, "+442079460018"),
        ("+44\u00a020\u20137946\u20140018", None, "+442079460018"),  # NBSP, en and em dash
        ("0044 20 7946 0018", None, "+442079460018"),
        ("00 44 20 7946 0018", "FR", "+442079460018"),
        ("0044 20 7946 0018", "US", "+442079460018"),  # 00 where the IDD is 011
        ("011 44 20 7946 0018", "US", "+442079460018"),
        ("010 44 20 7946 0018", "JP", "+442079460018"),
        ("0011 44 20 7946 0018", "AU", "+442079460018"),
        ("0021 44 20 7946 0018", "BR", "+442079460018"),  # Brazil: 00 + carrier code
        ("tel:+1-201-555-0123", None, "+12015550123"),
        ("whatsapp:+14155552671", None, "+14155552671"),
        ("WhatsApp: +44 7400 123456", None, "+447400123456"),
        ("whatsapp:14155552671", None, "+14155552671"),
        ("07400 123456", "gb", "+447400123456"),  # region case does not matter
    ],
)
def test_given_typed_form_when_normalized_then_e164(
    typed: str, region: str | None, e164: str
) -> None:
    assert normalize(typed, region) == e164


@pytest.mark.parametrize(
    ("typed", "region", "e164"),
    [
        ("٠٥٠ ١٢٣ ٤٥٦٧", "SA", "+966501234567"),
        ("+٩٦٦ ٥٠ ١٢٣ ٤٥٦٧", None, "+966501234567"),
        ("+٩٧١ ٥٠ ١٢٣ ٤٥٦٧", None, "+971501234567"),
        ("٠١٠ ٠١٢٣ ٤٥٦٧", "EG", "+201001234567"),
        ("٠٠٢٠ ١٠ ٠١٢٣ ٤٥٦٧", None, "+201001234567"),
        (RLM + "+٩٦٦ ٥٠ ١٢٣ ٤٥٦٧" + RLM, None, "+966501234567"),  # marks around RTL text
        ("+966 ٥٠ 123 ٤٥٦٧", None, "+966501234567"),  # mixed scripts
    ],
)
def test_given_arabic_indic_digits_when_normalized_then_e164(
    typed: str, region: str | None, e164: str
) -> None:
    assert normalize(typed, region) == e164


@pytest.mark.parametrize(
    ("typed", "region", "e164"),
    [
        ("۰۹۱۲ ۳۴۵ ۶۷۸۹", "IR", "+989123456789"),
        ("+۹۸ ۹۱۲ ۳۴۵ ۶۷۸۹", None, "+989123456789"),
        ("۰۳۰۱ ۲۳۴۵۶۷۸", "PK", "+923012345678"),  # Urdu uses the extended digits too
        ("+۹۳ ۷۰ ۱۲۳ ۴۵۶۷", None, "+93701234567"),
    ],
)
def test_given_persian_digits_when_normalized_then_e164(
    typed: str, region: str | None, e164: str
) -> None:
    assert normalize(typed, region) == e164


@pytest.mark.parametrize(
    ("typed", "region", "e164"),
    [
        ("＋４４ ２０ ７９４６ ００１８", None, "+442079460018"),
        ("（０２０）７９４６－００１８", "GB", "+442079460018"),
        ("０９０－１２３４－５６７８", "JP", "+819012345678"),
        ("+९१ ८१२३४ ५६७८९", None, "+918123456789"),  # Devanagari
        ("+৮৮০ ১৮১২-৩৪৫৬৭৮", None, "+8801812345678"),  # Bengali
    ],
)
def test_given_full_width_or_other_script_digits_when_normalized_then_e164(
    typed: str, region: str | None, e164: str
) -> None:
    assert normalize(typed, region) == e164


@pytest.mark.parametrize(
    ("wa_id", "e164"),
    [
        ("16315551234", "+16315551234"),
        ("447400123456", "+447400123456"),
        ("966501234567", "+966501234567"),
        ("5511961234567", "+5511961234567"),
        ("5491123456789", "+5491123456789"),  # Argentina keeps its mobile 9
        ("+16315551234", "+16315551234"),
        # Legacy wa_ids that are not E.164 as they stand:
        ("5215512345678", "+525512345678"),  # Mexico: 521 + 10 digits
        ("551161234567", "+5511961234567"),  # Brazil: mobile without the ninth digit
        ("553133334444", "+553133334444"),  # Brazil landline: left alone
    ],
)
def test_given_wa_id_when_normalized_then_e164(wa_id: str, e164: str) -> None:
    assert normalize_wa_id(wa_id) == e164


def test_given_twilio_whatsapp_address_of_legacy_mexican_id_when_normalized_then_e164() -> None:
    assert normalize("whatsapp:+5215512345678") == "+525512345678"


def test_given_bare_wa_id_digits_when_normalized_without_region_then_error_points_to_region() -> (
    None
):
    # Digits alone are ambiguous for normalize(); normalize_wa_id is the explicit way.
    with pytest.raises(PhoneError, match="no region"):
        normalize("16315551234")


@pytest.mark.parametrize(
    ("raw", "region", "reason"),
    [
        ("", None, "empty"),
        ("   ", "US", "empty"),
        ("whatsapp:", None, "empty"),
        ("650 253 0000", None, "national number and no region"),
        ("hello", None, "not a phone number"),
        ("+", None, "not a phone number"),
        ("+999 123 4567", None, "unknown country code"),
        ("+1 650", None, "too short for country code +1"),
        ("+44 20 7946 00180", None, "too long for country code +44"),
        ("+1 200 555 0100", None, "not a valid number for country code +1"),
        ("020 7946 001", "GB", "not a valid number for region GB"),
        ("7946 0018", "GB", "a local number; add the area code"),
        ("+1 650 253 0000 ext. 123", None, "has an extension"),
        ("+44 20 7946 0018#12", None, "has an extension"),
        ("1-800-FLOWERS", "US", "contains letters"),
        ("call +44 20 7946 0018", None, "contains letters"),
        ("+1 " + "2" * 300, None, "too long"),
        ("whatsapp:+44 7400 12345x", None, "a WhatsApp id holds only digits"),
        ("whatsapp:+44-20", None, "too short"),
    ],
)
def test_given_bad_number_when_normalized_then_phone_error_names_input_and_reason(
    raw: str, region: str | None, reason: str
) -> None:
    with pytest.raises(PhoneError) as caught:
        normalize(raw, region)
    assert reason in caught.value.reason
    assert str(caught.value).endswith(caught.value.reason)
    assert caught.value.raw == raw
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("wa_id", "reason"),
    [
        ("", "empty"),
        ("1631-555-1234", "only digits"),
        ("999123456", "unknown country code"),
        ("5215512", "too short"),
        ("12005550100", "not a valid number"),
        ("55 11 6123 4567", "only digits"),
    ],
)
def test_given_bad_wa_id_when_normalized_then_phone_error_with_reason(
    wa_id: str, reason: str
) -> None:
    with pytest.raises(PhoneError, match=reason):
        normalize_wa_id(wa_id)


def test_given_empty_or_unprintable_input_when_rejected_then_message_quotes_it_on_one_line() -> (
    None
):
    with pytest.raises(PhoneError) as empty:
        normalize("")
    assert str(empty.value) == "'': empty"
    with pytest.raises(PhoneError) as newline:
        normalize("abc\ndef")
    assert "\n" not in str(newline.value)
    assert str(newline.value).startswith("'abc\\ndef'")


def test_given_very_long_input_when_rejected_then_message_is_cut() -> None:
    with pytest.raises(PhoneError) as caught:
        normalize("x" * 1000)
    assert len(str(caught.value)) < 120


@pytest.mark.parametrize("region", ["ZZ", "USA", "1", "uk"])
def test_given_unknown_region_when_normalized_then_phone_error_names_region(region: str) -> None:
    with pytest.raises(PhoneError, match="unknown region code") as caught:
        normalize("07400 123456", region)
    assert caught.value.raw == region


def test_given_region_variants_when_checked_then_upper_case_or_none() -> None:
    assert check_region(" gb ") == "GB"
    assert check_region("") is None
    assert check_region(None) is None


def test_given_valid_and_invalid_numbers_when_try_normalize_then_e164_or_none() -> None:
    assert try_normalize("07400 123456", "GB") == "+447400123456"
    assert try_normalize("not a number") is None
    assert try_normalize(None) is None
    assert try_normalize("") is None


def test_given_unknown_region_when_try_normalize_then_still_raises() -> None:
    # A misconfigured region must not silently turn every number into None.
    with pytest.raises(PhoneError, match="unknown region code"):
        try_normalize("07400 123456", "XX")


# --- properties ------------------------------------------------------------------------

REGIONS = sorted(phonenumbers.SUPPORTED_REGIONS)
NUMBER_TYPES = [PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE]
FORMATS = [
    PhoneNumberFormat.INTERNATIONAL,
    PhoneNumberFormat.NATIONAL,
    PhoneNumberFormat.E164,
    PhoneNumberFormat.RFC3966,
]
SCRIPTS = ["0123456789", ARABIC_INDIC, PERSIAN, FULL_WIDTH]


@given(
    region=st.sampled_from(REGIONS),
    number_type=st.sampled_from(NUMBER_TYPES),
    fmt=st.sampled_from(FORMATS),
    script=st.sampled_from(SCRIPTS),
)
def test_given_example_number_of_any_region_when_formatted_and_normalized_then_same_e164(
    region: str, number_type: int, fmt: int, script: str
) -> None:
    example = phonenumbers.example_number_for_type(region, number_type)
    assume(example is not None)
    assert example is not None  # assume() already skipped the None case; this narrows it
    e164 = phonenumbers.format_number(example, PhoneNumberFormat.E164)
    typed = in_script(phonenumbers.format_number(example, fmt), script)
    region_arg = region if fmt == PhoneNumberFormat.NATIONAL else None
    assert normalize(typed, region_arg) == e164
    assert normalize_wa_id(e164[1:]) == e164


@given(
    region=st.sampled_from(REGIONS),
    separators=st.lists(st.sampled_from(["", " ", "-", ".", "  "]), min_size=20, max_size=20),
)
def test_given_example_number_with_any_separators_when_normalized_then_same_e164(
    region: str, separators: list[str]
) -> None:
    example = phonenumbers.example_number(region)
    assume(example is not None)
    assert example is not None  # assume() already skipped the None case; this narrows it
    e164 = phonenumbers.format_number(example, PhoneNumberFormat.E164)
    typed = "+" + "".join(d + sep for d, sep in zip(e164[1:], separators, strict=False))
    assert normalize(typed) == e164


def test_given_every_region_then_an_example_number_exists_for_the_properties() -> None:
    # Guards the properties above against assume() silently skipping everything.
    assert len(REGIONS) > 200
    assert all(phonenumbers.example_number(region) is not None for region in REGIONS)


# --- CLI -------------------------------------------------------------------------------


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[CliRunner]:
    # Settings come from the environment and ./wacrm.toml: start every test from neither.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WACRM_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("WACRM_CONFIG", raising=False)
    yield CliRunner()


def test_given_international_number_when_cli_normalize_then_prints_e164(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["phone", "normalize", "+44 20 7946 0018"])
    assert result.exit_code == 0
    assert result.stdout == "+442079460018\n"


def test_given_unquoted_number_in_parts_when_cli_normalize_then_parts_are_joined(
    runner: CliRunner,
) -> None:
    result = runner.invoke(cli, ["phone", "normalize", "+44", "20", "7946", "0018"])
    assert result.exit_code == 0
    assert result.stdout == "+442079460018\n"


def test_given_region_option_when_cli_normalize_national_then_prints_e164(
    runner: CliRunner,
) -> None:
    result = runner.invoke(cli, ["phone", "normalize", "٠٥٠ ١٢٣ ٤٥٦٧", "--region", "sa"])
    assert result.exit_code == 0
    assert result.stdout == "+966501234567\n"


def test_given_default_region_setting_when_cli_normalize_national_then_it_is_used(
    runner: CliRunner,
) -> None:
    result = runner.invoke(
        cli, ["phone", "normalize", "07400 123456"], env={"WACRM_DEFAULT_REGION": "GB"}
    )
    assert result.exit_code == 0
    assert result.stdout == "+447400123456\n"


def test_given_region_option_and_setting_when_cli_normalize_then_option_wins(
    runner: CliRunner,
) -> None:
    result = runner.invoke(
        cli,
        ["phone", "normalize", "050 123 4567", "--region", "AE"],
        env={"WACRM_DEFAULT_REGION": "SA"},
    )
    assert result.stdout == "+971501234567\n"


def test_given_wa_id_flag_when_cli_normalize_then_digits_are_international(
    runner: CliRunner,
) -> None:
    result = runner.invoke(cli, ["phone", "normalize", "--wa-id", "5215512345678"])
    assert result.exit_code == 0
    assert result.stdout == "+525512345678\n"


def test_given_invalid_number_when_cli_normalize_then_one_line_error_and_exit_2(
    runner: CliRunner,
) -> None:
    result = runner.invoke(cli, ["phone", "normalize", "+1 650"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == "wacrm: error: +1 650: too short for country code +1\n"


def test_given_national_number_and_no_region_when_cli_normalize_then_error_says_so(
    runner: CliRunner,
) -> None:
    result = runner.invoke(cli, ["phone", "normalize", "650 253 0000"])
    assert result.exit_code == 2
    assert result.stderr.startswith("wacrm: error: 650 253 0000: national number and no region")
    assert result.stderr.count("\n") == 1


def test_given_bad_region_option_when_cli_normalize_then_one_line_error_and_exit_2(
    runner: CliRunner,
) -> None:
    result = runner.invoke(cli, ["phone", "normalize", "07400 123456", "--region", "ZZ"])
    assert result.exit_code == 2
    assert result.stderr.startswith("wacrm: error: --region ZZ: unknown region code")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


def test_given_bad_default_region_setting_when_cli_normalize_then_error_names_the_setting(
    runner: CliRunner,
) -> None:
    result = runner.invoke(
        cli, ["phone", "normalize", "07400 123456"], env={"WACRM_DEFAULT_REGION": "Britain"}
    )
    assert result.exit_code == 2
    assert "WACRM_DEFAULT_REGION" in result.stderr
    assert "Britain: unknown region code" in result.stderr
