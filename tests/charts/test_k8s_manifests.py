"""k8s/: the KServe runtime, InferenceServices and ServiceAccount and the KubeRay RayService,
validated against the vendored CRD schemas, with their embedded pod specs validated against
Kubernetes' own; the chart overlay that points the services at KServe agrees with them; the
Hugging Face token reaches KServe's storage initializer the way KServe reads it; the Ray
proxies' ports are ones KubeRay's serve Service exposes."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.charts.helm import (
    CHART,
    KSERVE_VALUES,
    ROOT,
    Obj,
    effective_values,
    profile_values,
    validation_errors,
)

K8S = ROOT / "k8s"
MANIFESTS = sorted(
    p for p in [*K8S.glob("kserve/*.yaml"), *K8S.glob("kuberay/*.yaml")] if p != KSERVE_VALUES
)


def load(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> list[Obj]:
    return [obj for path in MANIFESTS for obj in load(path)]


def as_pod(name: str, spec: dict[str, Any]) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def embedded_pods(obj: Obj) -> list[Obj]:
    """The pod specs inside a custom resource, as Pods Kubernetes' schema can check."""
    if "spec" not in obj:  # a built-in kind without a pod (the ServiceAccount)
        return []
    spec = obj["spec"]
    name = obj["metadata"]["name"]
    if obj["kind"] == "ServingRuntime":
        keys = ("containers", "volumes", "nodeSelector", "tolerations", "affinity")
        return [as_pod(name, {k: spec[k] for k in keys if k in spec})]
    if obj["kind"] == "InferenceService":
        model = dict(spec["predictor"]["model"])
        for key in ("modelFormat", "runtime", "storageUri", "protocolVersion"):
            model.pop(key, None)
        container = {"name": "kserve-container", "image": "runtime-image", **model}
        return [as_pod(name, {"containers": [container]})]
    if obj["kind"] == "RayService":
        cluster = spec["rayClusterConfig"]
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        return [as_pod(f"{name}-{i}", g["template"]["spec"]) for i, g in enumerate(groups)]
    return []


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_manifests_are_valid(path: Path) -> None:
    objects = load(path)
    assert objects
    errors = [e for obj in objects for e in validation_errors(obj)]
    errors += [e for obj in objects for pod in embedded_pods(obj) for e in validation_errors(pod)]
    assert errors == []


def test_inference_services_run_on_the_vllm_runtime() -> None:
    objects = manifests()
    runtimes = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServingRuntime"}
    services = [o for o in objects if o["kind"] == "InferenceService"]
    assert {s["metadata"]["name"] for s in services} == {"atalaya-llm", "atalaya-llama-guard"}
    for isvc in services:
        model = isvc["spec"]["predictor"]["model"]
        runtime = runtimes[model["runtime"]]
        formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
        assert model["modelFormat"]["name"] in formats
        assert model["storageUri"].startswith("hf://meta-llama/")
        assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
        annotations = isvc["metadata"]["annotations"]
        # KServe 0.16+ names the mode without Knative `Standard` (RawDeployment is its
        # deprecated alias).
        assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
    (container,) = runtimes["atalaya-vllm"]["spec"]["containers"]
    assert container["image"] == "vllm/vllm-openai:v0.11.0"
    assert "vllm.entrypoints.openai.api_server" in container["command"]


def test_chart_overlay_points_at_the_inference_services() -> None:
    """values-kserve.yaml: the openai engines' base URLs, model names and egress peers name
    the InferenceServices of k8s/kserve."""
    values = yaml.safe_load(KSERVE_VALUES.read_text())["services"]
    isvcs = {o["metadata"]["name"] for o in manifests() if o["kind"] == "InferenceService"}
    configs = {
        "generation": json.loads(values["generation"]["settings"]["OPENAI"]),
        "guardrail": json.loads(values["guardrail"]["settings"]["LLAMA_GUARD__OPENAI"]),
    }
    for service, config in configs.items():
        host = urlsplit(config["base_url"]).hostname
        assert host is not None
        isvc = host.split(".")[0].removesuffix("-predictor")
        assert isvc in isvcs
        assert config["model"] == isvc  # served under the InferenceService's name
        (rule,) = values[service]["egress"]
        labels = rule["to"][0]["podSelector"]["matchLabels"]
        assert labels == {"serving.kserve.io/inferenceservice": isvc}
    assert values["generation"]["settings"]["BACKEND"] == "openai"
    assert values["guardrail"]["settings"]["LLAMA_GUARD__BACKEND"] == "openai"


def test_ray_serve_config() -> None:
    (rayservice,) = [o for o in manifests() if o["kind"] == "RayService"]
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert set(config) <= {
        "applications",
        "grpc_options",
        "http_options",
        "logging_config",
        "proxy_location",
    }
    names = {app["name"] for app in config["applications"]}
    assert names == {"gateway", "guardrail", "generation", "embedding", "memory"}
    for app in config["applications"]:
        assert app["import_path"] == f"services.ray.app:{app['name']}"
        assert set(app) <= {"name", "route_prefix", "import_path", "runtime_env", "deployments"}
        for deployment in app["deployments"]:
            scaling = deployment["autoscaling_config"]
            assert scaling["min_replicas"] <= scaling["max_replicas"]
            assert 0 < scaling["target_ongoing_requests"] <= deployment["max_ongoing_requests"]
        for key in app.get("runtime_env", {}).get("env_vars", {}):
            assert key.startswith(f"ATALAYA_{app['name'].upper()}_")
            assert "DSN" not in key
            assert "TOKEN" not in key
    functions = config["grpc_options"]["grpc_servicer_functions"]
    assert len(functions) == 5
    for path in functions:
        module, _, attribute = path.rpartition(".")
        assert callable(getattr(importlib.import_module(module), attribute))
    gpu_actors = {
        app["name"]
        for app in config["applications"]
        for d in app["deployments"]
        if d.get("ray_actor_options", {}).get("num_gpus")
    }
    assert gpu_actors == {"generation", "guardrail"}


#: KServe's storage initializer turns a Secret listed on the predictor's ServiceAccount into
#: its HF_TOKEN variable only when the Secret has this key (pkg/credentials/hf in KServe).
KSERVE_HF_TOKEN_KEY = "HF_TOKEN"


def test_storage_initializer_gets_the_token_from_the_service_account() -> None:
    """Each InferenceService that pulls from the Hub runs as a ServiceAccount of k8s/kserve
    whose Secret is the documented one; the model container itself holds no token."""
    objects = manifests()
    accounts = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceAccount"}
    for isvc in (o for o in objects if o["kind"] == "InferenceService"):
        predictor = isvc["spec"]["predictor"]
        account = accounts[predictor["serviceAccountName"]]
        assert account["automountServiceAccountToken"] is False
        assert [s["name"] for s in account["secrets"]] == ["hf-token"]
        assert "HF_TOKEN" not in {e["name"] for e in predictor["model"].get("env", [])}


def documented_token_secrets() -> set[tuple[str, str]]:
    """(name, key) of every `kubectl create secret generic hf-token ...` in the docs."""
    docs = [ROOT / "k8s" / "README.md", ROOT / "charts" / "README.md", *K8S.glob("kserve/*.yaml")]
    docs += [CHART / "values-gpu.yaml"]
    found = set()
    for path in docs:
        for name, key in re.findall(
            r"create secret generic (hf-token)\s+--from-literal=(\w+)=", path.read_text()
        ):
            found.add((name, key))
    return found


def test_one_hugging_face_secret_serves_kserve_and_the_chart() -> None:
    """The Secret the docs tell you to create has the key KServe reads, and the chart's GPU
    profile reads the same Secret and key."""
    assert documented_token_secrets() == {("hf-token", KSERVE_HF_TOKEN_KEY)}
    token = effective_values(profile_values("gpu"))["secrets"]["hfToken"]
    assert token == {"existingSecret": "hf-token", "key": KSERVE_HF_TOKEN_KEY}


def test_ray_proxies_are_on_ports_the_serve_service_exposes() -> None:
    """KubeRay's serve Service exposes the head's container ports named `serve` or
    `serve-*`: both of Ray's proxies (HTTP and gRPC) must be on such ports."""
    (rayservice,) = [o for o in manifests() if o["kind"] == "RayService"]
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    (container,) = head["containers"]
    exposed = {
        p["containerPort"]
        for p in container["ports"]
        if p["name"] == "serve" or p["name"].startswith("serve-")
    }
    assert config["http_options"]["port"] in exposed
    assert config["grpc_options"]["port"] in exposed
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named["serve-grpc"] == config["grpc_options"]["port"]
