"""Transport security, the same for every service: server credentials that follow
their files on disk, client credentials for channels, and the peer's identity read
from its certificate.

Server side: grpc.dynamic_ssl_server_credentials asks `CertificateReloader.fetch`
for the certificate configuration at every TLS handshake; the reloader compares the
files' stat signatures (path, inode, size, mtime) and reads them again only when one
changed, so a certificate that cert-manager (or anyone) rotates on disk serves the
next connection, with no restart. A half-written rotation (a key that does not match
its certificate) is not taken: the last good pair goes on serving until the files
agree again.

Client side: a channel's credentials are made from the files when the channel is
made; services.common.channel.ReloadingChannel makes a new channel when they
change, so a long-running service shows its renewed client certificate.

Peer identity: under mTLS grpc verifies the caller's certificate against the CA
bundle and hands its subject alternative names to the handler (auth_context:
peer_uri, peer_dns). `peer_name` maps them to a workload name, accepting:
  - URI SAN spiffe://<trust-domain>/ns/<namespace>/sa/<name>  (Kubernetes, SPIRE,
    Istio: the service account names the workload),
  - URI SAN spiffe://<trust-domain>/<name>                     (the local stack),
  - DNS SAN <name>[.<namespace>[.svc[.<cluster domain>]]]      (cert-manager
    Certificates of a Service: its first label; "localhost" and wildcards ignored),
    used only when the certificate has no SPIFFE ID of the trust domain.
A name "<release>-<service>" (the chart's prefix, "atalaya-memory") is the service
of the topology it ends with. The CA is the root of trust: it must issue
certificates only to the deployment's workloads."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.common import topology
from services.common.identity import AuthContext
from services.common.settings import ChannelTLSSettings, TLSSettings
from services.common.watch import WatchedFiles

log = logging.getLogger(__name__)

#: auth_context keys (grpc core's peer properties).
PEER_URI = "peer_uri"
PEER_DNS = "peer_dns"
TRANSPORT_SECURITY = "transport_security_type"
SPIFFE_SCHEME = "spiffe://"


class TLSFileError(ValueError):
    """A certificate, key or CA file is missing, unreadable or not what it should be."""


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TLSFileError(f"cannot read the {what} {path}: {exc.strerror}") from None
    if not data.strip():
        raise TLSFileError(f"the {what} {path} is empty")
    return data


@dataclass(frozen=True)
class KeyPair:
    """A certificate chain and its private key, as read from disk (PEM)."""

    chain: bytes
    key: bytes

    @property
    def certificate(self) -> x509.Certificate:
        """The leaf (first) certificate of the chain."""
        return x509.load_pem_x509_certificate(self.chain)

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> KeyPair:
        """Read and check the pair: the key must be the certificate's."""
        chain = _read(cert_file, "certificate")
        key = _read(key_file, "private key")
        try:
            certificate = x509.load_pem_x509_certificate(chain)
            private = serialization.load_pem_private_key(key, password=None)
        except ValueError:
            raise TLSFileError(f"{cert_file} or {key_file} is not PEM of its kind") from None
        if certificate.public_key() != private.public_key():
            raise TLSFileError(f"the key {key_file} is not the key of {cert_file}")
        return cls(chain, key)


def load_ca(ca_file: Path) -> bytes:
    """A CA bundle (PEM), checked to hold at least one certificate."""
    data = _read(ca_file, "CA bundle")
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSFileError(f"the CA bundle {ca_file} holds no PEM certificate") from None
    return data


class CertificateReloader:
    """The server's certificate configuration, re-read when its files change."""

    def __init__(self, settings: TLSSettings) -> None:
        if settings.mode == "off" or settings.cert_file is None or settings.key_file is None:
            raise ValueError("a certificate reloader needs tls mode tls or mtls with cert and key")
        self._cert_file = settings.cert_file
        self._key_file = settings.key_file
        self._ca_file = settings.ca_file if settings.mode == "mtls" else None
        paths = [p for p in (self._cert_file, self._key_file, self._ca_file) if p]
        self._lock = threading.Lock()
        self._watch = WatchedFiles(*paths)  # at every handshake: a stat per file
        self._watch.seen_now()
        self.serial = 0  # the serving certificate's serial number
        self.loads = 0
        # The first read must succeed: a service does not start without its certificate.
        self._initial = self._load()

    def _load(self) -> grpc.ServerCertificateConfiguration:
        pair = KeyPair.load(self._cert_file, self._key_file)
        ca = load_ca(self._ca_file) if self._ca_file is not None else None
        config = grpc.ssl_server_certificate_configuration([(pair.key, pair.chain)], ca)
        self.serial = pair.certificate.serial_number
        self.loads += 1
        log.info(
            "server certificate loaded",
            extra={"cert_file": str(self._cert_file), "serial": format(self.serial, "x")},
        )
        return config

    def initial(self) -> grpc.ServerCertificateConfiguration:
        return self._initial

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's callback, at each handshake: a new configuration, or None (no change)."""
        with self._lock:
            changed, signature = self._watch.poll()
            if not changed or signature is None:
                return None
            self._watch.seen(signature)  # good or bad: tried again once they change
            try:
                return self._load()
            except TLSFileError as exc:
                # Mid-rotation or broken: keep serving the last good pair; try again
                # when the files change next.
                log.warning("server certificate not reloaded", extra={"reason": str(exc)})
                return None


def server_credentials(settings: TLSSettings) -> tuple[grpc.ServerCredentials, CertificateReloader]:
    """Credentials for the server's port (tls or mtls mode) and their reloader."""
    reloader = CertificateReloader(settings)
    credentials = grpc.dynamic_ssl_server_credentials(
        reloader.initial(),
        reloader.fetch,
        require_client_authentication=settings.mode == "mtls",
    )
    return credentials, reloader


def channel_credentials(settings: ChannelTLSSettings) -> grpc.ChannelCredentials:
    """TLS credentials of a client channel, from the files as they are now."""
    if not settings.enabled:
        raise ValueError("channel TLS is not enabled")
    ca = load_ca(settings.ca_file) if settings.ca_file is not None else None
    pair = (
        KeyPair.load(settings.cert_file, settings.key_file)
        if settings.cert_file is not None and settings.key_file is not None
        else None
    )
    return grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=pair.key if pair else None,
        certificate_chain=pair.chain if pair else None,
    )


def channel_files(settings: ChannelTLSSettings | None) -> list[Path]:
    """The files a channel's TLS is made from (none: plaintext, or system roots only)."""
    if settings is None or not settings.enabled:
        return []
    return [p for p in (settings.ca_file, settings.cert_file, settings.key_file) if p]


def channel_options(settings: ChannelTLSSettings | None) -> list[tuple[str, str]]:
    """The channel options TLS adds: the name expected in the server's certificate."""
    if settings is None or not settings.enabled or not settings.server_name:
        return []
    return [("grpc.ssl_target_name_override", settings.server_name)]


def _strings(auth_context: AuthContext, key: str) -> list[str]:
    return [v.decode("utf-8", "replace") for v in auth_context.get(key, ())]


def has_certificate(auth_context: AuthContext) -> bool:
    """True when the peer showed a certificate that the server verified."""
    return bool(auth_context.get(PEER_URI) or auth_context.get(PEER_DNS)) or bool(
        auth_context.get("x509_pem_cert")
    )


def service_name(workload: str) -> str:
    """The topology's service that a workload name stands for ("atalaya-memory" ->
    "memory"), or the name itself (an operator's client, another workload)."""
    if workload in topology.NAMES:
        return workload
    for name in topology.NAMES:
        if workload.endswith(f"-{name}"):
            return name
    return workload


def spiffe_workload(uri: str, trust_domain: str) -> str | None:
    """The workload name of a SPIFFE ID of `trust_domain`, or None."""
    if not uri.startswith(SPIFFE_SCHEME):
        return None
    domain, _, path = uri.removeprefix(SPIFFE_SCHEME).partition("/")
    if domain.lower() != trust_domain.lower():
        return None
    parts = path.split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0]  # spiffe://<domain>/<name>
    if len(parts) == 4 and parts[0] == "ns" and parts[2] == "sa" and parts[1] and parts[3]:
        return parts[3]  # spiffe://<domain>/ns/<namespace>/sa/<name>
    return None


def peer_name(auth_context: AuthContext, trust_domain: str) -> str | None:
    """The name of the peer's workload from its verified certificate (see the module
    doc for the forms), or None: no certificate, or no name that maps to one workload."""
    spiffe = {
        w
        for uri in _strings(auth_context, PEER_URI)
        if (w := spiffe_workload(uri, trust_domain)) is not None
    }
    if spiffe:
        names = {service_name(w) for w in spiffe}
    else:
        names = {
            service_name(dns.split(".", 1)[0])
            for dns in _strings(auth_context, PEER_DNS)
            if dns and not dns.startswith("*") and dns != "localhost"
        }
    if len(names) != 1:
        return None
    return names.pop()
