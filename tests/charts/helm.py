"""The chart as the tests see it: rendered by Helm's own Go engine (helm-python-sdk, no
helm binary, no cluster), per values profile, as parsed Kubernetes objects."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "atalaya"
CRDS = Path(__file__).resolve().parent / "crds"
RELEASE = "atalaya"
NAMESPACE = "atalaya"
#: Kubernetes versions the rendered objects are validated against (schemas shipped in the
#: pinned kubernetes-validate wheel): the oldest minor the chart supports with gRPC probes
#: in GA that is still maintained by the large clouds, and the current one.
KUBE_VERSIONS = ("1.30.0", "1.35.0")
SERVICES = ("gateway", "guardrail", "generation", "embedding", "memory")
KSERVE_VALUES = ROOT / "k8s" / "kserve" / "values-kserve.yaml"
#: Values profiles: name -> files applied in order over the chart's values.yaml (as `-f`).
PROFILES: dict[str, tuple[Path, ...]] = {
    "default": (),
    "cpu": (CHART / "values-cpu.yaml",),
    "gpu": (CHART / "values-gpu.yaml",),
    "dev": (CHART / "values-dev.yaml",),
    "gpu-kserve": (CHART / "values-gpu.yaml", KSERVE_VALUES),
}
#: Options over a profile, rendered, validated and scanned like the profiles:
#: name -> (profile, values given on top as another `-f`).
OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    # mTLS from Secrets you create (no cert-manager), the CA from a trust bundle ConfigMap.
    "cpu-secrets": (
        "cpu",
        {"tls": {"provider": "secrets", "caBundle": {"configMap": "atalaya-trust"}}},
    ),
    # cert-manager with your own ClusterIssuer and RSA keys.
    "cpu-issuer": (
        "cpu",
        {
            "tls": {
                "certManager": {
                    "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"},
                    "privateKey": {"algorithm": "RSA", "size": 3072},
                }
            }
        },
    ),
    # The gateway exposed (Ingress and GRPCRoute), OIDC tokens and API keys required.
    "gpu-exposed": (
        "gpu",
        {
            "auth": {
                "oidc": {
                    "issuer": "https://id.example.com/realms/atalaya",
                    "audience": "atalaya",
                    "jwksUrl": "https://id.example.com/realms/atalaya/protocol/openid-connect/certs",
                    "tenantClaim": "org",
                    "egress": [
                        {
                            "to": [{"ipBlock": {"cidr": "203.0.113.10/32"}}],
                            "ports": [{"port": 443, "protocol": "TCP"}],
                        }
                    ],
                },
            },
            "ingress": {
                "enabled": True,
                "hosts": ["atalaya.example.com"],
                "tlsSecretName": "atalaya-public-tls",
                "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
            },
            "grpcRoute": {
                "enabled": True,
                "parentRefs": [
                    {"name": "public", "namespace": "gateway-system", "sectionName": "grpcs"}
                ],
                "hostnames": ["grpc.atalaya.example.com"],
                "backendCAConfigMap": "atalaya-trust",
            },
        },
    ),
    # The dev profile with TLS but no mTLS, and JWTs checked against a JWKS file.
    "dev-auth": (
        "dev",
        {
            "tls": {"enabled": True, "mutual": False, "provider": "secrets"},
            "auth": {
                "mode": "required",
                "oidc": {
                    "issuer": "https://id.example.com",
                    "audience": "atalaya-dev",
                    "jwksFile": {"existingConfigMap": "atalaya-jwks"},
                },
            },
            "ingress": {"enabled": True, "hosts": ["atalaya.dev.test"], "tlsSecretName": "dev-tls"},
        },
    ),
    # A GPU cluster's own choices: a per-node model cache (hostPath, filled by each pod's
    # init container), images by digest, spread over zones, a priority class, a Recreate
    # rollout, an extra volume, mount and init container.
    "gpu-node-cache": (
        "gpu",
        {
            "image": {"gpu": {"digest": "sha256:" + "a" * 64}},
            "modelCache": {
                "volume": {"type": "hostPath", "hostPath": "/var/lib/atalaya/models"},
                "fill": {"mode": "initContainer"},
            },
            "services": {
                "generation": {
                    "gpu": {"count": 2, "shmSize": "8Gi"},
                    "strategy": {"type": "Recreate"},
                    "priorityClassName": "gpu-serving",
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "topology.kubernetes.io/zone",
                            "whenUnsatisfiable": "ScheduleAnyway",
                        }
                    ],
                    "extraVolumes": [{"name": "adapters", "configMap": {"name": "lora-index"}}],
                    "extraVolumeMounts": [
                        {"name": "adapters", "mountPath": "/etc/atalaya/adapters", "readOnly": True}
                    ],
                    "initContainers": [
                        {
                            "name": "warm-up",
                            "image": "registry.example.com/tools/warm-up:1.2.0",
                            "command": ["/warm-up"],
                            "resources": {
                                "requests": {"cpu": "10m", "memory": "16Mi"},
                                "limits": {"cpu": "100m", "memory": "64Mi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True,
                                "capabilities": {"drop": ["ALL"]},
                                "seccompProfile": {"type": "RuntimeDefault"},
                            },
                        }
                    ],
                },
                "gateway": {
                    "image": {"tag": "sha256:" + "b" * 64},
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "DoNotSchedule",
                        }
                    ],
                },
            },
            "postgresql": {"image": {"digest": "sha256:" + "c" * 64}},
        },
    ),
}
#: Every rendering the tests check: the profiles, then the options.
RENDERINGS: tuple[str, ...] = (*PROFILES, *OPTIONS)
#: Custom resources and their vendored schemas (tests/charts/crds/).
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_servicemonitor.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_v1_podmonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_v1_prometheusrule.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): (
        "serving.kserve.io_v1beta1_inferenceservice.json"
    ),
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): (
        "serving.kserve.io_v1alpha1_servingruntime.json"
    ),
    ("ray.io/v1", "RayService"): "ray.io_v1_rayservice.json",
    # Converted from the projects' published CRDs by tests/charts/crd_schema.py:
    ("cert-manager.io/v1", "Certificate"): "cert-manager.io_v1_certificate.json",
    ("cert-manager.io/v1", "Issuer"): "cert-manager.io_v1_issuer.json",
    ("gateway.networking.k8s.io/v1", "GRPCRoute"): "gateway.networking.k8s.io_v1_grpcroute.json",
    ("gateway.networking.k8s.io/v1", "BackendTLSPolicy"): (
        "gateway.networking.k8s.io_v1_backendtlspolicy.json"
    ),
}

Obj = dict[str, Any]


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of `-f` files: maps merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def profile_values(profile: str) -> dict[str, Any]:
    """The user-supplied values of a profile or an option (the files merged, then the
    option's values; not the chart defaults)."""
    if profile in OPTIONS:
        base, extra = OPTIONS[profile]
        return merge(profile_values(base), extra)
    values: dict[str, Any] = {}
    for path in PROFILES[profile]:
        values = merge(values, helm.values_from_yaml(path.read_text()))
    return values


@functools.cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def effective_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values a release would use: chart defaults coalesced with `values`."""
    return chart().merge_values(dict(values))


def render(values: Mapping[str, Any]) -> list[Obj]:
    """Render with Helm's engine (schema validation included); the objects, NOTES left out."""
    manifests = chart().render(dict(values), name=RELEASE, namespace=NAMESPACE)
    objects: list[Obj] = []
    for path in sorted(manifests):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(manifests[path]) if doc)
    return objects


@functools.cache
def rendered(profile: str) -> tuple[Obj, ...]:
    return tuple(render(profile_values(profile)))


def notes(values: Mapping[str, Any]) -> str:
    manifests = chart().render(dict(values), name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def of_kind(objects: tuple[Obj, ...] | list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def component(obj: Obj) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


def pod_spec(obj: Obj) -> Obj | None:
    """The pod spec of a workload or Pod; None for other kinds."""
    if obj["kind"] == "Pod":
        return dict(obj["spec"])
    if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return dict(obj["spec"]["template"]["spec"])
    return None


def env_of(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


@functools.cache
def _crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((CRDS / CRD_SCHEMAS[(api_version, kind)]).read_text())
    return jsonschema.Draft202012Validator(schema)


def validation_errors(obj: Obj) -> Iterator[str]:
    """Why `obj` is invalid: Kubernetes' own schemas (strict: unknown fields are errors) for
    built-in kinds, the vendored CRD schemas for custom resources."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    name = f"{key[1]}/{obj.get('metadata', {}).get('name')}"
    if key in CRD_SCHEMAS:
        for error in _crd_validator(*key).iter_errors(obj):
            yield f"{name}: {'/'.join(map(str, error.absolute_path))}: {error.message}"
        return
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(map(str, exc.absolute_path))
            yield f"{name} (Kubernetes {version}): {where}: {exc.message}"
        except kubernetes_validate.SchemaNotFoundError:
            yield f"{name}: no schema for {key[0]} {key[1]} in Kubernetes {version}"
