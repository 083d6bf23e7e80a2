"""The import direction of CONTRIBUTING.md, enforced: shared runtime at the bottom, services
beside each other (never importing one another), hosts and tools on top; a service's
domain logic free of gRPC and generated stubs, however indirectly it would reach them."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The services proper: each one process with its own proto.
SERVICES = frozenset({"embedding", "memory", "guardrail", "generation", "gateway"})
#: Packages under services/ and the packages each may import (itself included).
ALLOWED: dict[str, frozenset[str]] = {
    "common": frozenset({"common"}),
    "engines": frozenset({"common", "engines"}),
    "client": frozenset({"common", "client"}),
    **{s: frozenset({"common", "engines", "client", s}) for s in SERVICES},
    "stack": frozenset({"common", "stack"}),
    "eval": frozenset({"common", "client", "eval"}),
    "cli": frozenset({"common", "client", "eval", "stack", "cli"}),
    # Hosts: other runtimes for the same service cores.
    "ray": frozenset({"common", "client", "ray", *SERVICES}),
    "kserve": frozenset({"common", "client", "kserve", *SERVICES}),
}
#: Modules of a service that may speak gRPC: entry points (`__main__`, the guardrail's
#: `evaluate` tool), the server, the servicer and the clients of other services. The rest
#: (config, core, domain, backends, detectors, ...) is plain Python that the other
#: runtimes and the tests reuse.
EDGE_MODULES = frozenset({"__main__", "evaluate", "server", "servicer", "clients"})
#: Import roots that mean "gRPC or generated stubs".
WIRE_ROOTS = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "atalaya")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str) -> set[str]:
    """Every module an import statement names (lazy imports in functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            graph[module_name(path, root)] = imports_of(path.read_text(encoding="utf-8"))
    return graph


def package_of(module: str) -> str | None:
    """'guardrail' for 'services.guardrail.core'; None outside services/."""
    parts = module.split(".")
    return parts[1] if parts[0] == "services" and len(parts) > 1 else None


#: The `atalaya` command runs a few tools that live beside the services, imported
#: inside the command that needs them, never when the CLI starts.
TOOL_IMPORTS: dict[str, frozenset[str]] = {"services.cli.__main__": frozenset({"loadtests.plan"})}


def tool_import(module: str, target: str) -> bool:
    return any(target.startswith(t) for t in TOOL_IMPORTS.get(module, ()))


def layer_violations(graph: Mapping[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        owner = package_of(module)
        for target in sorted(targets):
            root = target.split(".")[0]
            if (
                owner is not None
                and root in ("loadtests", "tests")
                and not tool_import(module, target)
            ):
                out.append(f"{module} imports {target}: services never import {root}")
            used = package_of(target)
            if owner is None or used is None or target.count(".") < 1:
                continue
            allowed = ALLOWED.get(owner)
            if allowed is None:
                out.append(f"{module}: package services.{owner} has no row in ALLOWED")
            elif used not in allowed:
                out.append(
                    f"{module} imports {target}: services.{owner} may import {sorted(allowed)}"
                )
    return out


def is_edge(module: str) -> bool:
    parts = module.split(".")
    return len(parts) < 3 or parts[1] not in SERVICES | {"engines"} or parts[-1] in EDGE_MODULES


def wire_violations(graph: Mapping[str, set[str]]) -> list[str]:
    """Domain modules of a service that reach gRPC or stubs, directly or through any
    chain of project modules (for example a shared helper that imports a stub)."""
    known = set(graph)

    def project_module(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    out = []
    for module in sorted(graph):
        if is_edge(module):
            continue
        seen, stack = {module}, [(module, [module])]
        while stack:
            current, chain = stack.pop()
            for target in graph[current]:
                if target.split(".")[0] in WIRE_ROOTS:
                    out.append(f"{module} reaches {target} via {' -> '.join(chain)}")
                    continue
                inner = project_module(target)
                if inner and inner not in seen:
                    seen.add(inner)
                    stack.append((inner, [*chain, inner]))
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT, ["services", "loadtests"])


def test_every_package_has_a_layer(graph: dict[str, set[str]]) -> None:
    packages = {p for m in graph if (p := package_of(m)) is not None}
    assert packages - set(ALLOWED) == set(), "add the new package to ALLOWED and CONTRIBUTING.md"


def test_imports_point_one_way(graph: dict[str, set[str]]) -> None:
    assert layer_violations(graph) == []


def test_domain_modules_stay_free_of_grpc(graph: dict[str, set[str]]) -> None:
    assert wire_violations(graph) == []


def start_up_imports(source: str) -> set[str]:
    """The modules imported when the module itself is imported (not inside functions)."""
    found: set[str] = set()
    pending: list[ast.AST] = [ast.parse(source)]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found |= imports_of(ast.unparse(node))
        pending.extend(ast.iter_child_nodes(node))
    return found


def test_tools_are_imported_only_when_their_command_runs() -> None:
    for module, tools in TOOL_IMPORTS.items():
        source = (ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
        needed = any(i.startswith(tuple(tools)) for i in imports_of(source))
        assert needed, f"{module} no longer needs {tools}"
        started = start_up_imports(source)
        assert not {i for i in started if i.startswith(tuple(tools))}, module
    assert start_up_imports("import a\ndef f():\n    import b\n") == {"a"}


def test_the_checks_catch_planted_violations(tmp_path: Path) -> None:
    files = {
        "services/common/wire.py": "import grpc\n",
        "services/memory/core.py": "from services.common.wire import x\n",
        "services/memory/servicer.py": "import grpc\nfrom services.memory.core import y\n",
        "services/guardrail/core.py": "def f():\n    from services.memory import core\n",
        "services/gateway/core.py": "import loadtests.bench\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    planted = import_graph(tmp_path, ["services"])
    layers = layer_violations(planted)
    assert any("services.guardrail.core imports services.memory" in v for v in layers)
    assert any("services.gateway.core imports loadtests.bench" in v for v in layers)
    wire = wire_violations(planted)
    # memory.core through the shared helper; guardrail.core through memory.core as well.
    assert sorted(v.split(" reaches ")[0] for v in wire) == [
        "services.guardrail.core",
        "services.memory.core",
    ]
    assert all("services.common.wire" in v for v in wire)
