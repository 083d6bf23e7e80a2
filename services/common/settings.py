"""Typed settings. Each service subclasses ServiceSettings with its own env prefix
(ATALAYA_<SERVICE>_), reads them once at start with `load_settings`, and passes the
object to whatever needs it. Invalid values stop the process with a clear message."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self, TypeVar

from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common import topology
from services.common.identity import DEFAULT_TENANT

S = TypeVar("S", bound="ServiceSettings")

#: The SPIFFE trust domain of a deployment's certificates (spiffe://<domain>/...).
DEFAULT_TRUST_DOMAIN = "atalaya.local"


class ChannelTLSSettings(BaseModel):
    """TLS of one client channel, every file by path (read when the channel is made)."""

    model_config = {"frozen": True}

    enabled: bool = Field(False, description="TLS to the server; off: plaintext.")
    ca_file: Path | None = Field(
        None, description="CA bundle (PEM) that verifies the server; unset: the system's roots."
    )
    cert_file: Path | None = Field(
        None, description="Client certificate chain (PEM) shown to a server that asks (mTLS)."
    )
    key_file: Path | None = Field(None, description="The client certificate's private key (PEM).")
    server_name: str = Field(
        "",
        description="The name the server's certificate must carry; empty: the target's host.",
    )

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class TLSSettings(BaseModel):
    """Transport security of a service (<PREFIX>TLS__MODE=mtls, ...): what its server
    listens with and, unless a channel says otherwise, what its channels to other
    services use. Files by path; the server re-reads them when they change on disk."""

    model_config = {"frozen": True}

    mode: Literal["off", "tls", "mtls"] = Field(
        "off",
        description="off: plaintext (the local default); tls: the server shows its "
        "certificate; mtls: and every caller must show a certificate that ca_file verifies.",
    )
    cert_file: Path | None = Field(
        None,
        description="This service's certificate chain (PEM): its server certificate, and its "
        "client certificate on its channels.",
    )
    key_file: Path | None = Field(None, description="The certificate's private key (PEM).")
    ca_file: Path | None = Field(
        None,
        description="CA bundle (PEM) that verifies callers' certificates (mtls) and the "
        "certificates of the services this one calls.",
    )

    @model_validator(mode="after")
    def _files(self) -> Self:
        if self.mode != "off" and (self.cert_file is None or self.key_file is None):
            raise ValueError(f"tls mode {self.mode} needs cert_file and key_file")
        if self.mode == "mtls" and self.ca_file is None:
            raise ValueError("tls mode mtls needs ca_file")
        return self

    def channel(self) -> ChannelTLSSettings:
        """What this service's channels use unless one sets its own `tls`."""
        if self.mode == "off":
            return ChannelTLSSettings()
        return ChannelTLSSettings(
            enabled=True, ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file
        )


class PeerSettings(BaseModel):
    """Who may call a service when mTLS is on (<PREFIX>PEERS__...): the callers that
    topology.callers_of names, plus these, identified by their certificates."""

    model_config = {"frozen": True}

    trust_domain: str = Field(
        DEFAULT_TRUST_DOMAIN,
        min_length=1,
        description="SPIFFE trust domain of peer certificates (spiffe://<domain>/...); "
        "URI SANs of other domains are ignored.",
    )
    extra_callers: tuple[str, ...] = Field(
        (), description='Peer names allowed besides the call graph (JSON: ["operator"]).'
    )
    admin_callers: tuple[str, ...] = Field(
        (),
        description="Peer names allowed that also act with the admin scope (an operator's "
        "client certificate).",
    )
    tenant: str = Field(
        DEFAULT_TENANT,
        min_length=1,
        description="Tenant of a peer that calls as itself (forwards no identity).",
    )


class ServiceSettings(BaseSettings):
    """Settings every gRPC service has. Env: ATALAYA_<SERVICE>_<FIELD>, and
    ATALAYA_<SERVICE>_<FIELD>__<NESTED> for nested settings (tls, peers, channels)."""

    model_config = SettingsConfigDict(
        env_prefix="ATALAYA_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    host: str = Field(
        topology.DEFAULT_HOST,
        description="Address to bind; '[::]' or '0.0.0.0' in a container.",
    )
    port: int = Field(0, ge=0, le=65535, description="Port to bind; 0 picks a free one.")
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    log_content: bool = Field(
        False,
        description="Put prompts, texts and completions on spans and debug logs. "
        "Off by default: user content stays out of telemetry.",
    )
    grace_period_s: float = Field(
        20.0, ge=0, description="On SIGTERM, in-flight RPCs get this long to finish."
    )
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_concurrent_rpcs: int | None = Field(
        None, ge=1, description="Above this, new RPCs fail with RESOURCE_EXHAUSTED."
    )
    keepalive_time_s: float = Field(30.0, gt=0)
    keepalive_timeout_s: float = Field(10.0, gt=0)
    max_connection_age_s: float = Field(
        300.0,
        gt=0,
        description="Connections are closed after this age so clients re-resolve and "
        "spread over new replicas after a scale-up.",
    )
    max_connection_age_grace_s: float = Field(30.0, ge=0)
    readiness_interval_s: float = Field(
        2.0, gt=0, description="How often readiness (and so grpc.health.v1) is re-checked."
    )
    tls: TLSSettings = Field(
        default_factory=TLSSettings,
        description="Transport security (<PREFIX>TLS__MODE, __CERT_FILE, __KEY_FILE, __CA_FILE).",
    )
    peers: PeerSettings = Field(
        default_factory=PeerSettings,
        description="Who may call this service under mTLS, besides the call graph.",
    )
    health_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Also answer grpc.health.v1 (and nothing else) in plaintext on this "
        "port: kubelet's gRPC probes speak no TLS. Unset: health on the service port only.",
    )

    @model_validator(mode="after")
    def _channels_follow_tls(self) -> Self:
        """A channel without its own `tls` uses the service's (its certificate as the
        client certificate, its CA bundle for the server's)."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, ChannelSettings) and value.tls is None:
                # Frozen: set once, here, while the object is being validated.
                object.__setattr__(self, name, value.model_copy(update={"tls": self.tls.channel()}))
        return self


class ChannelSettings(BaseModel):
    """How to reach one upstream service; embedded in a service's settings."""

    model_config = {"frozen": True}

    target: str = Field(description="host:port or dns:///name:port")
    timeout_s: float = Field(5.0, gt=0, description="Default deadline per call.")
    max_attempts: int = Field(3, ge=1, le=5, description="Tries per call on UNAVAILABLE.")
    initial_backoff_s: float = Field(0.05, gt=0)
    max_backoff_s: float = Field(1.0, gt=0)
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    keepalive_time_s: float = Field(30.0, gt=0)
    tls: ChannelTLSSettings | None = Field(
        None,
        description="TLS of this channel (<PREFIX>TLS__ENABLED, __CA_FILE, __CERT_FILE, "
        "__KEY_FILE, __SERVER_NAME); unset: the calling service's own tls settings.",
    )


class EmbeddingChannelSettings(ChannelSettings):
    """The embedding service channel of a service that embeds text
    (<PREFIX>EMBEDDING__TARGET=...); every field has a default, so one nested
    variable (<PREFIX>EMBEDDING__TIMEOUT_S=2) keeps the others."""

    target: str = Field(topology.target("embedding"), description="host:port or dns:///name:port")


class SettingsError(SystemExit):
    """Raised when settings are invalid; exits with a readable message."""


def load_settings(cls: type[S]) -> S:
    """Read and validate settings from the environment, or exit with the reasons."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        lines = [f"invalid settings for {cls.__name__}:"]
        for err in exc.errors():
            field = "__".join(str(p) for p in err["loc"])  # env_nested_delimiter
            where = f"{prefix}{field.upper()}: " if field else ""
            # Messages of shared nested models say <PREFIX> for the variable prefix.
            msg = err["msg"].replace("<PREFIX>", f"{prefix}{field.upper()}__" if field else prefix)
            lines.append(f"  {where}{msg}")
        raise SettingsError("\n".join(lines)) from None
