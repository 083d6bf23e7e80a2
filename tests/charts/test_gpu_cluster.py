"""What running on a real (GPU) cluster needs from the chart, rendered by Helm's engine:
each Deployment restarts only for its own configuration; rollouts that need no spare GPU;
drain time and preStop sleep from the termination grace; tensor parallelism from gpu.count;
/dev/shm, cluster domain, topology spread and priority class as values; ephemeral storage
that covers the pods' scratch volumes; images by digest; extra volumes and init containers."""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import pytest

from tests.charts.helm import (
    NAMESPACE,
    RENDERINGS,
    SERVICES,
    Obj,
    component,
    effective_values,
    merge,
    of_kind,
    pod_spec,
    profile_values,
    render,
    rendered,
)

DIGEST = "sha256:" + "0123456789abcdef" * 4


def deployments(objects: tuple[Obj, ...] | list[Obj]) -> dict[str, Obj]:
    return {component(d): d for d in of_kind(objects, "Deployment") if component(d) in SERVICES}


def configs(objects: tuple[Obj, ...] | list[Obj]) -> dict[str, dict[str, str]]:
    return {
        component(c): dict(c["data"])
        for c in of_kind(objects, "ConfigMap")
        if component(c) in SERVICES
    }


def checksums(objects: tuple[Obj, ...] | list[Obj]) -> dict[str, str]:
    return {
        name: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        for name, d in deployments(objects).items()
    }


def main_container(deployment: Obj) -> Obj:
    spec = pod_spec(deployment)
    assert spec is not None
    (container,) = spec["containers"]
    return dict(container)


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti)", str(quantity))
    assert match, quantity
    return float(match.group(1)) * units[match.group(2)]


# --- configuration checksums ----------------------------------------------------------------


@pytest.mark.parametrize("changed", SERVICES)
def test_a_service_setting_restarts_only_that_service(changed: str) -> None:
    before = checksums(rendered("gpu"))
    values = merge(
        profile_values("gpu"), {"services": {changed: {"settings": {"LOG_LEVEL": "DEBUG"}}}}
    )
    after = checksums(render(values))
    assert {name for name in SERVICES if before[name] != after[name]} == {changed}


def test_a_common_setting_restarts_every_service() -> None:
    before = checksums(rendered("default"))
    after = checksums(render({"commonSettings": {"LOG_LEVEL": "DEBUG"}}))
    assert all(before[name] != after[name] for name in SERVICES)


def test_the_checksum_follows_the_config_map_content() -> None:
    """A change that reaches a service's ConfigMap through the call graph (a callee's port)
    changes the caller's checksum too, not only the callee's."""
    before = checksums(rendered("default"))
    after = checksums(render({"services": {"embedding": {"port": 50060}}}))
    callers = {"embedding", "guardrail", "memory"}  # embedding and whoever calls it
    assert {name for name in SERVICES if before[name] != after[name]} == callers


# --- shutdown: preStop sleep, drain, margin ---------------------------------------------------


@pytest.mark.parametrize("profile", RENDERINGS)
def test_drain_fits_in_the_grace_period_after_the_prestop_sleep(profile: str) -> None:
    values = effective_values(profile_values(profile))
    objects = rendered(profile)
    data = configs(objects)
    for name, deployment in deployments(objects).items():
        svc = values["services"][name]
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        sleep = main_container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
        drain = float(data[name][f"ATALAYA_{name.upper()}_GRACE_PERIOD_S"])
        assert grace == svc["terminationGracePeriodSeconds"]
        assert sleep == svc["preStopSleepSeconds"] > 0
        assert drain == grace - sleep - svc["drainMarginSeconds"]
        assert drain >= 1


def test_long_generations_get_most_of_the_grace_period() -> None:
    data = configs(rendered("gpu"))
    assert float(data["generation"]["ATALAYA_GENERATION_GRACE_PERIOD_S"]) == 105


def test_no_prestop_sleep_when_it_is_zero() -> None:
    values = {"services": {"memory": {"preStopSleepSeconds": 0}}}
    objects = render(values)
    assert "lifecycle" not in main_container(deployments(objects)["memory"])
    assert configs(objects)["memory"]["ATALAYA_MEMORY_GRACE_PERIOD_S"] == "25"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"commonSettings": {"GRACE_PERIOD_S": "20"}}, "GRACE_PERIOD_S is derived"),
        ({"services": {"gateway": {"settings": {"GRACE_PERIOD_S": 9}}}}, "GRACE_PERIOD_S is"),
        (
            {"services": {"gateway": {"terminationGracePeriodSeconds": 10}}},
            "nothing is left for draining",
        ),
    ],
)
def test_drain_settings_that_cannot_hold_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)


# --- GPUs: tensor parallelism, /dev/shm, rollouts ----------------------------------------------


def test_tensor_parallelism_follows_gpu_count() -> None:
    values = merge(
        profile_values("gpu"),
        {
            "services": {
                "generation": {"gpu": {"count": 4}},
                "guardrail": {"gpu": {"count": 2}},
            }
        },
    )
    objects = render(values)
    data = configs(objects)
    assert data["generation"]["ATALAYA_GENERATION_VLLM__TENSOR_PARALLEL_SIZE"] == "4"
    assert data["guardrail"]["ATALAYA_GUARDRAIL_LLAMA_GUARD__VLLM__TENSOR_PARALLEL_SIZE"] == "2"
    for name, count in (("generation", 4), ("guardrail", 2)):
        limits = main_container(deployments(objects)[name])["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == count
    assert not any("TENSOR_PARALLEL" in key for key in configs(rendered("default"))["generation"])


def test_tensor_parallelism_by_hand_is_refused() -> None:
    values = merge(
        profile_values("gpu"),
        {"services": {"generation": {"settings": {"VLLM__TENSOR_PARALLEL_SIZE": "2"}}}},
    )
    with pytest.raises(helm.HelmError, match=r"set gpu\.count instead"):
        render(values)


def test_shared_memory_size_is_a_value() -> None:
    objects = rendered("gpu-node-cache")
    for name, size in (("generation", "8Gi"), ("guardrail", "2Gi")):
        volumes = deployments(objects)[name]["spec"]["template"]["spec"]["volumes"]
        (dshm,) = [v for v in volumes if v["name"] == "dshm"]
        assert dshm["emptyDir"] == {"medium": "Memory", "sizeLimit": size}


@pytest.mark.parametrize("profile", RENDERINGS)
def test_gpu_rollouts_need_no_spare_gpu(profile: str) -> None:
    """A GPU Deployment never surges: its new pod takes the GPU the old one frees."""
    values = effective_values(profile_values(profile))
    for name, deployment in deployments(rendered(profile)).items():
        strategy = deployment["spec"].get("strategy")
        if not values["services"][name]["gpu"]["enabled"]:
            assert strategy is None, name  # Kubernetes' default
        elif strategy["type"] == "RollingUpdate":
            assert strategy["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}, name
        else:
            assert strategy == {"type": "Recreate"}, name
    if profile == "gpu-node-cache":
        assert deployments(rendered(profile))["generation"]["spec"]["strategy"] == {
            "type": "Recreate"
        }


def test_a_recreate_strategy_with_rolling_parameters_is_refused() -> None:
    values = {"gpu": {"strategy": {"type": "Recreate", "rollingUpdate": {"maxSurge": 0}}}}
    with pytest.raises(helm.HelmError, match="Recreate"):
        render(merge(profile_values("gpu"), values))
    with pytest.raises(helm.HelmValuesError):
        render({"services": {"gateway": {"strategy": {"type": "BlueGreen"}}}})


# --- placement and names -----------------------------------------------------------------------


def test_topology_spread_selects_the_service_pods_and_priority_class_is_set() -> None:
    objects = rendered("gpu-node-cache")
    generation = deployments(objects)["generation"]["spec"]["template"]["spec"]
    (spread,) = generation["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread["labelSelector"] == {
        "matchLabels": {
            "app.kubernetes.io/name": "atalaya",
            "app.kubernetes.io/instance": "atalaya",
            "app.kubernetes.io/component": "generation",
        }
    }
    assert generation["priorityClassName"] == "gpu-serving"
    gateway = deployments(objects)["gateway"]["spec"]["template"]["spec"]
    assert (
        gateway["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"][
            "app.kubernetes.io/component"
        ]
        == "gateway"
    )
    assert "priorityClassName" not in gateway
    given = {"matchLabels": {"tier": "llm"}}
    values = {
        "services": {
            "memory": {
                "topologySpreadConstraints": [
                    {
                        "maxSkew": 2,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": given,
                    }
                ]
            }
        }
    }
    memory = deployments(render(values))["memory"]["spec"]["template"]["spec"]
    assert memory["topologySpreadConstraints"][0]["labelSelector"] == given
    for deployment in deployments(rendered("default")).values():
        assert "topologySpreadConstraints" not in deployment["spec"]["template"]["spec"]


def test_the_cluster_domain_is_a_value() -> None:
    values = {"clusterDomain": "corp.internal", "tls": {"enabled": True}}
    objects = render(values)
    text = repr(objects)
    # cluster.local stays only as the SPIFFE trust domain (tls.trustDomain), not in DNS names.
    assert ".svc.cluster.local" not in text
    data = configs(objects)
    fqdn = f"atalaya-embedding-headless.{NAMESPACE}.svc.corp.internal"
    assert data["memory"]["ATALAYA_MEMORY_EMBEDDING__TARGET"] == f"dns:///{fqdn}:50054"
    assert data["memory"]["ATALAYA_MEMORY_EMBEDDING__TLS__SERVER_NAME"] == fqdn
    assert (
        f"host=atalaya-postgresql.{NAMESPACE}.svc.corp.internal "
        in (data["memory"]["ATALAYA_MEMORY_DSN"])
    )
    assert data["gateway"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == (
        f"http://atalaya-otel-collector.{NAMESPACE}.svc.corp.internal:4317"
    )
    (certificate,) = [c for c in of_kind(objects, "Certificate") if component(c) == "embedding"]
    assert fqdn in certificate["spec"]["dnsNames"]


# --- resources, images, extras -------------------------------------------------------------------


@pytest.mark.parametrize("profile", RENDERINGS)
def test_ephemeral_storage_covers_the_scratch_volumes(profile: str) -> None:
    """Every container requests and limits ephemeral storage, and a pod's limit holds all
    of its disk-backed emptyDirs full (a service's /tmp and /cache), so the kubelet evicts a
    pod only for going past what the values allow."""
    objects = rendered(profile)
    for obj in [
        *of_kind(objects, "Deployment"),
        *of_kind(objects, "StatefulSet"),
        *of_kind(objects, "Job"),
    ]:
        spec = pod_spec(obj)
        assert spec is not None
        disk = sum(
            mebibytes(v["emptyDir"]["sizeLimit"])
            for v in spec["volumes"]
            if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory"
        )
        for c in spec["containers"] + spec.get("initContainers", []):
            if c["name"] == "warm-up":  # a user's own init container
                continue
            requests, limits = c["resources"]["requests"], c["resources"]["limits"]
            where = f"{obj['metadata']['name']}/{c['name']}"
            assert mebibytes(requests["ephemeral-storage"]) <= mebibytes(
                limits["ephemeral-storage"]
            ), where
            if c in spec["containers"]:
                assert mebibytes(limits["ephemeral-storage"]) >= disk, where


def test_images_by_digest() -> None:
    objects = rendered("gpu-node-cache")
    images = {name: main_container(d)["image"] for name, d in deployments(objects).items()}
    assert images["generation"] == "ghcr.io/atalaya/gpu@sha256:" + "a" * 64
    assert images["gateway"] == "ghcr.io/atalaya/gateway@sha256:" + "b" * 64  # a digest tag
    assert images["memory"] == "ghcr.io/atalaya/memory:0.1.0"
    (postgresql,) = of_kind(objects, "StatefulSet")
    assert postgresql["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "pgvector/pgvector@sha256:" + "c" * 64
    )
    (test_pod,) = of_kind(objects, "Pod")
    assert test_pod["spec"]["containers"][0]["image"] == images["gateway"]
    pinned = {"services": {"embedding": {"image": {"tag": "0.2.0@" + DIGEST}}}}
    embedding = main_container(deployments(render(pinned))["embedding"])
    assert embedding["image"] == f"ghcr.io/atalaya/embedding:0.2.0@{DIGEST}"


@pytest.mark.parametrize(
    "values",
    [
        {"image": {"gpu": {"digest": "sha256:abc"}}},
        {"image": {"tag": "sha256:" + "x" * 64}},
        {"services": {"memory": {"image": {"digest": "md5:" + "0" * 32}}}},
        {"services": {"memory": {"image": {"tag": "0.1.0 "}}}},
    ],
)
def test_schema_rejects_malformed_digests_and_tags(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(values)


def test_extra_volumes_mounts_and_init_containers_go_where_asked() -> None:
    spec = pod_spec(deployments(rendered("gpu-node-cache"))["generation"])
    assert spec is not None
    assert {"name": "adapters", "configMap": {"name": "lora-index"}} in spec["volumes"]
    mounts = main_container(deployments(rendered("gpu-node-cache"))["generation"])["volumeMounts"]
    assert {"name": "adapters", "mountPath": "/etc/atalaya/adapters", "readOnly": True} in mounts
    # The model cache's own init container first, then the user's.
    assert [c["name"] for c in spec["initContainers"]] == ["model-cache-fill", "warm-up"]
    plain = pod_spec(deployments(rendered("default"))["gateway"])
    assert plain is not None
    assert "initContainers" not in plain
