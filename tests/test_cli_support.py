"""A store that does not answer is one line on stderr from any command, never a traceback."""

from __future__ import annotations

import socket

from click.testing import CliRunner

from wacrm.cli import cli


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when this returns: nothing listens


def test_given_an_unreachable_postgresql_when_a_store_command_runs_then_one_line_exit_1(
    tmp_path: object,
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/nothing"
    result = CliRunner().invoke(
        cli, ["hooks", "list"], env={"WACRM_DATABASE_URL": url, "WACRM_CONFIG": "/nonexistent"}
    )

    assert result.exit_code == 1
    assert result.output.startswith("wacrm: error: the store is unavailable:")
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
