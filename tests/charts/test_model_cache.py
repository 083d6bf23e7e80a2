"""The model cache: weights downloaded once into a volume (a shared claim filled by a Job, or
a directory per node filled by each pod's init container) and mounted read-only by the pods
that load them offline. The objects as Helm renders them, and the fill/wait program
(charts/atalaya/files/model_cache.py) run for real, as the rendered command, against a
Hugging Face cache on disk with the real huggingface_hub (offline: no network here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from tests.charts.helm import (
    Obj,
    component,
    env_of,
    merge,
    notes,
    of_kind,
    pod_spec,
    profile_values,
    render,
    rendered,
)

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
GUARD = "meta-llama/Llama-Guard-3-1B"
HUB_EGRESS = {
    "to": [
        {
            "ipBlock": {
                "cidr": "0.0.0.0/0",
                "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
            }
        }
    ],
    "ports": [{"port": 443, "protocol": "TCP"}],
}


def deployment(objects: tuple[Obj, ...] | list[Obj], name: str) -> Obj:
    (found,) = [d for d in of_kind(objects, "Deployment") if component(d) == name]
    return found


def spec_of(obj: Obj) -> Obj:
    spec = pod_spec(obj)
    assert spec is not None
    return spec


def policy(objects: tuple[Obj, ...] | list[Obj], name: str) -> Obj:
    (found,) = [p for p in of_kind(objects, "NetworkPolicy") if component(p) == name]
    return found


def volume(spec: Obj, name: str) -> Obj:
    (found,) = [v for v in spec["volumes"] if v["name"] == name]
    return dict(found)


def mount(container: Obj, name: str) -> Obj:
    (found,) = [m for m in container["volumeMounts"] if m["name"] == name]
    return dict(found)


# --- a shared claim filled by a Job (the GPU profile) ------------------------------------------


def test_gpu_profile_fills_a_shared_claim_once() -> None:
    objects = rendered("gpu")
    (claim,) = of_kind(objects, "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == "atalaya-model-cache"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    (job,) = of_kind(objects, "Job")
    spec = spec_of(job)
    (filler,) = spec["containers"]
    assert filler["command"][:2] == ["python3", "-c"]
    assert filler["command"][3:] == ["fill", LLAMA, GUARD]  # every service's, once, sorted
    env = env_of(filler)
    assert env["HF_HUB_CACHE"]["value"] == "/models"
    assert env["HF_XET_CACHE"]["value"] == "/models/.xet"
    assert env["ATALAYA_MODEL_CACHE_IGNORE"]["value"] == "original/*"
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "HF_TOKEN"}
    assert mount(filler, "model-cache") == {"name": "model-cache", "mountPath": "/models"}
    assert volume(spec, "model-cache")["persistentVolumeClaim"] == {
        "claimName": "atalaya-model-cache"
    }
    assert spec["serviceAccountName"] == "atalaya-model-cache"
    assert spec["restartPolicy"] == "Never"
    accounts = {a["metadata"]["name"]: a for a in of_kind(objects, "ServiceAccount")}
    assert accounts["atalaya-model-cache"]["automountServiceAccountToken"] is False


@pytest.mark.parametrize(("name", "model"), [("generation", LLAMA), ("guardrail", GUARD)])
def test_gpu_pods_wait_for_their_models_and_read_them_offline(name: str, model: str) -> None:
    objects = rendered("gpu")
    spec = spec_of(deployment(objects, name))
    (wait,) = spec["initContainers"]
    assert wait["name"] == "model-cache-wait"
    assert wait["command"][3:] == ["wait", model]
    assert "HF_TOKEN" not in env_of(wait)
    assert mount(wait, "model-cache")["readOnly"] is True
    (service,) = spec["containers"]
    assert mount(service, "model-cache") == {
        "name": "model-cache",
        "mountPath": "/models",
        "readOnly": True,
    }
    env = env_of(service)
    assert env["HF_HUB_CACHE"]["value"] == "/models"
    assert env["HF_HUB_OFFLINE"]["value"] == "1"
    assert volume(spec, "model-cache")["persistentVolumeClaim"] == {
        "claimName": "atalaya-model-cache",
        "readOnly": True,
    }
    # Offline: no way out to the Hub from the serving pods.
    assert HUB_EGRESS not in policy(objects, name)["spec"]["egress"]


def test_only_the_job_reaches_the_hub() -> None:
    objects = rendered("gpu")
    cache = policy(objects, "model-cache")
    assert cache["spec"]["ingress"] == []
    assert cache["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "model-cache"
    )
    dns, hub = cache["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert hub == HUB_EGRESS
    for name in ("gateway", "guardrail", "generation", "embedding", "memory"):
        assert HUB_EGRESS not in policy(objects, name)["spec"]["egress"], name


def test_a_new_model_list_is_a_new_job() -> None:
    (before,) = of_kind(rendered("gpu"), "Job")
    (same,) = of_kind(render(profile_values("gpu")), "Job")
    assert same["metadata"]["name"] == before["metadata"]["name"]
    values = merge(
        profile_values("gpu"),
        {"services": {"guardrail": {"cachedModels": [GUARD, "meta-llama/Llama-Guard-3-8B"]}}},
    )
    (after,) = of_kind(render(values), "Job")
    assert after["metadata"]["name"] != before["metadata"]["name"]
    assert after["metadata"]["name"].startswith("atalaya-model-cache-")
    assert after["spec"]["template"]["spec"]["containers"][0]["command"][4:] == [
        LLAMA,
        GUARD,
        "meta-llama/Llama-Guard-3-8B",
    ]


def test_an_existing_claim_is_used_as_is() -> None:
    values = merge(profile_values("gpu"), {"modelCache": {"volume": {"existingClaim": "weights"}}})
    objects = render(values)
    assert of_kind(objects, "PersistentVolumeClaim") == []
    (job,) = of_kind(objects, "Job")
    assert volume(spec_of(job), "model-cache")["persistentVolumeClaim"]["claimName"] == "weights"


def test_notes_say_where_the_weights_come_from() -> None:
    text = notes(profile_values("gpu"))
    assert f"Model cache: {LLAMA}, {GUARD}." in text
    assert "app.kubernetes.io/component=model-cache" in text
    assert "model-cache-fill" in notes(profile_values("gpu-node-cache"))
    assert "Model cache" not in notes({})


# --- a directory per node, filled by each pod ---------------------------------------------------


def test_node_cache_is_filled_by_each_pod() -> None:
    objects = rendered("gpu-node-cache")
    assert of_kind(objects, "Job") == []
    assert of_kind(objects, "PersistentVolumeClaim") == []
    assert "model-cache" not in {component(p) for p in of_kind(objects, "NetworkPolicy")}
    spec = spec_of(deployment(objects, "generation"))
    fill = spec["initContainers"][0]
    assert fill["name"] == "model-cache-fill"
    assert fill["command"][3:] == ["fill", LLAMA]
    assert "secretKeyRef" in env_of(fill)["HF_TOKEN"]["valueFrom"]
    assert "readOnly" not in mount(fill, "model-cache")
    assert volume(spec, "model-cache")["hostPath"] == {
        "path": "/var/lib/atalaya/models",
        "type": "Directory",
    }
    (service,) = spec["containers"]
    assert mount(service, "model-cache")["readOnly"] is True
    assert "HF_TOKEN" not in env_of(service)
    # The pod downloads, so the pod reaches the Hub.
    assert HUB_EGRESS in policy(objects, "generation")["spec"]["egress"]
    assert HUB_EGRESS not in policy(objects, "gateway")["spec"]["egress"]


def test_no_cache_objects_unless_asked() -> None:
    for profile in ("default", "cpu", "dev", "gpu-kserve"):
        objects = rendered(profile)
        assert of_kind(objects, "Job") == []
        assert of_kind(objects, "PersistentVolumeClaim") == []
        for d in of_kind(objects, "Deployment"):
            assert "model-cache" not in {v["name"] for v in spec_of(d)["volumes"]}, profile


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # generation loads Llama 3.1 offline from the cache, which would not hold it
        (
            {"services": {"generation": {"cachedModels": ["meta-llama/Llama-3.2-1B"]}}},
            "would not hold meta-llama/Llama-3.1-8B-Instruct",
        ),
        (
            {"services": {"generation": {"cachedModels": []}, "guardrail": {"cachedModels": []}}},
            "no service lists cachedModels",
        ),
        ({"modelCache": {"volume": {"type": "hostPath"}}}, "use fill.mode initContainer"),
        ({"modelCache": {"fill": {"egress": []}}}, r"modelCache\.fill\.egress"),
    ],
)
def test_a_cache_that_cannot_work_is_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(merge(profile_values("gpu"), values))


def test_schema_rejects_a_malformed_model_name() -> None:
    with pytest.raises(helm.HelmValuesError):
        render({"services": {"generation": {"cachedModels": ["not a repo"]}}})


# --- the fill/wait program, run as rendered ------------------------------------------------------


def rendered_program() -> str:
    (job,) = of_kind(rendered("gpu"), "Job")
    command = spec_of(job)["containers"][0]["command"]
    assert command[:2] == ["python3", "-c"]
    return str(command[2])


def hub_snapshot(cache: Path, repo: str, commit: str = "a" * 40) -> Path:
    """A model as huggingface_hub lays it out in a hub cache: refs/main -> snapshots/<commit>."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    return snapshot


def run(cache: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(cache.parent / "home"),
        "HF_HUB_OFFLINE": "1",  # nothing leaves this machine
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", rendered_program(), *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )


def marker(cache: Path, repo: str) -> Path:
    return cache / ".atalaya-complete" / f"{repo.replace('/', '--')}@main"


def test_fill_marks_each_model_complete_and_wait_finds_them(tmp_path: Path) -> None:
    cache = tmp_path / "models"
    snapshots = {repo: hub_snapshot(cache, repo) for repo in (LLAMA, GUARD)}
    filled = run(cache, "fill", LLAMA, GUARD)
    assert filled.returncode == 0, filled.stderr
    for repo, snapshot in snapshots.items():
        assert marker(cache, repo).read_text().strip() == str(snapshot)
    assert not list((cache / ".atalaya-complete").glob("*.partial"))
    again = run(cache, "fill", LLAMA)
    assert again.returncode == 0
    assert f"{LLAMA} is cached" in again.stdout
    waited = run(cache, "wait", LLAMA, GUARD, ATALAYA_MODEL_CACHE_WAIT_S="0")
    assert waited.returncode == 0, waited.stderr


def test_a_failed_download_leaves_no_mark(tmp_path: Path) -> None:
    cache = tmp_path / "models"
    hub_snapshot(cache, GUARD)
    failed = run(cache, "fill", GUARD, LLAMA)  # Llama is not cached, and offline
    assert failed.returncode != 0
    assert marker(cache, GUARD).exists()
    assert not marker(cache, LLAMA).exists()
    waited = run(cache, "wait", GUARD, LLAMA, ATALAYA_MODEL_CACHE_WAIT_S="0")
    assert waited.returncode == 1
    assert f"still missing {LLAMA}" in waited.stderr


def test_wait_returns_once_the_filler_is_done(tmp_path: Path) -> None:
    cache = tmp_path / "models"
    hub_snapshot(cache, LLAMA)
    environment = {
        **os.environ,
        "HF_HUB_CACHE": str(cache),
        "ATALAYA_MODEL_CACHE_WAIT_S": "120",
        "ATALAYA_MODEL_CACHE_POLL_S": "0.05",
    }
    waiting = subprocess.Popen(
        [sys.executable, "-c", rendered_program(), "wait", LLAMA],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    try:
        assert waiting.stdout is not None
        assert "waiting for" in waiting.stdout.readline()  # it has looked, and found nothing
        assert run(cache, "fill", LLAMA).returncode == 0
        assert waiting.wait(timeout=60) == 0
    finally:
        waiting.kill()
        waiting.wait()


def test_usage_errors(tmp_path: Path) -> None:
    assert run(tmp_path, "fill").returncode == 2
    assert run(tmp_path, "download", LLAMA).returncode == 2
