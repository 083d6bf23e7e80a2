"""`python -m services.stack --tls/--mtls` (services.stack.__main__): every service
gets its certificate and the mode, settings of the stack file still win, the
CLI is told; plaintext takes the CLI's file away."""

from __future__ import annotations

from pathlib import Path

from services.common import topology
from services.stack import pki
from services.stack.__main__ import secure
from services.stack.config import load_config


def test_mtls_configures_every_service_and_the_cli(tmp_path: Path) -> None:
    stack_file = tmp_path / "stack.toml"
    stack_file.write_text(
        "[services.gateway]\nenv = { ATALAYA_GATEWAY_PEERS__EXTRA_CALLERS = '[\"agent\"]' }\n"
    )
    config = load_config(stack_file, state_dir=str(tmp_path), environ={})

    secured, client = secure(config, str(tmp_path), "mtls")

    assert client is not None and client.cert_file == pki.local_pki(tmp_path).cert_file("operator")
    for spec in secured.services:
        prefix = topology.service(spec.name).env_prefix
        assert spec.env[f"{prefix}TLS__MODE"] == "mtls"
        assert Path(spec.env[f"{prefix}TLS__CERT_FILE"]).name == f"{spec.name}.pem"
    gateway = next(s for s in secured.services if s.name == "gateway")
    assert gateway.env["ATALAYA_GATEWAY_PEERS__EXTRA_CALLERS"] == '["agent"]'
    assert pki.read_client_config(tmp_path) == client

    plain, none = secure(config, str(tmp_path), "off")
    assert none is None and plain == config
    assert pki.read_client_config(tmp_path) is None
