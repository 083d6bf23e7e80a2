"""The serve config: one file for KubeRay and the local runner, every deployment's
concurrency and autoscaling set explicitly, the local overlay fitting 2 CPUs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from services.ray.config import LOCAL_OVERLAY, SERVE_CONFIG, load_yaml, local_config, merge

RAYSERVICE = Path(__file__).resolve().parents[2] / "k8s" / "kuberay" / "rayservice.yaml"


def test_the_rayservice_embeds_the_serve_config_verbatim() -> None:
    manifest = yaml.safe_load(RAYSERVICE.read_text())
    assert yaml.safe_load(manifest["spec"]["serveConfigV2"]) == load_yaml(SERVE_CONFIG)


@pytest.mark.parametrize("config", ["cluster", "local"])
def test_every_deployment_sets_concurrency_and_autoscaling(config: str) -> None:
    data = load_yaml(SERVE_CONFIG) if config == "cluster" else local_config()
    schema = ServeDeploySchema.model_validate(data)
    assert {a.name for a in schema.applications} == {
        "gateway",
        "guardrail",
        "generation",
        "embedding",
        "memory",
    }
    for app in schema.applications:
        (deployment,) = app.deployments
        auto = deployment.autoscaling_config
        assert isinstance(auto, dict)
        assert deployment.max_ongoing_requests > 5  # Serve's default collapses under load
        assert 0 < auto["target_ongoing_requests"] <= deployment.max_ongoing_requests
        assert 1 <= auto["min_replicas"] <= auto["max_replicas"]


def test_the_local_overlay_fits_two_cpus_without_a_gpu() -> None:
    config = local_config()
    total = 0.0
    for app in config["applications"]:
        (deployment,) = app["deployments"]
        options = deployment["ray_actor_options"]
        assert "num_gpus" not in options
        total += options["num_cpus"] * deployment["autoscaling_config"]["max_replicas"]
        assert not app.get("runtime_env")  # backends come from the shell locally
    assert total <= 2.0


def test_an_overlay_replaces_the_keys_it_names_and_keeps_the_rest() -> None:
    base = {
        "grpc_options": {"port": 9000, "grpc_servicer_functions": ["f"]},
        "applications": [
            {
                "name": "a",
                "import_path": "m:a",
                "runtime_env": {"env_vars": {"X": "1"}},
                "deployments": [
                    {
                        "name": "A",
                        "max_ongoing_requests": 8,
                        "ray_actor_options": {"num_cpus": 4, "num_gpus": 1},
                    }
                ],
            }
        ],
    }
    overlay = {
        "grpc_options": {"port": 1},
        "applications": [
            {
                "name": "a",
                "runtime_env": {},
                "deployments": [{"name": "A", "ray_actor_options": {"num_cpus": 0.1}}],
            }
        ],
    }
    out = merge(base, overlay)
    assert out["grpc_options"] == {"port": 1, "grpc_servicer_functions": ["f"]}
    (app,) = out["applications"]
    assert app["runtime_env"] == {} and app["import_path"] == "m:a"
    assert app["deployments"] == [
        {"name": "A", "max_ongoing_requests": 8, "ray_actor_options": {"num_cpus": 0.1}}
    ]
    assert base["applications"][0]["runtime_env"] == {"env_vars": {"X": "1"}}  # unchanged
    with pytest.raises(ValueError, match="unknown"):
        merge(base, {"applications": [{"name": "zzz"}]})


def test_the_overlay_file_is_applied() -> None:
    assert load_yaml(LOCAL_OVERLAY)["applications"]
    assert local_config(apps=["embedding"], grpc_port=1234)["grpc_options"]["port"] == 1234
