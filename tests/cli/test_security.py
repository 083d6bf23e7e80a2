"""The CLI's connection options (services.cli.security): flags over environment
variables over the local stack's file; the token from a file or the environment."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from services.cli import security
from services.common.settings import ChannelTLSSettings
from services.stack import pki


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    security.add_options(parser)
    return parser.parse_args(list(argv))


def test_no_option_is_plaintext_without_a_token(tmp_path: Path) -> None:
    assert security.connection(parse(), {}, tmp_path) == security.PLAINTEXT


def test_flags_win_over_environment_variables(tmp_path: Path) -> None:
    environ = {
        "ATALAYA_CA_FILE": "/env/ca.pem",
        "ATALAYA_CERT_FILE": "/env/c.pem",
        "ATALAYA_KEY_FILE": "/env/c.key",
    }
    args = parse("--ca-file", "/flag/ca.pem", "--server-name", "gw.example")
    tls = security.connection(args, environ, tmp_path).tls
    assert tls == ChannelTLSSettings(
        enabled=True,
        ca_file=Path("/flag/ca.pem"),
        cert_file=Path("/env/c.pem"),
        key_file=Path("/env/c.key"),
        server_name="gw.example",
    )


def test_tls_with_the_systems_roots(tmp_path: Path) -> None:
    assert security.connection(parse("--tls"), {}, tmp_path).tls == ChannelTLSSettings(enabled=True)
    environ = {"ATALAYA_TLS": "1"}
    assert security.connection(parse(), environ, tmp_path).tls == ChannelTLSSettings(enabled=True)


def test_the_local_stacks_certificates_are_the_default_unless_plaintext(tmp_path: Path) -> None:
    client = pki.local_pki(tmp_path).client_tls()
    pki.write_client_config(tmp_path, client)
    assert security.connection(parse(), {}, tmp_path).tls == client
    assert security.connection(parse("--plaintext"), {}, tmp_path).tls is None
    chosen = security.connection(parse("--ca-file", "/mine.pem"), {}, tmp_path).tls
    assert chosen is not None and chosen.ca_file == Path("/mine.pem") and chosen.cert_file is None


def test_the_token_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("atk_from_file\n")
    assert security.connection(parse("--token-file", str(token_file)), {}, tmp_path).token == (
        "atk_from_file"
    )
    environ = {"ATALAYA_TOKEN": "from-env", "ATALAYA_TOKEN_FILE": str(token_file)}
    assert security.connection(parse(), environ, tmp_path).token == "atk_from_file"
    assert security.connection(parse(), {"ATALAYA_TOKEN": "jwt"}, tmp_path).token == "jwt"
    connection = security.connection(parse(), {"ATALAYA_TOKEN": "secret-jwt"}, tmp_path)
    assert "secret-jwt" not in repr(connection)


def test_bad_options_stop_with_a_message(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="cannot read the token file"):
        security.connection(parse("--token-file", str(tmp_path / "none")), {}, tmp_path)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SystemExit, match="is empty"):
        security.connection(parse("--token-file", str(tmp_path / "empty")), {}, tmp_path)
    with pytest.raises(SystemExit, match="invalid TLS options"):
        security.connection(parse("--cert-file", "/c.pem"), {}, tmp_path)
