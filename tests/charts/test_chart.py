"""The Helm chart, rendered per profile by Helm's engine: lint, values schema, Kubernetes and
CRD schemas, hardening, GPU placement, autoscaling, and NetworkPolicies equal to the call
graph that values.yaml defines once."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python as helm
import pytest

from services.common.server import LIVENESS
from tests.charts.helm import (
    CHART,
    NAMESPACE,
    OPTIONS,
    RENDERINGS,
    SERVICES,
    Obj,
    component,
    effective_values,
    env_of,
    merge,
    notes,
    of_kind,
    pod_spec,
    profile_values,
    render,
    rendered,
    validation_errors,
)

PROFILE_NAMES = list(RENDERINGS)
WORKLOADS = {"Deployment", "StatefulSet", "Pod", "Job"}
#: Services whose pods must ask for GPUs, per profile.
GPU_SERVICES = {
    "default": set(),
    "cpu": set(),
    "dev": set(),
    "gpu": {"generation", "guardrail"},
    "gpu-kserve": set(),
}
GPU_SERVICES |= {option: GPU_SERVICES[base] for option, (base, _) in OPTIONS.items()}


def workloads(objects: tuple[Obj, ...]) -> list[Obj]:
    return [o for o in objects if o["kind"] in WORKLOADS]


def containers(obj: Obj) -> list[Obj]:
    spec = pod_spec(obj)
    assert spec is not None
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))


def service_container(deployment: Obj) -> Obj:
    """The one long-running container of a service's pod (init containers aside)."""
    spec = pod_spec(deployment)
    assert spec is not None
    (container,) = spec["containers"]
    return dict(container)


# --- lint and the values schema ---------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_lint_is_clean(profile: str) -> None:
    report = helm.lint(CHART, profile_values(profile), strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems
    assert report["errors"] == []


@pytest.mark.parametrize(
    "values",
    [
        {"servces": {}},
        {"services": {"gateway": {"replicsa": 3}}},
        {"services": {"generation": {"keda": {"enabeld": True}}}},
        {"services": {"memory": {"autoscaling": {"maxReplica": 3}}}},
        {"services": {"embedding": {"probes": {"startup": {"failureTreshold": 9}}}}},
        {"services": {"guardrail": {"settings": {"llama_guard__backend": "vllm"}}}},
        {"services": {"search": {"port": 1}}},
        {"callGraph": {"gateway": ["guardrial"]}},
        {"image": {"tag": "latest"}},
        {"postgresql": {"auth": {"password": "hunter2"}}},
        {"networkPolicy": {"dns": [{"podSelectr": {}}]}},
        {"gpu": {"tolerations": [{"key": "x", "operator": "Exist"}]}},
        {"securityContext": {"allowPrivilegeEscalation": True}},
        {"podSecurityContext": {"runAsNonRoot": False}},
        {"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}},
    ],
    ids=lambda v: json.dumps(v, sort_keys=True)[:60],
)
def test_schema_rejects_typos(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(values)


def _object_schemas(node: Any, path: str = "#") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if "properties" in node:
            found.append((path, node))
        for key, child in node.items():
            found.extend(_object_schemas(child, f"{path}/{key}"))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            found.extend(_object_schemas(child, f"{path}/{i}"))
    return found


def test_schema_is_closed_everywhere() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    objects = _object_schemas(schema)
    assert len(objects) > 30
    open_ = [path for path, node in objects if node.get("additionalProperties") is not False]
    assert open_ == []


def test_every_value_is_documented() -> None:
    """Each key of values.yaml has a `# --` comment of its own or its parent's block."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented_indents: list[tuple[int, bool]] = []  # stack of (indent, documented)
    undocumented = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while documented_indents and documented_indents[-1][0] >= indent:
            documented_indents.pop()
        above = number - 1
        own = False
        while above >= 0 and lines[above].strip().startswith("#"):
            own = own or lines[above].strip().startswith("# --")
            above -= 1
        parent = any(doc for _, doc in documented_indents)
        if not (own or parent or line.rstrip().endswith(":")):
            undocumented.append(f"values.yaml:{number + 1}: {line.strip()}")
        documented_indents.append((indent, own or parent))
    assert undocumented == []


# --- what every rendered object must be ----------------------------------------------------


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_objects_valid_against_kubernetes_and_crd_schemas(profile: str) -> None:
    errors = [error for obj in rendered(profile) for error in validation_errors(obj)]
    assert errors == []


def test_validation_catches_an_unknown_field() -> None:
    deployment = json.loads(json.dumps(of_kind(rendered("default"), "Deployment")[0]))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    scaled = json.loads(json.dumps(of_kind(rendered("gpu"), "ScaledObject")[0]))
    scaled["spec"]["fallback"]["replica"] = 1
    assert list(validation_errors(deployment))
    assert list(validation_errors(scaled))


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_every_object_is_namespaced_and_labelled(profile: str) -> None:
    for obj in rendered(profile):
        meta = obj["metadata"]
        assert meta["namespace"] == NAMESPACE, meta["name"]
        assert meta["labels"]["app.kubernetes.io/instance"] == "atalaya"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "atalaya"


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_every_container_is_hardened_with_probes_and_limits(profile: str) -> None:
    for obj in workloads(rendered(profile)):
        spec = pod_spec(obj)
        assert spec is not None
        name = obj["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for c in containers(obj):
            where = f"{name}/{c['name']}"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["runAsNonRoot"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][bound]), where
            image = c["image"]
            assert re.fullmatch(r"[\w./-]+(:[\w.-]+|@sha256:[0-9a-f]{64})", image), where
            assert not image.endswith(":latest"), where
        if obj["kind"] in {"Deployment", "StatefulSet"}:  # run-once pods have no probes
            for c in spec["containers"]:
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    assert probe in c, f"{name}/{c['name']}: {probe}"


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_services_use_grpc_health_probes_with_room_for_model_loading(profile: str) -> None:
    tls = effective_values(profile_values(profile))["tls"]
    for deployment in of_kind(rendered(profile), "Deployment"):
        if component(deployment) not in SERVICES:
            continue
        c = service_container(deployment)
        # With TLS the kubelet (which cannot speak TLS) asks the plaintext health listener.
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        port = ports["health"] if tls["enabled"] else ports["grpc"]
        assert ("health" in ports) == tls["enabled"]
        # Startup and liveness: the process serves (`liveness`, whatever the dependencies);
        # readiness: the overall health (empty name), which follows the dependencies.
        assert c["startupProbe"]["grpc"] == {"port": port, "service": LIVENESS}
        assert c["livenessProbe"]["grpc"] == {"port": port, "service": LIVENESS}
        assert c["readinessProbe"]["grpc"] == {"port": port}
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
        assert c["command"] == ["python3", "-m", f"services.{component(deployment)}"]


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_gpus_only_where_the_profile_asks(profile: str) -> None:
    values = effective_values(profile_values(profile))
    asked = {name for name in SERVICES if values["services"][name]["gpu"]["enabled"]}
    assert asked == GPU_SERVICES[profile]
    with_gpu = set()
    for obj in workloads(rendered(profile)):
        spec = pod_spec(obj)
        assert spec is not None
        gpu_limits = [c["resources"]["limits"].get("nvidia.com/gpu") for c in containers(obj)]
        if any(gpu_limits):
            with_gpu.add(component(obj))
            # No node label needed (GPU Feature Discovery may be absent): the GPU request
            # alone places the pod on a node whose device plugin advertises GPUs.
            assert "nodeSelector" not in spec
            assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
            ours = [c for c in containers(obj) if c["name"] != "warm-up"]  # a user's own aside
            assert all(re.match(r"ghcr\.io/atalaya/gpu[:@]", c["image"]) for c in ours)
        else:
            assert "nvidia.com/gpu.present" not in spec.get("nodeSelector", {})
    assert with_gpu == GPU_SERVICES[profile]


def test_gpu_type_pins_the_product() -> None:
    values = merge(profile_values("gpu"), {"gpu": {"type": "NVIDIA-L4"}})
    for deployment in of_kind(render(values), "Deployment"):
        selector = deployment["spec"]["template"]["spec"].get("nodeSelector", {})
        expected = "NVIDIA-L4" if component(deployment) in GPU_SERVICES["gpu"] else None
        assert selector.get("nvidia.com/gpu.product") == expected


# --- the call graph, defined once ------------------------------------------------------------


def _selected_component(peer: Obj) -> str | None:
    labels = peer.get("podSelector", {}).get("matchLabels", {})
    if "namespaceSelector" in peer:
        return None
    return labels.get("app.kubernetes.io/component")


def policy_edges(objects: tuple[Obj, ...] | list[Obj]) -> tuple[set[tuple[str, str]], ...]:
    """(caller, callee) pairs the NetworkPolicies allow, seen from egress and from ingress."""
    egress: set[tuple[str, str]] = set()
    ingress: set[tuple[str, str]] = set()
    for policy in of_kind(objects, "NetworkPolicy"):
        me = policy["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component")
        if me is None:
            continue
        for rule in policy["spec"].get("egress", []):
            for peer in rule.get("to", []):
                if (to := _selected_component(peer)) is not None:
                    egress.add((me, to))
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if (frm := _selected_component(peer)) is not None:
                    ingress.add((frm, me))
    return egress, ingress


def graph_edges(values: dict[str, Any]) -> set[tuple[str, str]]:
    return {(a, b) for a, callees in values["callGraph"].items() for b in callees}


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_network_policies_are_the_call_graph(profile: str) -> None:
    values = effective_values(profile_values(profile))
    objects = rendered(profile)
    graph = graph_edges(values)
    egress, ingress = policy_edges(objects)
    otlp = {(s, "otel-collector") for s in SERVICES}
    tests = {("test", s) for s in SERVICES}
    assert egress == graph | otlp | tests
    # ingress: the callers of each service and the `helm test` pod; the collector admits
    # every pod of the release by instance label (no component).
    assert ingress == graph | tests
    deny = next(p for p in of_kind(objects, "NetworkPolicy") if component(p) == "default-deny")
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny["spec"]
    assert "egress" not in deny["spec"]
    assert set(deny["spec"]["podSelector"]["matchLabels"]) == {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
    }


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_client_targets_are_the_call_graph(profile: str) -> None:
    values = effective_values(profile_values(profile))
    expected = {(a, b) for a, b in graph_edges(values) if b in SERVICES}
    targets = set()
    for config in of_kind(rendered(profile), "ConfigMap"):
        me = component(config)
        for key, value in config.get("data", {}).items():
            if match := re.fullmatch(rf"ATALAYA_{me.upper()}_([A-Z]+)__TARGET", key):
                callee = match.group(1).lower()
                targets.add((me, callee))
                port = values["services"][callee]["port"]
                host = f"atalaya-{callee}-headless.{NAMESPACE}.svc.cluster.local"
                assert value == f"dns:///{host}:{port}"
    assert targets == expected


def test_changing_the_call_graph_moves_targets_and_policies() -> None:
    values = {"callGraph": {"guardrail": ["embedding", "generation"], "gateway": ["guardrail"]}}
    objects = render(values)
    egress, _ = policy_edges(objects)
    assert ("guardrail", "generation") in egress
    assert ("gateway", "memory") not in egress
    config = next(c for c in of_kind(objects, "ConfigMap") if component(c) == "guardrail")
    assert "ATALAYA_GUARDRAIL_GENERATION__TARGET" in config["data"]


def test_remote_llama_guard_egress_only_to_its_endpoint() -> None:
    objects = rendered("gpu-kserve")
    policy = next(p for p in of_kind(objects, "NetworkPolicy") if component(p) == "guardrail")
    peers = [peer for rule in policy["spec"]["egress"] for peer in rule.get("to", [])]
    kserve = [p for p in peers if "serving.kserve.io/inferenceservice" in str(p)]
    assert kserve == [
        {
            "podSelector": {
                "matchLabels": {"serving.kserve.io/inferenceservice": "atalaya-llama-guard"}
            }
        }
    ]
    assert not any("ipBlock" in p for p in peers)


def test_headless_services_for_grpc_backends() -> None:
    services = of_kind(rendered("default"), "Service")
    headless = {component(s) for s in services if s["spec"].get("clusterIP") == "None"}
    assert set(SERVICES) <= headless
    for s in services:
        if component(s) in SERVICES:
            assert s["spec"]["ports"][0]["appProtocol"] == "grpc"


# --- monitoring (autoscaling: test_autoscaling.py) ------------------------------------------


def test_service_monitors_scrape_the_metrics_port() -> None:
    monitors = of_kind(rendered("gpu"), "ServiceMonitor")
    assert {component(m) for m in monitors} == set(SERVICES)
    for monitor in monitors:
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    for deployment in of_kind(rendered("gpu"), "Deployment"):
        if component(deployment) in SERVICES:
            c = service_container(deployment)
            assert {"name": "metrics", "containerPort": 9464} in c["ports"]
    for config in of_kind(rendered("gpu"), "ConfigMap"):
        if component(config) in SERVICES:
            assert config["data"]["OTEL_METRICS_EXPORTER"] == "prometheus"
            assert config["data"]["OTEL_EXPORTER_PROMETHEUS_PORT"] == "9464"
            assert config["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == (
                f"http://atalaya-otel-collector.{NAMESPACE}.svc.cluster.local:4317"
            )


def test_dashboard_shows_the_llm_signals() -> None:
    (dashboard,) = [
        c for c in of_kind(rendered("default"), "ConfigMap") if component(c) == "dashboard"
    ]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(dashboard["data"]["atalaya.json"])
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p["targets"])
    for metric in (
        "gen_ai_server_time_to_first_token",
        "gen_ai_server_time_per_output_token",
        "atalaya_generation_tokens",
        "atalaya_generation_queue_depth",
        "atalaya_guardrail_verdicts",
        "rpc_server_duration",
        "rpc_grpc_status_code",
    ):
        assert metric in exprs


# --- state, secrets, tests ----------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_secrets_only_by_reference(profile: str) -> None:
    objects = rendered(profile)
    assert of_kind(objects, "Secret") == []
    secretish = re.compile(r"TOKEN|PASSWORD|API_KEY|SECRET")
    for obj in workloads(objects):
        for c in containers(obj):
            for name, env in env_of(c).items():
                if secretish.search(name):
                    assert "secretKeyRef" in env.get("valueFrom", {}), name
    for config in of_kind(objects, "ConfigMap"):
        for key, value in config.get("data", {}).items():
            if key.endswith("_FILE"):  # the path of a mounted file, never its content
                assert value.startswith("/etc/atalaya/"), key
                continue
            assert not secretish.search(key), key
            assert "password" not in str(value).lower(), key


def test_only_the_model_downloader_gets_the_hugging_face_token() -> None:
    """GPU profile: the model cache's Job downloads (with the token); the GPU pods read the
    cache offline and get no token. Without the cache, the GPU pods download themselves."""
    objects = rendered("gpu")
    token = {"name": "hf-token", "key": "HF_TOKEN"}
    (job,) = of_kind(objects, "Job")
    (filler,) = containers(job)
    assert env_of(filler)["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == token
    for deployment in of_kind(objects, "Deployment"):
        for c in containers(deployment):
            assert "HF_TOKEN" not in env_of(c), deployment["metadata"]["name"]
    no_cache = merge(profile_values("gpu"), {"modelCache": {"enabled": False}})
    for deployment in of_kind(render(no_cache), "Deployment"):
        env = env_of(service_container(deployment))
        if component(deployment) in GPU_SERVICES["gpu"]:
            assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == token
        else:
            assert "HF_TOKEN" not in env


def test_memory_uses_in_chart_postgresql_with_a_secret_password() -> None:
    objects = rendered("default")
    (statefulset,) = of_kind(objects, "StatefulSet")
    assert statefulset["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
        "pgvector/pgvector:"
    )
    memory = next(d for d in of_kind(objects, "Deployment") if component(d) == "memory")
    env = env_of(containers(memory)[0])
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "atalaya-postgresql"
    config = next(c for c in of_kind(objects, "ConfigMap") if component(c) == "memory")
    assert config["data"]["ATALAYA_MEMORY_DSN"].startswith("host=atalaya-postgresql.")


def test_external_postgresql_needs_its_secret_and_peers() -> None:
    peer = {"ipBlock": {"cidr": "10.20.0.0/16"}}
    no_secret = {"postgresql": {"enabled": False, "external": {"egressTo": [peer]}}}
    with pytest.raises(helm.HelmError, match=r"external\.existingSecret"):
        render(no_secret)
    no_peers = {"postgresql": {"enabled": False, "external": {"existingSecret": "pg-dsn"}}}
    with pytest.raises(helm.HelmError, match="egressTo"):
        render(no_peers)
    external = merge(no_peers, no_secret)
    objects = render(external)
    assert of_kind(objects, "StatefulSet") == []
    memory = next(d for d in of_kind(objects, "Deployment") if component(d) == "memory")
    dsn = env_of(containers(memory)[0])["ATALAYA_MEMORY_DSN"]
    assert dsn["valueFrom"]["secretKeyRef"] == {"name": "pg-dsn", "key": "dsn"}
    policy = next(p for p in of_kind(objects, "NetworkPolicy") if component(p) == "memory")
    rule = next(r for r in policy["spec"]["egress"] if r.get("to") == [peer])
    assert rule["ports"] == [{"port": 5432, "protocol": "TCP"}]


def test_helm_test_pod_checks_every_service() -> None:
    (pod,) = of_kind(rendered("default"), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    args = pod["spec"]["containers"][0]["command"][3:]
    assert sorted(a.split("=", 1)[0] for a in args) == sorted(SERVICES)
    assert "grpc_health" in pod["spec"]["containers"][0]["command"][2]


def test_notes_name_every_service() -> None:
    text = notes({})
    for name in SERVICES:
        assert f"atalaya-{name}-headless" in text
    assert "SIMULATOR" in notes({"services": {"generation": {"settings": {"BACKEND": "sim"}}}})
