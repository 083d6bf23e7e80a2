"""The conversion of a published CRD into the strict JSON Schema the chart tests validate
custom resources with (tests/charts/crd_schema.py), and the vendored results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.charts.crd_schema import crd_version_schema, main
from tests.charts.helm import CRD_SCHEMAS, CRDS

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  names: {kind: Widget, plural: widgets}
  scope: Namespaced
  versions:
    - name: v1alpha1
      served: false
      storage: false
      schema: {openAPIV3Schema: {type: object}}
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          description: A widget.
          required: [spec]
          properties:
            apiVersion: {type: string}
            kind: {type: string}
            metadata: {type: object}
            spec:
              type: object
              required: [size]
              x-kubernetes-validations:
                - rule: self.size > 0
              properties:
                size: {type: integer, format: int32, minimum: 0, default: 1}
                port:
                  x-kubernetes-int-or-string: true
                  anyOf: [{type: integer}, {type: string}]
                labels:
                  type: object
                  additionalProperties: {type: string}
                extra:
                  type: object
                  x-kubernetes-preserve-unknown-fields: true
                  properties:
                    known: {type: string}
                parts:
                  type: array
                  maxItems: 2
                  items:
                    type: object
                    properties:
                      name: {type: string, pattern: "^[a-z]+$"}
            status:
              type: object
              properties:
                ready: {type: boolean}
"""


def widget(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": "n", "labels": {"a": "b"}},
        "spec": {"size": 1, **spec},
    }


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = crd_version_schema(yaml.safe_load(CRD), "v1", "example/widgets v1.0.0 widgets.yaml")
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_a_valid_object_passes(validator: jsonschema.Draft202012Validator) -> None:
    good = widget(port="grpc", labels={"x": "y"}, extra={"known": "k", "anything": 1})
    assert list(validator.iter_errors(good)) == []
    assert list(validator.iter_errors(widget(port=8080, parts=[{"name": "ab"}]))) == []


@pytest.mark.parametrize(
    "bad",
    [
        widget(sise=1),  # unknown field of a listed object
        widget(parts=[{"name": "ab", "nmae": "x"}]),  # unknown field inside a list
        widget(parts=[{"name": "AB"}]),  # pattern
        widget(parts=[{}, {}, {}]),  # maxItems
        widget(port=1.5),  # int-or-string
        widget(labels={"x": 1}),  # map values
        {**widget(), "status": {"ready": True}},  # a chart never writes status
        {**widget(), "apiVersion": "example.com/v1alpha1"},
        {**widget(), "metadata": {"name": "w", "generateName": "w-"}},
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
    ],
    ids=[
        "unknown-field",
        "unknown-field-in-list",
        "pattern",
        "max-items",
        "int-or-string",
        "map-values",
        "status",
        "api-version",
        "metadata",
        "no-spec",
    ],
)
def test_what_the_api_server_refuses_is_refused(
    validator: jsonschema.Draft202012Validator, bad: dict[str, Any]
) -> None:
    assert list(validator.iter_errors(bad))


def test_only_served_versions_convert() -> None:
    with pytest.raises(ValueError, match="not served"):
        crd_version_schema(yaml.safe_load(CRD), "v1alpha1", "x")


def test_the_command_writes_the_schema(tmp_path: Path) -> None:
    (tmp_path / "crd.yaml").write_text(CRD)
    out = tmp_path / "widget.json"
    main([str(tmp_path / "crd.yaml"), "v1", str(out), "--source", "example v1.0.0"])
    schema = json.loads(out.read_text())
    assert schema["properties"]["kind"] == {"const": "Widget"}
    assert "example v1.0.0" in schema["description"]


@pytest.mark.parametrize("key", sorted(CRD_SCHEMAS), ids=lambda k: k[1])
def test_vendored_schemas_are_schemas_of_their_kind(key: tuple[str, str]) -> None:
    schema = json.loads((CRDS / CRD_SCHEMAS[key]).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["apiVersion"] == {"const": key[0]}
    assert schema["properties"]["kind"] == {"const": key[1]}
    assert schema["additionalProperties"] is False
