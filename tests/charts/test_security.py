"""The chart's transport security and authentication, rendered by Helm's engine: a
certificate per service (cert-manager or Secrets) mounted read-only, the services' TLS and
auth settings pointing at the mounted files, mTLS by profile, the gateway behind an Ingress
or a GRPCRoute, and the `helm test` pod's health check run for real over mTLS."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import helm_python as helm
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common import identity, topology
from tests.charts.helm import (
    NAMESPACE,
    RENDERINGS,
    SERVICES,
    Obj,
    component,
    effective_values,
    merge,
    notes,
    of_kind,
    pod_spec,
    profile_values,
    render,
    rendered,
    validation_errors,
)

MOUNT = "/etc/atalaya/tls"
#: The settings names the services read (services/common/settings.py, the gateway's auth).
SERVER_TLS = ("MODE", "CERT_FILE", "KEY_FILE", "CA_FILE")
CLIENT_TLS = ("CA_FILE", "CERT_FILE", "KEY_FILE", "SERVER_NAME")
AUTH = {
    "MODE",
    "ISSUER",
    "AUDIENCE",
    "JWKS_URL",
    "JWKS_FILE",
    "TENANT_CLAIM",
    "USER_CLAIM",
    "SCOPE_CLAIMS",
    "LEEWAY_S",
    "API_KEYS_FILE",
}
#: Which renderings run TLS, and mTLS.
TLS = {
    "cpu",
    "gpu",
    "gpu-kserve",
    "cpu-secrets",
    "cpu-issuer",
    "gpu-exposed",
    "dev-auth",
    "gpu-node-cache",
}
MUTUAL = TLS - {"dev-auth"}


def values_of(profile: str) -> dict[str, Any]:
    return effective_values(profile_values(profile))


def config_of(objects: tuple[Obj, ...] | list[Obj], name: str) -> dict[str, str]:
    (config,) = [c for c in of_kind(objects, "ConfigMap") if component(c) == name]
    return dict(config["data"])


def deployment_of(objects: tuple[Obj, ...] | list[Obj], name: str) -> Obj:
    (deployment,) = [d for d in of_kind(objects, "Deployment") if component(d) == name]
    return deployment


def certificates(objects: tuple[Obj, ...] | list[Obj]) -> dict[str, Obj]:
    return {component(c): c for c in of_kind(objects, "Certificate")}


def headless_fqdn(name: str) -> str:
    return f"atalaya-{name}-headless.{NAMESPACE}.svc.cluster.local"


# --- a certificate per service, mounted ------------------------------------------------------


@pytest.mark.parametrize("profile", RENDERINGS)
def test_tls_and_mtls_as_the_profile_says(profile: str) -> None:
    objects = rendered(profile)
    for name in SERVICES:
        data = config_of(objects, name)
        server = {k for k in data if k.startswith(f"ATALAYA_{name.upper()}_TLS__")}
        if profile not in TLS:
            assert server == set(), name
            assert not any("__TLS__" in k or k.endswith("HEALTH_PORT") for k in data), name
            continue
        mutual = profile in MUTUAL
        prefix = f"ATALAYA_{name.upper()}_TLS__"
        expected = SERVER_TLS if mutual else ("MODE", "CERT_FILE", "KEY_FILE")
        assert server == {prefix + k for k in expected}, name
        assert data[prefix + "CERT_FILE"] == f"{MOUNT}/tls.crt"
        assert data[prefix + "KEY_FILE"] == f"{MOUNT}/tls.key"
        # Backends require client certificates; the gateway's clients use tokens.
        mode = "mtls" if mutual and name != "gateway" else "tls"
        assert data[prefix + "MODE"] == mode, name
        assert data[f"ATALAYA_{name.upper()}_PEERS__TRUST_DOMAIN"] == "cluster.local", name
        assert data[f"ATALAYA_{name.upper()}_HEALTH_PORT"] == "9465"


@pytest.mark.parametrize("profile", sorted(TLS))
def test_every_caller_checks_its_callee_and_shows_its_own_certificate(profile: str) -> None:
    objects = rendered(profile)
    values = values_of(profile)
    ca = f"{MOUNT}-ca/ca.crt" if values["tls"]["caBundle"]["configMap"] else f"{MOUNT}/ca.crt"
    mutual = profile in MUTUAL
    for caller in SERVICES:
        data = config_of(objects, caller)
        channels = {
            key.split("__")[0].removeprefix(f"ATALAYA_{caller.upper()}_").lower()
            for key in data
            if "__TLS__" in key
        }
        assert channels == set(topology.service(caller).calls), caller
        for callee in topology.service(caller).calls:
            prefix = f"ATALAYA_{caller.upper()}_{callee.upper()}__TLS__"
            given = {k.removeprefix(prefix) for k in data if k.startswith(prefix)}
            assert given == (set(CLIENT_TLS) if mutual else {"CA_FILE", "SERVER_NAME"})
            assert data[prefix + "CA_FILE"] == ca
            # The name checked is the host of the target, and a name of the callee's cert.
            target = data[f"ATALAYA_{caller.upper()}_{callee.upper()}__TARGET"]
            assert target == f"dns:///{headless_fqdn(callee)}:{topology.port(callee)}"
            assert data[prefix + "SERVER_NAME"] == headless_fqdn(callee)
            if mutual:
                assert data[prefix + "CERT_FILE"] == f"{MOUNT}/tls.crt"
                assert data[prefix + "KEY_FILE"] == f"{MOUNT}/tls.key"
        if data.get(f"ATALAYA_{caller.upper()}_TLS__CA_FILE"):
            assert data[f"ATALAYA_{caller.upper()}_TLS__CA_FILE"] == ca


@pytest.mark.parametrize("profile", sorted(TLS))
def test_every_pod_mounts_its_own_certificate_read_only(profile: str) -> None:
    objects = rendered(profile)
    values = values_of(profile)
    for name in SERVICES:
        deployment = deployment_of(objects, name)
        spec = pod_spec(deployment)
        assert spec is not None
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == f"atalaya-{name}-tls"
        assert volumes["tls"]["secret"]["defaultMode"] == 0o440
        (container,) = spec["containers"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        # The whole Secret, no subPath: the kubelet swaps rotated files in place.
        assert mounts["tls"] == {"name": "tls", "mountPath": MOUNT, "readOnly": True}
        if values["tls"]["caBundle"]["configMap"]:
            assert volumes["tls-ca"]["configMap"]["name"] == values["tls"]["caBundle"]["configMap"]
            assert mounts["tls-ca"] == {
                "name": "tls-ca",
                "mountPath": f"{MOUNT}-ca",
                "readOnly": True,
            }
        # Rotation reloads the files: no checksum of a certificate restarts the pods.
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert set(annotations) - set(values["services"][name]["podAnnotations"]) == {
            "checksum/config"
        }
        # The kubelet's probes (no TLS) ask the plaintext health listener.
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["readinessProbe"]["grpc"] == {"port": ports["health"]}


def test_secret_names_come_from_values() -> None:
    values = merge(profile_values("cpu"), {"tls": {"secretNames": {"memory": "memory-cert"}}})
    objects = render(values)
    spec = pod_spec(deployment_of(objects, "memory"))
    assert spec is not None
    assert {v["name"]: v for v in spec["volumes"]}["tls"]["secret"]["secretName"] == "memory-cert"
    assert certificates(objects)["memory"]["spec"]["secretName"] == "memory-cert"
    assert certificates(objects)["gateway"]["spec"]["secretName"] == "atalaya-gateway-tls"


def test_cert_manager_issues_each_service_its_identity() -> None:
    objects = rendered("cpu")
    issued = certificates(objects)
    assert set(issued) == {*SERVICES, "ca"}
    accounts = {a["metadata"]["name"] for a in of_kind(objects, "ServiceAccount")}
    for name in SERVICES:
        spec = issued[name]["spec"]
        expected = [
            f"atalaya-{name}-headless",
            f"atalaya-{name}-headless.{NAMESPACE}",
            f"atalaya-{name}-headless.{NAMESPACE}.svc",
            headless_fqdn(name),
        ]
        if name == "gateway":  # its ClusterIP Service too
            expected += ["atalaya-gateway", f"atalaya-gateway.{NAMESPACE}",
                         f"atalaya-gateway.{NAMESPACE}.svc",
                         f"atalaya-gateway.{NAMESPACE}.svc.cluster.local"]  # fmt: skip
        assert spec["dnsNames"] == expected
        # SPIFFE ID of the pod's own service account.
        account = pod_spec(deployment_of(objects, name))["serviceAccountName"]  # type: ignore[index]
        assert account in accounts
        assert spec["uris"] == [f"spiffe://cluster.local/ns/{NAMESPACE}/sa/{account}"]
        assert {"server auth", "client auth"} <= set(spec["usages"])
        assert spec["privateKey"]["rotationPolicy"] == "Always"
        assert spec["issuerRef"] == {
            "name": "atalaya-ca",
            "kind": "Issuer",
            "group": "cert-manager.io",
        }
    # The chart's own CA: a self-signed root that keeps its key, and the Issuer it backs.
    issuers = {i["metadata"]["name"]: i["spec"] for i in of_kind(objects, "Issuer")}
    assert issuers == {
        "atalaya-ca-selfsigned": {"selfSigned": {}},
        "atalaya-ca": {"ca": {"secretName": "atalaya-ca"}},
    }
    root = issued["ca"]["spec"]
    assert root["isCA"] is True
    assert root["secretName"] == "atalaya-ca"
    assert root["privateKey"]["rotationPolicy"] == "Never"
    assert root["issuerRef"]["name"] == "atalaya-ca-selfsigned"
    assert of_kind(objects, "Secret") == []


def test_your_own_issuer_replaces_the_charts_ca() -> None:
    objects = rendered("cpu-issuer")
    issued = certificates(objects)
    assert set(issued) == set(SERVICES)
    assert of_kind(objects, "Issuer") == []
    for certificate in issued.values():
        spec = certificate["spec"]
        assert spec["issuerRef"] == {
            "name": "corp-ca",
            "kind": "ClusterIssuer",
            "group": "cert-manager.io",
        }
        assert spec["privateKey"]["algorithm"] == "RSA"
        assert "key encipherment" in spec["usages"]


def test_secrets_provider_needs_no_cert_manager() -> None:
    objects = rendered("cpu-secrets")
    assert of_kind(objects, "Certificate") == []
    assert of_kind(objects, "Issuer") == []
    assert not any(o["apiVersion"].startswith("cert-manager.io") for o in objects)


def test_a_certificate_with_an_unknown_field_is_invalid() -> None:
    certificate = dict(certificates(rendered("cpu"))["memory"])
    certificate["spec"] = {**certificate["spec"], "dnsName": ["x"]}
    assert list(validation_errors(certificate))
    route = dict(of_kind(rendered("gpu-exposed"), "GRPCRoute")[0])
    route["spec"] = {**route["spec"], "rule": []}
    assert list(validation_errors(route))


# --- authentication at the gateway -------------------------------------------------------------


def auth_env(objects: tuple[Obj, ...] | list[Obj], name: str) -> dict[str, str]:
    prefix = f"ATALAYA_{name.upper()}_AUTH__"
    return {
        k.removeprefix(prefix): v
        for k, v in config_of(objects, name).items()
        if k.startswith(prefix)
    }


@pytest.mark.parametrize("profile", RENDERINGS)
def test_auth_settings_only_at_the_gateway_and_only_when_required(profile: str) -> None:
    objects = rendered(profile)
    required = values_of(profile)["auth"]["mode"] == "required"
    for name in SERVICES:
        env = auth_env(objects, name)
        if name != "gateway" or not required:
            assert env == {}, name
        else:
            assert env["MODE"] == "required"
            assert set(env) <= AUTH


def test_oidc_and_api_keys_settings_point_at_values_and_mounted_files() -> None:
    objects = rendered("gpu-exposed")
    env = auth_env(objects, "gateway")
    assert env == {
        "MODE": "required",
        "ISSUER": "https://id.example.com/realms/atalaya",
        "AUDIENCE": "atalaya",
        "JWKS_URL": "https://id.example.com/realms/atalaya/protocol/openid-connect/certs",
        "TENANT_CLAIM": "org",
        "USER_CLAIM": "sub",
        "SCOPE_CLAIMS": '["scope"]',
        "LEEWAY_S": "30",
        "API_KEYS_FILE": "/etc/atalaya/auth/api-keys/api-keys",
    }
    spec = pod_spec(deployment_of(objects, "gateway"))
    assert spec is not None
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["api-keys"]["secret"]["secretName"] == "atalaya-api-keys"
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["api-keys"] == {
        "name": "api-keys",
        "mountPath": "/etc/atalaya/auth/api-keys",
        "readOnly": True,
    }
    assert "jwks" not in volumes
    for name in SERVICES:
        if name != "gateway":
            other = pod_spec(deployment_of(objects, name))
            assert other is not None
            assert "api-keys" not in {v["name"] for v in other["volumes"]}


def test_a_jwks_file_replaces_fetching_it() -> None:
    objects = rendered("dev-auth")
    env = auth_env(objects, "gateway")
    assert env["JWKS_FILE"] == "/etc/atalaya/auth/jwks/jwks.json"
    assert "JWKS_URL" not in env
    assert "API_KEYS_FILE" not in env
    spec = pod_spec(deployment_of(objects, "gateway"))
    assert spec is not None
    assert {v["name"]: v for v in spec["volumes"]}["jwks"]["configMap"]["name"] == "atalaya-jwks"


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"auth": {"mode": "required"}}, "auth.oidc.issuer"),
        ({"auth": {"mode": "required", "oidc": {"issuer": "https://id.example.com"}}}, "audience"),
        (
            {
                "auth": {
                    "mode": "required",
                    "oidc": {"issuer": "https://id.example.com", "audience": "a"},
                }
            },
            "auth.oidc.egress",
        ),
        ({"ingress": {"enabled": True, "tlsSecretName": "t"}}, "ingress.hosts"),
        ({"ingress": {"enabled": True, "hosts": ["a.example.com"]}}, "ingress.tlsSecretName"),
        ({"grpcRoute": {"enabled": True}}, "grpcRoute.parentRefs"),
        (
            {
                "tls": {"enabled": True},
                "grpcRoute": {"enabled": True, "parentRefs": [{"name": "g"}]},
            },
            "grpcRoute.backendCAConfigMap",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_incomplete_settings_stop_the_render_with_the_reason(
    values: dict[str, Any], reason: str
) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(reason)):
        render(values)


def test_without_network_policies_the_issuer_needs_no_egress() -> None:
    values = {
        "networkPolicy": {"enabled": False},
        "auth": {"mode": "required", "oidc": {"issuer": "https://id.example.com", "audience": "a"}},
    }
    assert auth_env(render(values), "gateway")["ISSUER"] == "https://id.example.com"


@pytest.mark.parametrize(
    "values",
    [
        {"auth": {"mode": "maybe"}},
        {"auth": {"mode": False}},  # a bare `off` in YAML
        {"auth": {"oidc": {"leewaySeconds": -1}}},
        {"auth": {"oidc": {"issuer": "id.example.com"}}},
        {"auth": {"oidc": {"tenantClaim": ""}}},
        {"auth": {"apiKeys": {"existingSecret": "Keys_Secret"}}},
        {"auth": {"apiKeys": {"value": "atk_123"}}},
        {"auth": {"oidc": {"clientSecret": "s3cret"}}},
        {"tls": {"provider": "vault"}},
        {"tls": {"enabled": "yes"}},
        {"tls": {"secretNames": {"search": "x"}}},
        {"tls": {"certManager": {"duration": "90 days"}}},
        {"tls": {"certManager": {"issuerRef": {"kind": "Foo"}}}},
        {"tls": {"certManager": {"privateKey": {"algorithm": "DSA"}}}},
        {"tls": {"key": "-----BEGIN PRIVATE KEY-----"}},
        {"ingress": {"hosts": ["Not A Host"]}},
        {"ingress": {"tls": {"secretName": "x"}}},
        {"grpcRoute": {"parentRefs": [{"namespace": "edge"}]}},
        {"publicGrpcServices": []},
        {"publicGrpcServices": ["/atalaya.gateway.v1.GatewayService/Chat"]},
    ],
    ids=lambda v: str(v)[:60],
)
def test_schema_rejects_bad_security_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(values)


# --- the gateway from outside ---------------------------------------------------------------


def test_public_services_are_the_gateways() -> None:
    assert values_of("default")["publicGrpcServices"] == [topology.service("gateway").grpc_service]


@pytest.mark.parametrize("profile", ["default", "cpu", "gpu", "dev"])
def test_exposure_is_off_by_default(profile: str) -> None:
    objects = rendered(profile)
    assert of_kind(objects, "Ingress") == []
    assert of_kind(objects, "GRPCRoute") == []
    assert of_kind(objects, "BackendTLSPolicy") == []


def test_ingress_serves_tls_and_speaks_grpc_over_tls_to_the_gateway() -> None:
    (ingress,) = of_kind(rendered("gpu-exposed"), "Ingress")
    annotations = ingress["metadata"]["annotations"]
    gateway_fqdn = f"atalaya-gateway.{NAMESPACE}.svc.cluster.local"
    assert annotations == {
        "cert-manager.io/cluster-issuer": "letsencrypt",
        "nginx.ingress.kubernetes.io/backend-protocol": "GRPCS",
        "nginx.ingress.kubernetes.io/proxy-ssl-secret": f"{NAMESPACE}/atalaya-gateway-tls",
        "nginx.ingress.kubernetes.io/proxy-ssl-verify": "on",
        "nginx.ingress.kubernetes.io/proxy-ssl-name": gateway_fqdn,
        "nginx.ingress.kubernetes.io/proxy-ssl-server-name": "on",
    }
    gateway_names = certificates(rendered("gpu-exposed"))["gateway"]["spec"]["dnsNames"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-ssl-name"] in gateway_names
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"hosts": ["atalaya.example.com"], "secretName": "atalaya-public-tls"}]
    (rule,) = spec["rules"]
    assert rule["host"] == "atalaya.example.com"
    assert rule["http"]["paths"] == [
        {
            "path": "/atalaya.gateway.v1.GatewayService",
            "pathType": "Prefix",
            "backend": {"service": {"name": "atalaya-gateway", "port": {"name": "grpc"}}},
        }
    ]


def test_ingress_to_a_plaintext_gateway_speaks_grpc() -> None:
    values = {"ingress": {"enabled": True, "hosts": ["a.example.com"], "tlsSecretName": "a-tls"}}
    (ingress,) = of_kind(render(values), "Ingress")
    assert ingress["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/backend-protocol": "GRPC"
    }
    assert ingress["spec"]["tls"][0]["secretName"] == "a-tls"


def test_grpc_route_routes_only_the_public_service_and_checks_the_gateways_certificate() -> None:
    objects = rendered("gpu-exposed")
    (route,) = of_kind(objects, "GRPCRoute")
    spec = route["spec"]
    assert spec["parentRefs"] == [
        {"name": "public", "namespace": "gateway-system", "sectionName": "grpcs"}
    ]
    assert spec["hostnames"] == ["grpc.atalaya.example.com"]
    (rule,) = spec["rules"]
    assert rule["matches"] == [
        {"method": {"type": "Exact", "service": "atalaya.gateway.v1.GatewayService"}}
    ]
    assert rule["backendRefs"] == [{"name": "atalaya-gateway", "port": topology.port("gateway")}]
    (policy,) = of_kind(objects, "BackendTLSPolicy")
    assert policy["spec"]["targetRefs"] == [
        {"group": "", "kind": "Service", "name": "atalaya-gateway"}
    ]
    validation = policy["spec"]["validation"]
    assert validation["caCertificateRefs"] == [
        {"group": "", "kind": "ConfigMap", "name": "atalaya-trust"}
    ]
    assert validation["hostname"] in certificates(objects)["gateway"]["spec"]["dnsNames"]


def test_grpc_route_to_a_plaintext_gateway_has_no_backend_tls() -> None:
    values = {"grpcRoute": {"enabled": True, "parentRefs": [{"name": "public"}]}}
    objects = render(values)
    (route,) = of_kind(objects, "GRPCRoute")
    assert "hostnames" not in route["spec"]
    assert of_kind(objects, "BackendTLSPolicy") == []
    assert list(validation_errors(route)) == []


# --- how to make the first call -----------------------------------------------------------------


def test_notes_say_how_to_get_a_token_and_make_the_first_call() -> None:
    text = notes(profile_values("gpu-exposed"))
    assert "https://id.example.com/realms/atalaya" in text
    assert 'audience (aud) "atalaya"' in text
    assert "atalaya keys create" in text
    assert 'Secret "atalaya-api-keys" under key "api-keys"' in text
    assert "--from-file=api-keys=" in text
    assert '-H "authorization: Bearer $TOKEN"' in text
    assert "-cacert atalaya-ca.crt" in text
    assert f"-servername atalaya-gateway.{NAMESPACE}.svc.cluster.local" in text
    assert "{.data.ca\\.crt}" in text
    assert identity.ON_BEHALF_SCOPE in text
    assert identity.ADMIN_SCOPE in text
    assert "atalaya.gateway.v1.GatewayService/Chat" in text
    assert "atalaya.example.com" in text
    plain = notes({})
    assert "grpcurl -plaintext" in plain
    assert "authorization" not in plain
    assert "keys create" not in plain
    keys_only = notes(profile_values("gpu"))
    assert "atalaya keys create" in keys_only
    assert "OIDC" not in keys_only


# --- the `helm test` pod's check, run for real over mTLS ------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    dns: list[str] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    signer_cert, signer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(signer_cert.subject if signer_cert else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if dns is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False
        ).add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    return builder.sign(signer_key, hashes.SHA256()), key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture
def mtls_health_server(tmp_path: Path) -> Any:
    """A grpc.health.v1 server (SERVING) that requires a client certificate of a test CA;
    the client's certificate and the CA in files, as the pod has them."""
    ca = _issue("test CA", None)
    server_cert, server_key = _issue("server", ca, ["localhost"])
    client_cert, client_key = _issue("client", ca, ["client"])
    files = {
        "ca.crt": _pem(ca[0]),
        "tls.crt": _pem(client_cert),
        "tls.key": _key_pem(client_key),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(_key_pem(server_key), _pem(server_cert))],
        root_certificates=_pem(ca[0]),
        require_client_auth=True,
    )
    port = server.add_secure_port("localhost:0", credentials)
    server.start()
    yield port, tmp_path
    server.stop(None)


def _run_test_pod_script(
    env: dict[str, str], targets: list[str]
) -> subprocess.CompletedProcess[str]:
    (pod,) = of_kind(rendered("cpu"), "Pod")
    (container,) = pod["spec"]["containers"]
    script = container["command"][2]
    assert container["command"][:2] == ["python3", "-c"]
    return subprocess.run(
        [sys.executable, "-c", script, *targets],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_helm_test_pod_checks_health_over_mtls(mtls_health_server: Any) -> None:
    port, folder = mtls_health_server
    (pod,) = of_kind(rendered("cpu"), "Pod")
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"TLS_CA_FILE": f"{MOUNT}/ca.crt", "TLS_CERT_FILE": f"{MOUNT}/tls.crt",
                   "TLS_KEY_FILE": f"{MOUNT}/tls.key"}  # fmt: skip
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "atalaya-gateway-tls"
    local = {name: str(folder / Path(path).name) for name, path in env.items()}
    ok = _run_test_pod_script(local, [f"gateway=localhost:{port}"])
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"gateway localhost:{port} SERVING"
    # Without its client certificate the server refuses the pod, and the check fails.
    refused = _run_test_pod_script(
        {"TLS_CA_FILE": local["TLS_CA_FILE"]}, [f"gateway=localhost:{port}"]
    )
    assert refused.returncode == 1
    assert "SERVING" not in refused.stdout
    assert refused.stdout.split()[-1] == "UNAVAILABLE"
