"""The NetworkPolicies are the one allowlist: for every rendering, the policies the tests
expect are derived from services.common.topology (who calls whom, which port) and the values
that name peers outside the release, and compared rule by rule with the rendered ones. A
service admits exactly its callers, the `helm test` pod, metrics scraping and, for the
gateway, its clients, the ingress controller and the Gateway API data plane."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from services.common import topology
from tests.charts.helm import (
    RELEASE,
    RENDERINGS,
    Obj,
    component,
    effective_values,
    merge,
    of_kind,
    profile_values,
    render,
    rendered,
)

#: (peer, port) pairs of a policy's ingress rules, each peer as canonical JSON.
Rules = Counter[tuple[str, int]]


def callers_of(name: str) -> list[str]:
    """The services that call `name`, from the topology."""
    return [caller for caller, callees in topology.call_graph().items() if name in callees]


def pod_peer(name: str) -> dict[str, Any]:
    """The peer that selects the pods of component `name` of the release."""
    return {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "atalaya",
                "app.kubernetes.io/instance": RELEASE,
                "app.kubernetes.io/component": name,
            }
        }
    }


def _key(peer: dict[str, Any]) -> str:
    return json.dumps(peer, sort_keys=True)


def rules(peers: list[dict[str, Any]], port: int) -> Rules:
    return Counter((_key(peer), port) for peer in peers)


def gateway_clients(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Peers outside the release that may call the gateway."""
    peers = list(values["networkPolicy"]["gatewayFrom"])
    if values["ingress"]["enabled"]:
        peers += values["ingress"]["from"]
    route = values["grpcRoute"]
    if route["enabled"]:
        namespaces = dict.fromkeys(ref.get("namespace", "atalaya") for ref in route["parentRefs"])
        peers += route["from"] or [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
            for ns in namespaces
        ]
    return peers


def expected_ingress(values: dict[str, Any]) -> dict[str, Rules]:
    """Per service: its callers from the topology and the `helm test` pod on its port, the
    gateway's clients on the gateway's port, the scrapers on the metrics port."""
    metrics = values["telemetry"]["metrics"]
    expected: dict[str, Rules] = {}
    for service in topology.SERVICES:
        allowed = rules([pod_peer(c) for c in callers_of(service.name)], service.port)
        allowed += rules([pod_peer("test")], service.port)
        if service.name == "gateway":
            allowed += rules(gateway_clients(values), service.port)
        if metrics["enabled"]:
            allowed += rules(metrics["scrapeFrom"], metrics["port"])
        expected[service.name] = allowed
    return expected


def rendered_ingress(objects: tuple[Obj, ...] | list[Obj]) -> dict[str, Rules]:
    """Per service: the (peer, port) pairs of its policy's ingress rules."""
    found: dict[str, Rules] = {}
    for policy in of_kind(objects, "NetworkPolicy"):
        me = component(policy)
        if me not in topology.NAMES:
            continue
        allowed: Rules = Counter()
        for rule in policy["spec"].get("ingress", []):
            for port in rule["ports"]:
                assert port["protocol"] == "TCP"
                allowed += rules(rule["from"], port["port"])
        found[me] = allowed
    return found


def service_edges(objects: tuple[Obj, ...] | list[Obj]) -> set[tuple[str, str, int]]:
    """(caller, callee, port) of every egress rule from one service's pods to another's."""
    edges = set()
    for policy in of_kind(objects, "NetworkPolicy"):
        me = component(policy)
        if me not in topology.NAMES:
            continue
        for rule in policy["spec"].get("egress", []):
            for peer in rule.get("to", []):
                labels = peer.get("podSelector", {}).get("matchLabels", {})
                callee = labels.get("app.kubernetes.io/component")
                if callee in topology.NAMES and "namespaceSelector" not in peer:
                    edges |= {(me, callee, p["port"]) for p in rule["ports"]}
    return edges


def differences(expected: dict[str, Rules], found: dict[str, Rules]) -> list[str]:
    out = []
    for name in sorted(set(expected) | set(found)):
        want, got = expected.get(name, Counter()), found.get(name, Counter())
        out += [f"{name}: missing {peer} on {port}" for peer, port in want - got]
        out += [f"{name}: extra {peer} on {port}" for peer, port in got - want]
    return out


@pytest.mark.parametrize("profile", RENDERINGS)
def test_each_service_admits_exactly_its_callers(profile: str) -> None:
    values = effective_values(profile_values(profile))
    if not values["networkPolicy"]["enabled"]:
        pytest.skip("no NetworkPolicies")
    objects = rendered(profile)
    assert differences(expected_ingress(values), rendered_ingress(objects)) == []


@pytest.mark.parametrize("profile", RENDERINGS)
def test_each_service_reaches_exactly_what_it_calls(profile: str) -> None:
    expected = {
        (caller, callee, topology.port(callee))
        for caller, callees in topology.call_graph().items()
        for callee in callees
    }
    assert service_edges(rendered(profile)) == expected


def test_the_gateway_admits_the_ingress_controller_and_the_gateway_data_plane() -> None:
    closed = {"networkPolicy": {"gatewayFrom": []}}
    exposed = merge(
        closed,
        {
            "ingress": {"enabled": True, "hosts": ["a.example.com"], "tlsSecretName": "a-tls"},
            "grpcRoute": {
                "enabled": True,
                "parentRefs": [{"name": "public", "namespace": "edge"}, {"name": "internal"}],
            },
        },
    )
    gateway = topology.port("gateway")
    scrapers = rules(effective_values({})["telemetry"]["metrics"]["scrapeFrom"], 9464)
    only_tests = rules([pod_peer("test")], gateway) + scrapers
    assert rendered_ingress(render(closed))["gateway"] == only_tests
    found = rendered_ingress(render(exposed))["gateway"]
    ingress_nginx = effective_values({})["ingress"]["from"][0]
    for namespace in ("edge", "atalaya"):  # the parents' namespaces; "internal" is ours
        peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
        assert found[(_key(peer), gateway)] == 1
    assert found[(_key(ingress_nginx), gateway)] == 1
    data_plane = {"namespaceSelector": {"matchLabels": {"gateway": "public"}}}
    found = rendered_ingress(render(merge(exposed, {"grpcRoute": {"from": [data_plane]}})))
    assert found["gateway"][(_key(data_plane), gateway)] == 1
    assert not any("edge" in peer for peer, _ in found["gateway"])


def test_a_policy_that_strays_from_the_topology_is_caught() -> None:
    """The checker itself: a call graph in values that differs from the topology (embedding
    may call generation) renders policies the topology-derived expectation rejects."""
    values = effective_values({})
    strayed = render({"callGraph": {"embedding": ["generation"]}})
    found = differences(expected_ingress(values), rendered_ingress(strayed))
    assert found
    assert all(line.startswith("generation: extra") for line in found)
    assert service_edges(strayed) - service_edges(rendered("default")) == {
        ("embedding", "generation", topology.port("generation"))
    }


def test_the_issuer_is_reached_only_by_the_gateway() -> None:
    objects = rendered("gpu-exposed")
    issuer = {"ipBlock": {"cidr": "203.0.113.10/32"}}
    holders = {
        component(p)
        for p in of_kind(objects, "NetworkPolicy")
        for rule in p["spec"].get("egress", [])
        if issuer in rule.get("to", [])
    }
    assert holders == {"gateway"}
