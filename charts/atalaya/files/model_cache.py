"""The model cache of the Atalaya chart: a Hugging Face hub cache on a volume (HF_HUB_CACHE),
filled once and then mounted read-only by the pods that load the models.

    python3 -c "<this file>" fill <repo>[@<revision>] ...   download what is missing
    python3 -c "<this file>" wait <repo>[@<revision>] ...   return once everything is there

`fill` downloads each model with huggingface_hub (the token from HF_TOKEN, files matching
ATALAYA_MODEL_CACHE_IGNORE skipped), then writes a marker for it. `wait` polls for the markers
and fails after ATALAYA_MODEL_CACHE_WAIT_S seconds (the kubelet then restarts it). A marker,
not the snapshot folder, says a model is complete: huggingface_hub links files into a
snapshot as they arrive, so a folder can be partial. Markers are written by rename, so a
reader never sees half of one.

The chart embeds this file in the model cache Job's and init containers' command
(templates/modelcache.yaml, _helpers.tpl): the images need Python (and, to fill,
huggingface_hub), no shell. Standard library only for `wait`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

MARKERS = ".atalaya-complete"


def marker(cache: Path, spec: str) -> Path:
    """The marker file of one model: <cache>/.atalaya-complete/<org>--<name>@<revision>."""
    repo, _, revision = spec.partition("@")
    return cache / MARKERS / f"{repo.replace('/', '--')}@{revision or 'main'}"


def fill(cache: Path, specs: list[str]) -> None:
    from huggingface_hub import snapshot_download

    ignore = [p for p in os.environ.get("ATALAYA_MODEL_CACHE_IGNORE", "").split(",") if p]
    (cache / MARKERS).mkdir(parents=True, exist_ok=True)
    for spec in specs:
        done = marker(cache, spec)
        if done.exists():
            print(f"model cache: {spec} is cached", flush=True)
            continue
        repo, _, revision = spec.partition("@")
        print(f"model cache: downloading {spec}", flush=True)
        path = snapshot_download(
            repo, revision=revision or None, cache_dir=cache, ignore_patterns=ignore or None
        )
        partial = done.with_name(done.name + ".partial")
        partial.write_text(f"{path}\n")
        partial.replace(done)
        print(f"model cache: {spec} is complete", flush=True)


def wait(cache: Path, specs: list[str]) -> int:
    deadline = time.monotonic() + float(os.environ.get("ATALAYA_MODEL_CACHE_WAIT_S", "3600"))
    poll = float(os.environ.get("ATALAYA_MODEL_CACHE_POLL_S", "10"))
    while True:
        missing = [spec for spec in specs if not marker(cache, spec).exists()]
        if not missing:
            print("model cache: every model is cached", flush=True)
            return 0
        if time.monotonic() >= deadline:
            print(f"model cache: still missing {', '.join(missing)}", file=sys.stderr, flush=True)
            return 1
        print(f"model cache: waiting for {', '.join(missing)}", flush=True)
        time.sleep(poll)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in {"fill", "wait"}:
        print("usage: model_cache.py fill|wait <repo>[@<revision>] ...", file=sys.stderr)
        return 2
    cache = Path(os.environ["HF_HUB_CACHE"])
    if argv[0] == "fill":
        fill(cache, argv[1:])
        return 0
    return wait(cache, argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
