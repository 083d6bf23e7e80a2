"""The protos are the API: generated stubs must be fresh, and every RPC documents
its status codes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = sorted((ROOT / "protos").glob("atalaya/*/v1/*.proto"))
SERVICES = {"gateway", "guardrail", "generation", "embedding", "memory"}


def test_generated_stubs_are_fresh() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_stale_stubs_are_detected(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "protos"))
    try:
        import generate
    finally:
        sys.path.pop(0)
    fresh = tmp_path / "fresh"
    generate.generate(fresh)
    stale = tmp_path / "stale"
    generate.generate(stale)
    module = next(stale.rglob("memory_pb2.py"))
    module.write_text(module.read_text() + "\n# edited by hand\n")
    assert generate.stale_files(fresh, stale) == [str(module.relative_to(stale))]


def test_every_service_has_a_versioned_package() -> None:
    packages = {p.parts[-3] for p in PROTOS}
    assert packages >= SERVICES
    for path in PROTOS:
        svc = path.parts[-3]
        assert f"package atalaya.{svc}.v1;" in path.read_text(), path


def test_every_rpc_documents_its_status_codes() -> None:
    for path in PROTOS:
        text = path.read_text()
        header = text.split("service ", 1)[0]
        for match in re.finditer(r"((?:\s*//[^\n]*\n)+)\s*rpc (\w+)", text):
            comment, rpc = match.group(1), match.group(2)
            documented = re.search(r"\b[A-Z_]{6,}\b", comment) or "status codes" in header.lower()
            assert documented, f"{path.name}: rpc {rpc} documents no status code"
            assert "INTERNAL" in comment or "INTERNAL" in header, f"{path.name}: {rpc}"


def test_every_request_carries_a_request_id() -> None:
    from atalaya.embedding.v1 import embedding_pb2
    from atalaya.gateway.v1 import gateway_pb2
    from atalaya.generation.v1 import generation_pb2
    from atalaya.guardrail.v1 import guardrail_pb2
    from atalaya.memory.v1 import memory_pb2

    for module in (embedding_pb2, memory_pb2, gateway_pb2, generation_pb2, guardrail_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                fields = method.input_type.fields_by_name
                if method.name == "ExportFeedback":
                    continue  # a bulk export, not a request of its own
                assert "request_id" in fields, f"{service.name}.{method.name}"
