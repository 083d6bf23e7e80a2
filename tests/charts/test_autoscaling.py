"""Autoscaling in the rendered chart: which scaler each service gets per profile, KEDA
triggers whose missing metric is an error (so the fallback fires), GPU services scaled on
their queues and never on CPU, and the settings the chart refuses because a scaler would be
blind with them. The metric names themselves are checked against the code's exporter in
test_metric_names.py."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import promql_parser
import pytest
import yaml

from tests.charts.helm import (
    KSERVE_VALUES,
    OPTIONS,
    RENDERINGS,
    ROOT,
    SERVICES,
    Obj,
    component,
    effective_values,
    merge,
    of_kind,
    profile_values,
    render,
    rendered,
)

#: Services whose work runs on a GPU, per profile: their own pods ask for one, or (KServe)
#: they pass every request to a GPU predictor.
GPU_WORK = {"gpu": {"generation", "guardrail"}, "gpu-kserve": {"generation", "guardrail"}}
#: What makes Prometheus see the services, and where KEDA asks it.
METRICS_ON = {
    "telemetry": {"serviceMonitor": {"enabled": True}},
    "keda": {"prometheusUrl": "http://prometheus.example:9090"},
}


def keda_on(service: str, **keda: Any) -> dict[str, Any]:
    return merge(
        METRICS_ON,
        {
            "services": {
                service: {"autoscaling": {"enabled": False}, "keda": {"enabled": True, **keda}}
            }
        },
    )


def scaled_objects(objects: tuple[Obj, ...] | list[Obj]) -> dict[str, Obj]:
    return {component(s): s for s in of_kind(objects, "ScaledObject")}


def gpu_work(profile: str) -> set[str]:
    base = OPTIONS[profile][0] if profile in OPTIONS else profile
    return GPU_WORK.get(base, set())


# --- which scaler, per profile --------------------------------------------------------------


@pytest.mark.parametrize("profile", list(RENDERINGS))
def test_autoscalers_match_the_profile(profile: str) -> None:
    values = effective_values(profile_values(profile))
    objects = rendered(profile)
    hpa = {component(h): h for h in of_kind(objects, "HorizontalPodAutoscaler")}
    keda = set(scaled_objects(objects))
    for name in SERVICES:
        svc = values["services"][name]
        assert (name in hpa) == svc["autoscaling"]["enabled"], name
        assert (name in keda) == bool(svc.get("keda", {}).get("enabled")), name
    for h in hpa.values():
        cpu = h["spec"]["metrics"][0]["resource"]
        assert cpu["name"] == "cpu"
        assert cpu["target"]["averageUtilization"] > 0
    scaled = {component(d) for d in of_kind(objects, "Deployment") if "replicas" not in d["spec"]}
    assert scaled == set(hpa) | keda
    if profile == "dev":
        assert not hpa
        assert not keda
        assert all(d["spec"].get("replicas") == 1 for d in of_kind(objects, "Deployment"))


@pytest.mark.parametrize("profile", list(RENDERINGS))
def test_gpu_services_scale_on_their_queue_never_on_cpu(profile: str) -> None:
    objects = rendered(profile)
    hpa = {component(h) for h in of_kind(objects, "HorizontalPodAutoscaler")}
    on_gpu = {
        component(d)
        for d in of_kind(objects, "Deployment")
        if "nvidia.com/gpu" in d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    }
    assert on_gpu <= gpu_work(profile)
    keda = scaled_objects(objects)
    for name in gpu_work(profile):
        assert name not in hpa, name
        triggers = {t["name"]: t for t in keda[name]["spec"]["triggers"]}
        assert {"queue-depth", "in-flight"} <= set(triggers), name
        assert all(t["type"] == "prometheus" for t in triggers.values())


def test_a_gpu_service_with_a_cpu_hpa_is_refused() -> None:
    values = {"services": {"embedding": {"gpu": {"enabled": True}}}}  # its HPA is on by default
    with pytest.raises(helm.HelmError, match=r"services\.embedding runs on a GPU.*keda"):
        render(values)
    fixed = merge(values, keda_on("embedding"))
    assert "embedding" in scaled_objects(render(fixed))


# --- the triggers: a missing metric is a failure, and the fallback is there -----------------


def _masks_a_missing_series(query: str) -> list[str]:
    """What in `query` turns "no series" into a number (so KEDA would read 0 instead of
    failing): `or`, vector(), absent(), a bare literal."""
    found: list[str] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.BinaryExpr) and str(node.op) == "or":
            found.append("or")
        if isinstance(node, promql_parser.Call) and node.func.name in {
            "vector",
            "absent",
            "absent_over_time",
            "scalar",
        }:
            found.append(f"{node.func.name}()")

    expr = promql_parser.parse(query)
    if isinstance(expr, promql_parser.NumberLiteral):
        found.append("a number")
    promql_parser.walk(expr, visit)
    return found


def assert_fails_loudly(scaled: Obj) -> None:
    """A ScaledObject whose every trigger errs on a missing series, with a fallback."""
    name, spec = scaled["metadata"]["name"], scaled["spec"]
    fallback = spec["fallback"]
    assert fallback["failureThreshold"] >= 1, name
    assert spec["minReplicaCount"] <= fallback["replicas"] <= spec["maxReplicaCount"], name
    for trigger in spec["triggers"]:
        meta = trigger["metadata"]
        assert trigger["type"] == "prometheus", name
        # KEDA's default (true) reads an empty result as 0: the fallback never fires.
        assert meta["ignoreNullValues"] == "false", (name, trigger["name"])
        # The fallback's formula (target * replicas) is for AverageValue triggers.
        assert trigger["metricType"] == "AverageValue"
        assert meta["serverAddress"].startswith("http")
        assert _masks_a_missing_series(meta["query"]) == [], (name, meta["query"])
        expr = promql_parser.parse(meta["query"])
        # One element, as KEDA's Prometheus scaler requires.
        assert isinstance(expr, promql_parser.AggregateExpr), meta["query"]
        assert expr.modifier is None or not expr.modifier.labels, meta["query"]


@pytest.mark.parametrize("profile", [p for p in RENDERINGS if scaled_objects(rendered(p))])
def test_keda_triggers_fail_on_a_missing_metric_and_fall_back(profile: str) -> None:
    for scaled in scaled_objects(rendered(profile)).values():
        assert_fails_loudly(scaled)


def test_a_trigger_that_would_read_zero_is_caught() -> None:
    scaled = json.loads(json.dumps(scaled_objects(rendered("gpu"))["generation"]))
    scaled["spec"]["triggers"][0]["metadata"]["ignoreNullValues"] = "true"
    with pytest.raises(AssertionError, match="queue-depth"):
        assert_fails_loudly(scaled)


def test_the_masking_check_catches_a_query_that_reads_zero_when_empty() -> None:
    assert _masks_a_missing_series("sum(x{a='b'}) or vector(0)") == ["or", "vector()"]
    assert _masks_a_missing_series("sum(x) + absent(y)") == ["absent()"]
    assert _masks_a_missing_series("sum(x{a='b'})") == []


def test_generation_and_the_guard_scale_on_their_own_series() -> None:
    keda = scaled_objects(rendered("gpu"))
    generation, guardrail = keda["generation"]["spec"], keda["guardrail"]["spec"]
    assert generation["scaleTargetRef"]["name"] == "atalaya-generation"
    assert (generation["minReplicaCount"], generation["maxReplicaCount"]) == (1, 8)
    assert generation["fallback"] == {"failureThreshold": 3, "replicas": 2}
    queries = {t["name"]: t["metadata"]["query"] for t in generation["triggers"]}
    assert queries == {
        "queue-depth": 'sum(atalaya_generation_queue_depth{namespace="atalaya",'
        'service="atalaya-generation-headless"})',
        "in-flight": 'sum(atalaya_generation_in_flight{namespace="atalaya",'
        'service="atalaya-generation-headless"})',
    }
    guard = {t["name"]: t["metadata"] for t in guardrail["triggers"]}
    assert guard["queue-depth"]["query"].startswith("sum(atalaya_guardrail_queue_depth{")
    assert guard["in-flight"]["query"].startswith("sum(atalaya_guardrail_in_flight{")
    assert (guard["queue-depth"]["threshold"], guard["in-flight"]["threshold"]) == ("8", "32")


def test_scale_to_zero_wakes_on_the_gateways_in_flight_rpcs() -> None:
    values = merge(
        profile_values("gpu"), {"services": {"generation": {"keda": {"scaleToZero": True}}}}
    )
    to_zero = scaled_objects(render(values))["generation"]["spec"]
    assert to_zero["minReplicaCount"] == 0
    wake = next(t for t in to_zero["triggers"] if t["name"] == "gateway-active")
    assert wake["metadata"]["query"] == (
        'sum(atalaya_rpc_server_active_requests{namespace="atalaya",'
        'service="atalaya-gateway-headless"})'
    )
    assert wake["metadata"]["ignoreNullValues"] == "false"


# --- what the chart refuses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (
            merge(keda_on("generation"), {"telemetry": {"serviceMonitor": {"enabled": False}}}),
            r"nothing makes Prometheus scrape.*serviceMonitor\.enabled",
        ),
        (
            merge(keda_on("guardrail"), {"telemetry": {"metrics": {"enabled": False}}}),
            r"telemetry\.metrics\.enabled=false",
        ),
        (merge(keda_on("generation"), {"keda": {"prometheusUrl": ""}}), r"keda\.prometheusUrl"),
        (keda_on("memory"), r"no queue or in-flight gauge"),
        (keda_on("gateway"), r"no queue or in-flight gauge"),
        (keda_on("generation", fallback={"replicas": 9}), r"fallback\.replicas 9 is above"),
        (keda_on("generation", minReplicas=5, maxReplicas=2), r"minReplicas 5 is above"),
    ],
    ids=["no-scrape", "no-metrics", "no-address", "memory", "gateway", "fallback", "min-max"],
)
def test_keda_without_what_it_needs_is_refused(values: dict[str, Any], reason: str) -> None:
    with pytest.raises(helm.HelmError, match=reason):
        render(values)


def test_a_prometheus_of_your_own_scraping_instead_of_service_monitors() -> None:
    values = merge(
        keda_on("generation"),
        {"telemetry": {"serviceMonitor": {"enabled": False}}, "keda": {"externalScrape": True}},
    )
    objects = render(values)
    assert "generation" in scaled_objects(objects)
    assert not of_kind(objects, "ServiceMonitor")


def test_keda_and_hpa_together_are_refused() -> None:
    both = merge(
        keda_on("generation"), {"services": {"generation": {"autoscaling": {"enabled": True}}}}
    )
    with pytest.raises(helm.HelmError, match="enable one"):
        render(both)


def test_in_flight_rpcs_metric_is_opt_in() -> None:
    on = {"services": {"gateway": {"autoscaling": {"activeRequests": {"enabled": True}}}}}
    hpa = next(
        h for h in of_kind(render(on), "HorizontalPodAutoscaler") if component(h) == "gateway"
    )
    pods = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods[0]["pods"]["metric"]["name"] == "atalaya_rpc_server_active_requests"
    default = of_kind(rendered("default"), "HorizontalPodAutoscaler")
    assert all(len(h["spec"]["metrics"]) == 1 for h in default)


# --- the KServe predictors (k8s/kserve) -----------------------------------------------------


def kserve_objects() -> list[Obj]:
    paths = sorted(p for p in (ROOT / "k8s" / "kserve").glob("*.yaml") if p != KSERVE_VALUES)
    return [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_kserve_predictors_scale_on_vllms_queue_never_on_cpu() -> None:
    objects = kserve_objects()
    services = {o["metadata"]["name"]: o for o in of_kind(objects, "InferenceService")}
    assert set(services) == {"atalaya-llm", "atalaya-llama-guard"}
    for isvc in services.values():
        annotations = isvc["metadata"]["annotations"]
        # KServe makes no HPA of its own (its default is one on CPU) and leaves the replicas.
        assert annotations["serving.kserve.io/autoscalerClass"] == "external"
        assert "serving.kserve.io/metric" not in annotations
        predictor = isvc["spec"]["predictor"]
        assert not {"scaleMetric", "scaleTarget", "autoScaling"} & set(predictor)
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in of_kind(objects, "ScaledObject")}
    assert set(scaled) == {f"{name}-predictor" for name in services}
    for name in services:
        so = scaled[f"{name}-predictor"]
        assert_fails_loudly(so)
        queries = {t["name"]: t["metadata"]["query"] for t in so["spec"]["triggers"]}
        selector = f'{{namespace="atalaya",model_name="{name}"}}'
        assert queries == {
            "queue-depth": f"sum(vllm:num_requests_waiting{selector})",
            "in-flight": f"sum(vllm:num_requests_running{selector})",
        }


def test_prometheus_scrapes_the_predictors_vllm_serves_by_its_model_name() -> None:
    objects = kserve_objects()
    (runtime,) = of_kind(objects, "ServingRuntime")
    (container,) = runtime["spec"]["containers"]
    # vLLM labels its series model_name=<served model name>, here the InferenceService's name.
    assert "--served-model-name={{.Name}}" in container["args"]
    (monitor,) = of_kind(objects, "PodMonitor")
    (expression,) = monitor["spec"]["selector"]["matchExpressions"]
    assert expression["key"] == "serving.kserve.io/inferenceservice"
    assert set(expression["values"]) == {
        o["metadata"]["name"] for o in of_kind(objects, "InferenceService")
    }
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in container["ports"]}
    assert endpoint["path"] == "/metrics"


# --- the alert when a scaler is blind -------------------------------------------------------


def test_an_alert_fires_exactly_when_a_scalers_series_is_missing() -> None:
    objects = rendered("gpu")
    (rule_set,) = of_kind(objects, "PrometheusRule")
    (group,) = rule_set["spec"]["groups"]
    rules = {r["labels"]["component"]: r for r in group["rules"]}
    keda = scaled_objects(objects)
    assert set(rules) == set(keda) == {"generation", "guardrail"}
    for name, rule in rules.items():
        assert rule["alert"] == "AtalayaScalingMetricsMissing"
        queue = next(t for t in keda[name]["spec"]["triggers"] if t["name"] == "queue-depth")
        # The scaler's own query: the alert and KEDA's failed reads are the same event.
        assert rule["expr"] == f"absent({queue['metadata']['query']})"
        assert rule["for"] == "5m"


def test_no_alert_for_a_service_that_scales_to_zero() -> None:
    values = merge(
        profile_values("gpu"), {"services": {"generation": {"keda": {"scaleToZero": True}}}}
    )
    (rule_set,) = of_kind(render(values), "PrometheusRule")
    components = {r["labels"]["component"] for r in rule_set["spec"]["groups"][0]["rules"]}
    assert components == {"guardrail"}
    assert not of_kind(
        render({"telemetry": {"prometheusRule": {"enabled": True}}}), "PrometheusRule"
    )
