"""JSON Schemas of custom resources for the chart tests, converted from a project's published
CustomResourceDefinition (its generated `openAPIV3Schema`), as strict as the API server with
strict field validation: every object that lists its properties rejects unknown ones.

kubernetes-validate ships Kubernetes' own schemas only; the custom resources the chart renders
(cert-manager, Gateway API) are checked against the files in tests/charts/crds/ that this
module writes:

    python -m tests.charts.crd_schema CRD.yaml VERSION OUT.json --source "<project> <tag> <path>"

What the conversion keeps and drops, so the result reads as JSON Schema (draft 2020-12) and
means what the API server means:
- kept: type, properties, items, required, enum, pattern, min/max lengths, items, properties
  and values, additionalProperties (a map's value schema), anyOf;
- `additionalProperties: false` added to every object with `properties`, unless the CRD keeps
  unknown fields there (x-kubernetes-preserve-unknown-fields);
- x-kubernetes-int-or-string becomes `type: [integer, string]`;
- dropped: descriptions, defaults, formats and the CEL rules (x-kubernetes-validations), which
  only the API server evaluates;
- `metadata` becomes the closed subset a chart sets (name, namespace, labels, annotations),
  and `status` is left out (a chart never writes it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

#: JSON Schema keywords of OpenAPI v3 that mean the same in draft 2020-12.
_SCALAR_KEYWORDS = (
    "type",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "required",
)

METADATA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
    "required": ["name"],
}


def convert(node: dict[str, Any]) -> dict[str, Any]:
    """One OpenAPI v3 (structural) schema node as a strict JSON Schema node."""
    if node.get("x-kubernetes-int-or-string"):
        return {"type": ["integer", "string"]}
    out: dict[str, Any] = {k: node[k] for k in _SCALAR_KEYWORDS if k in node}
    if "properties" in node:
        out["properties"] = {name: convert(child) for name, child in node["properties"].items()}
    if "items" in node:
        out["items"] = convert(node["items"])
    if "anyOf" in node:
        out["anyOf"] = [convert(choice) for choice in node["anyOf"]]
    additional = node.get("additionalProperties")
    if isinstance(additional, dict):
        out["additionalProperties"] = convert(additional)
    elif isinstance(additional, bool):
        out["additionalProperties"] = additional
    elif "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def crd_version_schema(crd: dict[str, Any], version: str, source: str) -> dict[str, Any]:
    """The JSON Schema of one served version of a CRD: apiVersion and kind fixed, metadata
    closed, status left out."""
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    if not entry.get("served"):
        raise ValueError(f"{kind} {version} is not served by this CRD")
    root = entry["schema"]["openAPIV3Schema"]
    body = convert(root)
    properties = body["properties"]
    properties.pop("status", None)
    properties["apiVersion"] = {"const": f"{group}/{version}"}
    properties["kind"] = {"const": kind}
    properties["metadata"] = METADATA
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{kind} ({group}/{version})",
        "description": (
            f"Converted by tests/charts/crd_schema.py from the published CRD ({source}): "
            "strict on unknown fields; CEL rules, defaults and formats left to the API server."
        ),
        **body,
        "required": sorted({"apiVersion", "kind", "metadata", *body.get("required", [])}),
        "additionalProperties": False,
    }


def load_crd(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    (crd,) = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    return dict(crd)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("crd", type=Path, help="a CustomResourceDefinition (YAML)")
    parser.add_argument("version", help="the served version, e.g. v1")
    parser.add_argument("out", type=Path, help="where to write the JSON Schema")
    parser.add_argument("--source", required=True, help="project, tag and path of the CRD")
    args = parser.parse_args(argv)
    schema = crd_version_schema(load_crd(args.crd), args.version, args.source)
    args.out.write_text(json.dumps(schema, indent=1, sort_keys=False) + "\n")


if __name__ == "__main__":
    main()
