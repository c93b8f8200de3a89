"""Configuration: environment over wacrm.toml, clear errors, secrets that never print."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from wacrm.config import ConfigError, Secret, load_settings


def test_given_no_file_and_no_env_when_loaded_then_embedded_defaults(tmp_path: Path) -> None:
    settings = load_settings(env={}, toml_path=tmp_path / "absent.toml")

    assert settings.database_url == "sqlite:///wacrm.db"
    assert settings.whatsapp_api_base_url == "https://graph.facebook.com"
    assert settings.graph_url == "https://graph.facebook.com/v25.0"
    assert settings.max_body_bytes == 3 * 1024 * 1024
    assert not settings.whatsapp_app_secret


def test_given_toml_and_env_when_loaded_then_env_wins(tmp_path: Path) -> None:
    toml = tmp_path / "wacrm.toml"
    toml.write_text('database_url = "sqlite:///from-file.db"\nport = 9000\n', encoding="utf-8")

    settings = load_settings(env={"WACRM_PORT": "9100"}, toml_path=toml)

    assert settings.database_url == "sqlite:///from-file.db"
    assert settings.port == 9100


def test_given_config_env_var_when_loaded_then_that_file_is_read(tmp_path: Path) -> None:
    toml = tmp_path / "elsewhere.toml"
    toml.write_text('account_name = "acme"\n', encoding="utf-8")

    settings = load_settings(env={"WACRM_CONFIG": str(toml)})

    assert settings.account_name == "acme"


def test_given_unknown_key_in_toml_when_loaded_then_error_names_it(tmp_path: Path) -> None:
    toml = tmp_path / "wacrm.toml"
    toml.write_text('databse_url = "x"\n', encoding="utf-8")

    with pytest.raises(ConfigError, match="unknown setting 'databse_url'"):
        load_settings(env={}, toml_path=toml)


def test_given_broken_toml_when_loaded_then_error_names_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "wacrm.toml"
    toml.write_text("port = \n", encoding="utf-8")

    with pytest.raises(ConfigError, match=r"wacrm\.toml: not valid TOML"):
        load_settings(env={}, toml_path=toml)


def test_given_non_integer_port_when_loaded_then_error_names_variable_and_value(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="WACRM_PORT must be an integer, got 'eighty'"):
        load_settings(env={"WACRM_PORT": "eighty"}, toml_path=tmp_path / "absent.toml")


def test_given_secret_when_printed_logged_or_formatted_then_value_hidden(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(
        env={"WACRM_WHATSAPP_APP_SECRET": "s3cr3t-value"}, toml_path=tmp_path / "absent.toml"
    )

    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("settings: %s / %r", settings, settings)
    shown = f"{settings} {settings!r} {settings.whatsapp_app_secret}"

    assert settings.whatsapp_app_secret.reveal() == "s3cr3t-value"
    assert "s3cr3t-value" not in shown
    assert "s3cr3t-value" not in caplog.text
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")


@pytest.mark.parametrize("raw", ["0", "-5", "20000", "fast"])
def test_given_unusable_whatsapp_mps_when_loaded_then_error_names_variable_and_value(
    tmp_path: Path, raw: str
) -> None:
    with pytest.raises(ConfigError, match=f"WACRM_WHATSAPP_MPS must be .*{raw}"):
        load_settings(env={"WACRM_WHATSAPP_MPS": raw}, toml_path=tmp_path / "absent.toml")


def test_given_whatsapp_mps_in_env_when_loaded_then_used(tmp_path: Path) -> None:
    found = load_settings(env={"WACRM_WHATSAPP_MPS": "20"}, toml_path=tmp_path / "absent.toml")

    assert found.whatsapp_mps == 20
