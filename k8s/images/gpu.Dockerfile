# syntax=docker/dockerfile:1.7@sha256:a57df69d0ea827fb7266491f2813635de6f17269be881f696fbfdf2d83dda33e
# The GPU image: generation (vLLM in-process) and the guardrail's Llama Guard engine (vLLM).
# One image serves both services: the chart sets the command (`services.generation` or
# `services.guardrail`). Build from the repository root:
# `docker buildx bake -f k8s/images/docker-bake.json gpu`.
#
# vLLM comes from its wheel, with every package of the image pinned by requirements/gpu.txt:
# the resolve of vLLM 0.30.0 and the project's `gpu` extra, derived from requirements/lock.txt
# (`python -m tests.charts.pip_resolve --update`). It differs from the lock only where vLLM's
# requirements force it (torch's CUDA build for the lock's CPU one, fastapi below 0.137, numpy
# below 2.4 for mistral-common), so the image runs the versions the test suite ran
# elsewhere. tests/charts/test_gpu_dependencies.py resolves that set with pip without
# installing it. The host provides the NVIDIA driver (the device plugin mounts it); CUDA's
# user-space libraries come with the torch and nvidia-* wheels.

# python:3.11.14-slim-bookworm, pinned by the digest of its multi-architecture index.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS runtime
ARG EXTRAS=gpu
# gcc and libc headers: Triton compiles its small CUDA launcher with the system C compiler
# the first time a kernel runs, inside the pod.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev \
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
# Dependencies before the source; `pip check` fails the build on any requirement the set
# breaks, and the imports prove that vLLM's GPU model runner and its numba path (the n-gram
# proposer) load against the NumPy installed (no GPU is needed to import them).
RUN --mount=type=cache,target=/root/.cache/pip \
    python k8s/images/requirements.py "${EXTRAS}" > /tmp/requirements.txt \
    && pip install -c requirements/gpu.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && pip check \
    && python -c "import numba, vllm.v1.worker.gpu_model_runner, vllm.v1.spec_decode.ngram_proposer"
ENV PYTHONPATH=/app:/app/protos/python \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    HF_HUB_OFFLINE=1 \
    TRITON_CACHE_DIR=/cache/triton \
    VLLM_NO_USAGE_STATS=1
COPY protos/python /app/protos/python
COPY services /app/services
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["python3", "-m"]
CMD ["services.generation"]
