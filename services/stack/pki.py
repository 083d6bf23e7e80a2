"""The local stack's certificates (`python -m services.stack --tls` / `--mtls`): a
local CA and one certificate per service, plus the operator's client certificate
that the `atalaya` CLI and the tests use, all made with the `cryptography` package
in <state>/tls/.

Every certificate is for both server and client use (mTLS) and names its workload
three ways: DNS <name> and localhost, the stack's IP address (127.0.0.1), and the
SPIFFE ID spiffe://<trust domain>/<name> that services.common.tls reads as the
peer's identity. A later start reuses what is still good (the CA for a year, each
certificate for 30 days, renewed a day before it ends), so clients that trust the
CA keep working across restarts. Keys are written 0600, files replaced atomically.

Not for production: there cert-manager or a mesh issues the certificates."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common import topology
from services.common.settings import DEFAULT_TRUST_DOMAIN, ChannelTLSSettings

TLS_DIR = Path("tls")  # in the state folder
CLIENT_FILE = "client.json"  # the CLI's default TLS settings, in TLS_DIR
#: The client identity of the local operator (the CLI, the tests): an admin caller.
OPERATOR = "operator"
MODES = ("off", "tls", "mtls")
CA_DAYS = 365
LEAF_DAYS = 30
RENEW_BEFORE = datetime.timedelta(days=1)
CA_NAME = "Atalaya local CA"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Replace `path` atomically (a reader sees the old file or the new one)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _host_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


@dataclass(frozen=True)
class LocalPKI:
    """A CA and the certificates it issued, in `folder`."""

    folder: Path
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    hosts: tuple[str, ...] = (topology.DEFAULT_HOST,)

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key_file(self) -> Path:
        return self.folder / "ca.key"

    def cert_file(self, name: str) -> Path:
        return self.folder / f"{name}.pem"

    def key_file(self, name: str) -> Path:
        return self.folder / f"{name}.key"

    def spiffe_id(self, name: str) -> str:
        return f"spiffe://{self.trust_domain}/{name}"

    def sans(self, name: str) -> set[x509.GeneralName]:
        return {
            x509.DNSName(name),
            x509.DNSName("localhost"),
            *_host_names(self.hosts),
            x509.UniformResourceIdentifier(self.spiffe_id(name)),
        }

    # -- the CA ------------------------------------------------------------

    def _load_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
        try:
            cert = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
            key = serialization.load_pem_private_key(self.ca_key_file.read_bytes(), None)
        except (OSError, ValueError):
            return None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.public_key() != key.public_key():
            return None
        if cert.not_valid_after_utc - RENEW_BEFORE < _now():
            return None
        return cert, key

    def _new_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write(self.ca_key_file, _key_pem(key), private=True)
        _write(self.ca_file, _cert_pem(cert))
        return cert, key

    def ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """The CA, made when there is none (or it is about to end)."""
        return self._load_ca() or self._new_ca()

    # -- certificates ------------------------------------------------------

    def issue(self, name: str) -> x509.Certificate:
        """A new key and certificate for `name` (replacing any), signed by the CA."""
        ca_cert, ca_key = self.ca()
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sorted(self.sans(name), key=str)), False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        # The key first: a reader that sees the new certificate finds its key.
        _write(self.key_file(name), _key_pem(key), private=True)
        _write(self.cert_file(name), _cert_pem(cert))
        return cert

    def certificate(self, name: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_file(name).read_bytes())

    def _still_good(self, name: str, ca_cert: x509.Certificate) -> bool:
        try:
            cert = self.certificate(name)
            key = serialization.load_pem_private_key(self.key_file(name).read_bytes(), None)
            cert.verify_directly_issued_by(ca_cert)
            sans = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            return False
        return (
            cert.public_key() == key.public_key()
            and cert.not_valid_after_utc - RENEW_BEFORE > _now()
            and sans == self.sans(name)
        )

    def ensure(self, names: Sequence[str]) -> LocalPKI:
        """The CA and a certificate for each of `names`, reusing what is still good."""
        self.folder.mkdir(parents=True, exist_ok=True)
        ca_cert, _ = self.ca()
        for name in names:
            if not self._still_good(name, ca_cert):
                self.issue(name)
        return self

    # -- settings ----------------------------------------------------------

    def client_tls(self, name: str = OPERATOR) -> ChannelTLSSettings:
        """Channel settings of a client that shows `name`'s certificate."""
        return ChannelTLSSettings(
            enabled=True,
            ca_file=self.ca_file,
            cert_file=self.cert_file(name),
            key_file=self.key_file(name),
        )

    def service_env(self, name: str, mode: str) -> dict[str, str]:
        """The settings that make service `name` serve (and call) with `mode`."""
        prefix = topology.service(name).env_prefix
        if mode == "off":
            return {f"{prefix}TLS__MODE": "off"}
        return {
            f"{prefix}TLS__MODE": mode,
            f"{prefix}TLS__CERT_FILE": str(self.cert_file(name)),
            f"{prefix}TLS__KEY_FILE": str(self.key_file(name)),
            f"{prefix}TLS__CA_FILE": str(self.ca_file),
            f"{prefix}PEERS__TRUST_DOMAIN": self.trust_domain,
            f"{prefix}PEERS__ADMIN_CALLERS": json.dumps([OPERATOR]),
        }


def local_pki(state_dir: Path | str, hosts: Sequence[str] = (topology.DEFAULT_HOST,)) -> LocalPKI:
    """The stack's PKI in <state>/tls, with every service's and the operator's
    certificates in place."""
    pki = LocalPKI(Path(state_dir).resolve() / TLS_DIR, hosts=tuple(hosts))
    return pki.ensure([*topology.NAMES, OPERATOR])


def write_client_config(state_dir: Path | str, settings: ChannelTLSSettings | None) -> None:
    """What the CLI uses by default against this stack; None: plaintext (the file goes)."""
    path = Path(state_dir) / TLS_DIR / CLIENT_FILE
    if settings is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, settings.model_dump_json(indent=2).encode())


def read_client_config(state_dir: Path | str) -> ChannelTLSSettings | None:
    """The TLS settings the running stack wrote for its clients, if it runs with TLS."""
    path = Path(state_dir) / TLS_DIR / CLIENT_FILE
    try:
        return ChannelTLSSettings.model_validate_json(path.read_bytes())
    except OSError:
        return None
