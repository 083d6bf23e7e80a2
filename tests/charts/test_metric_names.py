"""Every metric name and label that the Grafana dashboard, a KEDA trigger, an HPA or a
PrometheusRule uses is one the services export.

The exported side is not a list: tests/support/exported_metrics.py runs the services in this
process and reads what OpenTelemetry's Prometheus exporter renders for them (names with its
suffixes, label names as the code records them). The using side is parsed as PromQL
(promql-parser): the metric of every selector, the labels of every matcher, of every
`by`/`without`/`on`/`ignoring`/`group_*` clause, and those a legend prints. Labels Prometheus
itself attaches to every scraped series (the Prometheus Operator's target labels) are the only
names allowed beyond the exporter's."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import promql_parser
import pytest
import yaml

from tests.charts.helm import (
    CHART,
    KSERVE_VALUES,
    RENDERINGS,
    ROOT,
    Obj,
    of_kind,
    profile_values,
    render,
    rendered,
)
from tests.support.exported_metrics import Series, exported_series

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
#: Labels on every series a ServiceMonitor's scrape stores, added by Prometheus and the
#: Prometheus Operator's relabelling (not by the services): the Kubernetes object the target
#: came from, and Prometheus's own job and instance.
TARGET_LABELS = frozenset(
    {"namespace", "service", "pod", "container", "endpoint", "job", "instance"}
)
#: Renderings beyond the profiles that add queries: every scaler with every option.
EXTRA_RENDERINGS: dict[str, dict[str, Any]] = {
    "keda-everywhere-to-zero": {
        "telemetry": {"serviceMonitor": {"enabled": True}},
        "keda": {"prometheusUrl": "http://prometheus.example:9090"},
        "services": {
            name: {
                "autoscaling": {"enabled": False},
                "keda": {"enabled": True, "scaleToZero": True},
            }
            for name in ("generation", "guardrail", "embedding")
        },
    },
    "active-requests": {
        "services": {
            name: {"autoscaling": {"activeRequests": {"enabled": True}}}
            for name in ("gateway", "memory")
        }
    },
}
#: The one set not read from running code: the series of vLLM's OpenAI server that the KServe
#: predictors' scalers (k8s/kserve) read. vLLM runs only in the GPU images, so its exporter
#: cannot run here; these are its scheduler gauges as vLLM's metrics module defines them
#: (v0.11: vllm/v1/metrics/loggers.py), labelled by the served model's name.
VLLM_SERIES: Series = {
    "vllm:num_requests_waiting": frozenset({"model_name", "engine"}),
    "vllm:num_requests_running": frozenset({"model_name", "engine"}),
}
KSERVE = ROOT / "k8s" / "kserve"
#: Grafana's variables, as values PromQL parses.
GRAFANA_DURATIONS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


@dataclass(frozen=True)
class Use:
    """One PromQL expression in an artifact, and the labels its legend prints."""

    where: str
    expr: str
    legend: tuple[str, ...] = ()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Series:
    series = exported_series(tmp_path_factory.mktemp("metrics"))
    assert "atalaya_generation_queue_depth" in series  # the services did run
    return series


# --- reading the artifacts ------------------------------------------------------------------


def grafana_to_promql(expr: str) -> str:
    return re.sub(
        r"\$\{?(\w+)\}?", lambda m: GRAFANA_DURATIONS.get(m.group(1), "grafana_var"), expr
    )


def dashboard_uses(dashboard: dict[str, Any], name: str) -> Iterator[Use]:
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))  # rows hold panels
        for target in panel.get("targets", []):
            if target.get("expr"):
                legend = tuple(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
                yield Use(
                    f"{name}: {panel.get('title')!r}", grafana_to_promql(target["expr"]), legend
                )
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else query or ""
        if variable.get("type") != "query":
            continue
        found = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", text)
        assert found, f"{name}: variable {variable.get('name')}: {text!r} is not label_values()"
        # label_values(selector, label): the label must be on the selected series.
        yield Use(
            f"{name}: variable {variable['name']!r}",
            f"count by ({found.group(2)}) ({grafana_to_promql(found.group(1))})",
        )


def manifest_uses(objects: list[Obj] | tuple[Obj, ...], rendering: str) -> Iterator[Use]:
    for scaled in of_kind(objects, "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            if trigger["type"] == "prometheus":
                where = f"{rendering}: ScaledObject {scaled['metadata']['name']}/{trigger['name']}"
                yield Use(where, trigger["metadata"]["query"])
    for hpa in of_kind(objects, "HorizontalPodAutoscaler"):
        for metric in hpa["spec"]["metrics"]:
            source = metric.get(metric["type"][0].lower() + metric["type"][1:], {})
            if "metric" in source:  # Pods, Object, External: a series by its name
                where = f"{rendering}: HPA {hpa['metadata']['name']}"
                yield Use(where, source["metric"]["name"])
    for rule_set in of_kind(objects, "PrometheusRule"):
        for group in rule_set["spec"]["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                yield Use(f"{rendering}: PrometheusRule {name}", rule["expr"])


def chart_uses() -> Iterator[Use]:
    for rendering in RENDERINGS:
        yield from manifest_uses(rendered(rendering), rendering)
    for rendering, values in EXTRA_RENDERINGS.items():
        yield from manifest_uses(render(values), rendering)


def all_uses() -> list[Use]:
    uses: list[Use] = []
    for path in DASHBOARDS:
        uses.extend(dashboard_uses(json.loads(path.read_text()), path.name))
    uses.extend(chart_uses())
    return uses


# --- checking one expression ----------------------------------------------------------------


def _selector_name(node: promql_parser.VectorSelector) -> str | None:
    if node.name:
        return node.name
    return next((m.value for m in node.matchers.matchers if m.name == "__name__"), None)


def problems(use: Use, exported: Series) -> list[str]:
    """What in `use` the services do not export; empty when everything is."""
    try:
        expr = promql_parser.parse(use.expr)
    except Exception as exc:  # a parse error is a problem to report, not a crash
        return [f"{use.where}: not PromQL ({exc}): {use.expr}"]
    checker = _Checker(use.where, exported)
    output = checker.labels(expr)
    missing = sorted(set(use.legend) - output)
    if missing:
        checker.found.append(f"{use.where}: the legend prints {missing}, which the query has not")
    return checker.found


@dataclass
class _Checker:
    """Walks one expression: the label names each node's result may carry, and what in it
    the services do not export (`found`)."""

    where: str
    exported: Series
    found: list[str] = field(default_factory=list)

    def labels(self, node: promql_parser.Expr) -> frozenset[str]:
        if isinstance(node, (promql_parser.MatrixSelector, promql_parser.VectorSelector)):
            return self.selector(node)
        if isinstance(node, promql_parser.AggregateExpr):
            return self.aggregate(node)
        if isinstance(node, promql_parser.BinaryExpr):
            return self.binary(node)
        if isinstance(node, promql_parser.Call):
            args = [a for a in node.args if isinstance(a, promql_parser.Expr)]
            labels = frozenset().union(*(self.labels(a) for a in args))
            return labels - {"le"} if node.func.name == "histogram_quantile" else labels
        if isinstance(
            node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)
        ):
            return self.labels(node.expr)
        return frozenset()  # literals

    def selector(
        self, node: promql_parser.VectorSelector | promql_parser.MatrixSelector
    ) -> frozenset[str]:
        if isinstance(node, promql_parser.MatrixSelector):
            node = node.vector_selector
        name = node.name or next(
            (m.value for m in node.matchers.matchers if m.name == "__name__"), None
        )
        if name is None or name not in self.exported:
            self.found.append(f"{self.where}: metric {name!r} is not exported")
            return TARGET_LABELS
        have = self.exported[name] | TARGET_LABELS
        for matcher in node.matchers.matchers:
            if matcher.name != "__name__" and matcher.name not in have:
                self.found.append(f"{self.where}: {name} has no label {matcher.name!r}")
        return have

    def aggregate(self, node: promql_parser.AggregateExpr) -> frozenset[str]:
        inner = self.labels(node.expr)
        if node.modifier is None:
            return frozenset()
        wrong = sorted(set(node.modifier.labels) - inner)
        if wrong:
            self.found.append(f"{self.where}: grouped by {wrong}, which its series have not")
        if node.modifier.type == promql_parser.AggModifierType.By:
            return frozenset(node.modifier.labels)
        return inner - set(node.modifier.labels)

    def binary(self, node: promql_parser.BinaryExpr) -> frozenset[str]:
        both = self.labels(node.lhs) | self.labels(node.rhs)
        modifier = node.modifier
        if modifier is not None:
            named = list(modifier.matching.labels if modifier.matching else [])
            named += list(modifier.group_labels or [])
            wrong = sorted(set(named) - both)
            if wrong:
                self.found.append(f"{self.where}: matched on {wrong}, which its series have not")
        return both


# --- the tests ------------------------------------------------------------------------------


def kserve_uses() -> list[Use]:
    paths = sorted(p for p in KSERVE.glob("*.yaml") if p != KSERVE_VALUES)
    objects = [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]
    return list(manifest_uses(objects, "k8s/kserve"))


def test_the_kserve_scalers_use_only_vllms_series() -> None:
    uses = kserve_uses()
    assert len(uses) == 4
    assert [p for use in uses for p in problems(use, VLLM_SERIES)] == []


def test_the_artifacts_use_only_exported_names_and_labels(exported: Series) -> None:
    uses = all_uses()
    wheres = {u.where.split(":")[0] for u in uses}
    assert {"atalaya.json", "gpu", "keda-everywhere-to-zero", "active-requests"} <= wheres
    kinds = {u.where.split(": ")[1].split()[0] for u in uses if not u.where.endswith(".json")}
    assert kinds >= {"ScaledObject", "HPA", "PrometheusRule"}
    assert [p for use in uses for p in problems(use, exported)] == []


def test_the_dashboard_groups_guard_verdicts_by_the_exported_labels(exported: Series) -> None:
    (dashboard,) = [p for p in DASHBOARDS if p.name == "atalaya.json"]
    uses = list(dashboard_uses(json.loads(dashboard.read_text()), dashboard.name))
    verdicts = next(u for u in uses if "atalaya_guardrail_verdicts_total" in u.expr)
    assert set(verdicts.legend) == {"atalaya_guardrail_verdict", "atalaya_guardrail_decided_by"}
    assert problems(verdicts, exported) == []


@pytest.mark.parametrize(
    ("expr", "legend", "wrong"),
    [
        # The dashboard's mistake: label names the exporter never emits.
        (
            "sum by (verdict, detector) (rate(atalaya_guardrail_verdicts_total[5m]))",
            (),
            ["grouped by ['detector', 'verdict']"],
        ),
        (
            "sum by (atalaya_guardrail_verdict) (rate(atalaya_guardrail_verdicts_total[5m]))",
            ("atalaya_guardrail_verdict", "detector"),
            ["the legend prints ['detector']"],
        ),
        # A metric name without the exporter's suffix, and one that does not exist.
        ("sum(rate(atalaya_guardrail_verdicts[5m]))", (), ["'atalaya_guardrail_verdicts'"]),
        ("sum(atalaya_generation_queue_size)", (), ["'atalaya_generation_queue_size'"]),
        # A matcher on a label of another metric, and vector matching on a missing label.
        ('sum(atalaya_guardrail_in_flight{detector="x"})', (), ["no label 'detector'"]),
        (
            "atalaya_generation_in_flight / on(model) atalaya_generation_queue_depth",
            (),
            ["matched on ['model']"],
        ),
        ('{__name__="atalaya_generation_inflight"}', (), ["'atalaya_generation_inflight'"]),
    ],
    ids=["labels", "legend", "no-suffix", "unknown", "matcher", "on", "name-matcher"],
)
def test_a_planted_wrong_name_is_found(
    exported: Series, expr: str, legend: tuple[str, ...], wrong: list[str]
) -> None:
    found = problems(Use("planted", expr, legend), exported)
    assert len(found) == len(wrong), found
    for problem, expected in zip(found, wrong, strict=True):
        assert expected in problem


def test_a_wrong_name_planted_in_the_chart_is_found(exported: Series) -> None:
    """The whole path, from a rendered ScaledObject: a trigger on a name the code lacks."""
    objects = render(profile_values("gpu"))
    scaled = of_kind(objects, "ScaledObject")[0]
    trigger = scaled["spec"]["triggers"][0]
    trigger["metadata"]["query"] = trigger["metadata"]["query"].replace(
        "_queue_depth", "_queue_length"
    )
    found = [p for use in manifest_uses(objects, "planted") for p in problems(use, exported)]
    assert len(found) == 1
    assert "_queue_length' is not exported" in found[0]


def test_unexported_names_are_caught_in_every_kind_of_artifact(exported: Series) -> None:
    dashboard = {
        "panels": [
            {
                "title": "p",
                "targets": [{"expr": "rate(nope_total[$__rate_interval])", "legendFormat": ""}],
            }
        ],
        "templating": {
            "list": [{"name": "ns", "type": "query", "query": "label_values(nope, namespace)"}]
        },
    }
    rule = {
        "kind": "PrometheusRule",
        "metadata": {"name": "r"},
        "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "absent(nope)"}]}]},
    }
    hpa = {
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "h"},
        "spec": {
            "metrics": [
                {"type": "Pods", "pods": {"metric": {"name": "nope"}, "target": {}}},
            ]
        },
    }
    uses = [*dashboard_uses(dashboard, "d"), *manifest_uses([rule, hpa], "m")]
    assert len(uses) == 4
    assert all(problems(use, exported) for use in uses)
