# syntax=docker/dockerfile:1.7@sha256:a57df69d0ea827fb7266491f2813635de6f17269be881f696fbfdf2d83dda33e
# The ray-gpu image: Ray Serve, vLLM and the project, for KubeRay (k8s/kuberay/rayservice.yaml
# runs it on the head and on both worker groups; all five services are Serve applications, so
# it carries the embedding and memory store extras too). Build from the repository root:
# `docker buildx bake -f k8s/images/docker-bake.json ray-gpu`.
#
# The same package set as the GPU image (k8s/images/gpu.Dockerfile) plus Ray: every version
# from requirements/gpu.txt, whose derivation resolves both images' extras together
# (tests/charts/pip_resolve.py), so Ray, vLLM and the lock agree. KubeRay sets the command
# (`ray start ...` under bash) and its default probes run `wget ... | grep success`, so the
# image has bash (Debian's), wget and no entrypoint of its own. Unlike the GPU image it may
# reach the Hugging Face Hub (the RayService passes HF_TOKEN and loads the models at start);
# set HF_HUB_OFFLINE=1 in the RayService where the weights are on a mounted cache.

# python:3.11.14-slim-bookworm, pinned by the digest of its multi-architecture index.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS runtime
ARG EXTRAS=gpu,ray,embedding,memory-store
# gcc and libc headers: Triton compiles its CUDA launcher at the first kernel; wget: KubeRay's
# readiness and liveness probes.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev wget \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 atalaya \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp atalaya \
    && mkdir -p /cache && chown 10001:10001 /cache
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements/gpu.txt requirements/gpu.txt
COPY pyproject.toml pyproject.toml
COPY k8s/images/requirements.py k8s/images/requirements.py
# Dependencies before the source; `pip check` fails the build on any broken requirement, and
# the imports prove that Ray Serve, vLLM's GPU model runner and its numba path load together.
RUN --mount=type=cache,target=/root/.cache/pip \
    python k8s/images/requirements.py "${EXTRAS}" > /tmp/requirements.txt \
    && pip install -c requirements/gpu.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && pip check \
    && python -c "import numba, ray.serve, vllm.v1.worker.gpu_model_runner, vllm.v1.spec_decode.ngram_proposer"
ENV PYTHONPATH=/app:/app/protos/python \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    TRITON_CACHE_DIR=/cache/triton \
    VLLM_NO_USAGE_STATS=1 \
    RAY_USAGE_STATS_ENABLED=0
COPY protos/python /app/protos/python
COPY services /app/services
WORKDIR /tmp
USER 10001:10001
