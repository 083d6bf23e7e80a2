"""Certificates made in a test (the `cryptography` package): a CA and leaf
certificates with whatever subject alternative names the test needs, as files."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.settings import ChannelTLSSettings, TLSSettings


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _sans(names: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        if "://" in name:
            out.append(x509.UniformResourceIdentifier(name))
            continue
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


@dataclass(frozen=True)
class Leaf:
    cert_file: Path
    key_file: Path
    serial: int


class TestCA:
    """A CA in `folder` that issues leaf certificates (server and client use)."""

    __test__ = False  # not a test class

    def __init__(self, folder: Path, name: str = "test CA") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = folder / f"{name.replace(' ', '-')}.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, file_name: str, sans: Sequence[str]) -> Leaf:
        """A key and certificate in <folder>/<file_name>.pem/.key (replacing any)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, file_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(_sans(sans)), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        leaf = Leaf(self.folder / f"{file_name}.pem", self.folder / f"{file_name}.key", 0)
        leaf.key_file.write_bytes(_pem_key(key))
        leaf.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return Leaf(leaf.cert_file, leaf.key_file, cert.serial_number)

    def server(self, leaf: Leaf, mode: str = "mtls") -> TLSSettings:
        return TLSSettings(
            mode=mode,  # type: ignore[arg-type]
            cert_file=leaf.cert_file,
            key_file=leaf.key_file,
            ca_file=self.ca_file,
        )

    def client(self, leaf: Leaf | None = None) -> ChannelTLSSettings:
        return ChannelTLSSettings(
            enabled=True,
            ca_file=self.ca_file,
            cert_file=leaf.cert_file if leaf else None,
            key_file=leaf.key_file if leaf else None,
        )
