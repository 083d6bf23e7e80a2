# syntax=docker/dockerfile:1.7
# The GPU image: generation (vLLM in-process) and the guardrail's Llama Guard engine (vLLM), on
# top of the vLLM release image, which brings CUDA, PyTorch and vLLM at versions that work
# together. One image serves both services: the chart sets the command
# (`python -m services.generation` or `python -m services.guardrail`).
# Build from the repository root: `docker buildx bake -f k8s/images/docker-bake.json gpu`.

ARG VLLM_IMAGE=vllm/vllm-openai:v0.11.0

FROM ${VLLM_IMAGE} AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos/python protos/python
COPY services services
# Only the project's own wheel: its dependencies are resolved in the final stage against the
# packages the vLLM image already has.
RUN python3 -m pip wheel --no-deps --wheel-dir /wheels .

FROM ${VLLM_IMAGE} AS runtime
COPY requirements/lock.txt /tmp/lock.txt
COPY --from=builder /wheels /wheels
COPY services /app/services
COPY protos/python /app/protos/python
# Pinned versions for what the image lacks; torch is never in the resolve (no extra asks for
# it), so vLLM keeps its own CUDA build. httpx: the OpenAI-compatible engine.
RUN python3 -m pip install --no-cache-dir -c /tmp/lock.txt /wheels/*.whl httpx \
    && rm -rf /wheels /tmp/lock.txt \
    && groupadd --system --gid 10001 atalaya \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp atalaya \
    && mkdir -p /cache && chown 10001:10001 /cache
ENV PYTHONPATH=/app:/app/protos/python \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["python3", "-m"]
CMD ["services.generation"]
