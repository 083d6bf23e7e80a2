"""The local stack's certificates (services.stack.pki): a CA, one certificate per
service and the operator's, each naming its workload as services.common.tls reads
it; reused while good, renewed when not; keys private; the CLI's client file."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from cryptography import x509

from services.common import topology
from services.common.settings import ChannelTLSSettings
from services.stack import pki


def sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def test_every_service_and_the_operator_get_a_certificate_of_the_ca(tmp_path: Path) -> None:
    local = pki.local_pki(tmp_path)
    ca = x509.load_pem_x509_certificate(local.ca_file.read_bytes())
    for name in (*topology.NAMES, pki.OPERATOR):
        cert = local.certificate(name)
        cert.verify_directly_issued_by(ca)
        names = sans(cert)
        assert x509.DNSName(name) in names
        assert x509.IPAddress(ipaddress.ip_address("127.0.0.1")) in names
        assert x509.UniformResourceIdentifier(f"spiffe://atalaya.local/{name}") in names
        assert stat.S_IMODE(local.key_file(name).stat().st_mode) == 0o600
    assert stat.S_IMODE(local.ca_key_file.stat().st_mode) == 0o600


def test_a_second_start_reuses_good_certificates_and_replaces_bad_ones(tmp_path: Path) -> None:
    first = pki.local_pki(tmp_path)
    serials = {n: first.certificate(n).serial_number for n in topology.NAMES}
    first.key_file("memory").write_bytes(first.key_file("gateway").read_bytes())  # broken pair

    second = pki.local_pki(tmp_path)

    assert second.ca_file.read_bytes() == first.ca_file.read_bytes()
    again = {n: second.certificate(n).serial_number for n in topology.NAMES}
    assert {n for n in topology.NAMES if again[n] != serials[n]} == {"memory"}


def test_a_new_ca_reissues_every_certificate(tmp_path: Path) -> None:
    first = pki.local_pki(tmp_path)
    serial = first.certificate("memory").serial_number
    first.ca_key_file.unlink()
    second = pki.local_pki(tmp_path)
    ca = x509.load_pem_x509_certificate(second.ca_file.read_bytes())
    second.certificate("memory").verify_directly_issued_by(ca)
    assert second.certificate("memory").serial_number != serial


def test_service_settings_for_each_mode(tmp_path: Path) -> None:
    local = pki.local_pki(tmp_path)
    env = local.service_env("memory", "mtls")
    assert env["ATALAYA_MEMORY_TLS__MODE"] == "mtls"
    assert env["ATALAYA_MEMORY_TLS__CERT_FILE"] == str(local.cert_file("memory"))
    assert env["ATALAYA_MEMORY_TLS__CA_FILE"] == str(local.ca_file)
    assert env["ATALAYA_MEMORY_PEERS__ADMIN_CALLERS"] == '["operator"]'
    assert local.service_env("memory", "off") == {"ATALAYA_MEMORY_TLS__MODE": "off"}


def test_the_client_file_is_written_for_tls_and_removed_for_plaintext(tmp_path: Path) -> None:
    assert pki.read_client_config(tmp_path) is None
    client = pki.local_pki(tmp_path).client_tls()
    pki.write_client_config(tmp_path, client)
    assert pki.read_client_config(tmp_path) == client
    assert client.cert_file == (tmp_path / "tls" / "operator.pem").resolve()
    pki.write_client_config(tmp_path, None)
    assert pki.read_client_config(tmp_path) is None
    assert isinstance(client, ChannelTLSSettings) and client.enabled
