"""Generation service: streams completions from one model behind the shared engine
interface (services.engines): llama.cpp on CPU, vLLM on GPU, any OpenAI-compatible
endpoint, or the load-test simulator."""
