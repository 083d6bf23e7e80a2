"""How the CLI connects: TLS (CA bundle, client certificate) and the credential it
sends (`authorization: Bearer <token or API key>`).

Each option comes from its flag, else its environment variable:

    --ca-file       ATALAYA_CA_FILE       CA bundle that verifies the server (turns TLS on)
    --cert-file     ATALAYA_CERT_FILE     client certificate, for mTLS (with the key)
    --key-file      ATALAYA_KEY_FILE      the client certificate's key
    --server-name   ATALAYA_SERVER_NAME   name expected in the server's certificate
    --tls           ATALAYA_TLS=1         TLS with the system's CA roots
    --plaintext                           no TLS, whatever the stack says
    --token-file    ATALAYA_TOKEN_FILE    file holding the token or API key
                    ATALAYA_TOKEN         the token or API key itself

The token is read from a file or the environment, never from a flag's value: a
command line is visible to every user of the machine. With no TLS option at all,
the CLI uses what the local stack wrote when it started with --tls or --mtls
(<state>/tls/client.json: its CA and the operator's certificate), else plaintext."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from services.client.base import BaseClient
from services.common.settings import ChannelTLSSettings
from services.stack import pki

C = TypeVar("C", bound=BaseClient)

DEFAULT_STATE_DIR = Path(".state")
ENV = {
    "ca_file": "ATALAYA_CA_FILE",
    "cert_file": "ATALAYA_CERT_FILE",
    "key_file": "ATALAYA_KEY_FILE",
    "server_name": "ATALAYA_SERVER_NAME",
}
TLS_ENV = "ATALAYA_TLS"
TOKEN_ENV = "ATALAYA_TOKEN"  # noqa: S105 - the variable's name, not a secret
TOKEN_FILE_ENV = "ATALAYA_TOKEN_FILE"  # noqa: S105 - likewise


@dataclass(frozen=True)
class Connection:
    """TLS settings (None: plaintext) and the bearer credential (None: none)."""

    tls: ChannelTLSSettings | None = None
    token: str | None = field(default=None, repr=False)

    def connect(self, cls: type[C], target: str, timeout_s: float) -> C:
        return cls.connect(target, timeout_s=timeout_s, tls=self.tls, token=self.token)


PLAINTEXT = Connection()


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection (flags win over environment variables)")
    group.add_argument("--ca-file", type=Path, help=f"CA bundle (PEM); ${ENV['ca_file']}")
    group.add_argument(
        "--cert-file", type=Path, help=f"client certificate (PEM), mTLS; ${ENV['cert_file']}"
    )
    group.add_argument("--key-file", type=Path, help=f"its private key (PEM); ${ENV['key_file']}")
    group.add_argument(
        "--server-name", help=f"name in the server's certificate; ${ENV['server_name']}"
    )
    tls = group.add_mutually_exclusive_group()
    tls.add_argument(
        "--tls", action="store_true", default=None, help=f"TLS with system roots; ${TLS_ENV}=1"
    )
    tls.add_argument("--plaintext", action="store_true", help="no TLS (ignore the local stack's)")
    group.add_argument(
        "--token-file",
        type=Path,
        help=f"file with the bearer token or API key; ${TOKEN_FILE_ENV}, "
        f"or the token itself in ${TOKEN_ENV}",
    )


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _tls(
    args: argparse.Namespace, environ: Mapping[str, str], state_dir: Path
) -> ChannelTLSSettings | None:
    if getattr(args, "plaintext", False):
        return None
    given = {
        key: value
        for key, var in ENV.items()
        if (value := getattr(args, key, None) or environ.get(var) or None) is not None
    }
    enabled = bool(getattr(args, "tls", None)) or _truthy(environ.get(TLS_ENV))
    if given or enabled:
        return ChannelTLSSettings(enabled=True, **given)
    return pki.read_client_config(state_dir)


def _token(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    path = getattr(args, "token_file", None) or environ.get(TOKEN_FILE_ENV)
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SystemExit(f"cannot read the token file {path}: {exc.strerror}") from None
        if not token:
            raise SystemExit(f"the token file {path} is empty")
        return token
    return environ.get(TOKEN_ENV, "").strip() or None


def connection(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    state_dir: Path = DEFAULT_STATE_DIR,
) -> Connection:
    """The connection the options, the environment and the local stack ask for."""
    environ = os.environ if environ is None else environ
    try:
        tls = _tls(args, environ, state_dir)
    except ValueError as exc:  # a certificate without its key
        raise SystemExit(f"invalid TLS options: {exc}") from None
    return Connection(tls, _token(args, environ))
