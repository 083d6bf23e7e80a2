"""vLLM engine adapter: one model served in-process by vLLM (GPU).

A thin adapter over vLLM's `vllm.engine.protocol.EngineClient`, whose in-process
implementation is `vllm.v1.engine.async_llm.AsyncLLM` (built with
`AsyncLLM.from_engine_args(vllm.engine.arg_utils.AsyncEngineArgs(...))`).

vLLM is imported lazily (in `start`, through the default factory and
`load_vllm_bindings`), so this module imports on machines without vllm or a GPU.
It is typed against small Protocols that mirror the subset of vLLM's interface
it uses (`EngineClientLike`, `RequestOutputLike`, `CompletionOutputLike`,
`TokenizerLike`); tests drive it with a double honouring those Protocols.

How a request runs:

* The input is tokenized here, with the engine's own tokenizer
  (`EngineClient.get_tokenizer()`): a conversation is rendered with the chat
  template (`apply_chat_template(..., add_generation_prompt=True,
  tokenize=False)`) and encoded without adding special tokens again (the
  template carries them); a raw prompt is encoded with them. The token ids go to
  the engine as a `vllm.inputs.TokensPrompt` (`{"prompt_token_ids": [...]}`), so
  the prompt length checked against `max_model_len` is exactly what vLLM runs.
* Sampling parameters become `vllm.SamplingParams` through
  `to_vllm_sampling_kwargs` (only the fields the caller set; vLLM's defaults
  otherwise), with `output_kind=RequestOutputKind.DELTA` when the installed vLLM
  has it. Without it (older vLLM) outputs are cumulative and the adapter
  computes the deltas itself.
* A request naming a LoRA adapter gets a `vllm.lora.request.LoRARequest(name,
  int_id, path)`; ids are fixed per adapter (1.. in name order; vLLM reserves 0).
* Closing the event stream early (consumer cancelled or `aclose()`) closes
  vLLM's generator and calls `EngineClient.abort(request_id)` in a `finally`, so
  the sequence leaves the batch at once.

Worker processes: vLLM runs its engine core (and, with tensor parallelism, its GPU
workers) in child processes. By the time the engine starts, this process already
runs the gRPC server's and OpenTelemetry's threads, and forking a process with
threads copies locks that those threads may hold; so `start` sets
VLLM_WORKER_MULTIPROC_METHOD=spawn (vLLM reads it when it creates the processes)
unless the environment already names a method.

Queue signals are tracked locally (vLLM's scheduler statistics are not part of
EngineClient): a request is *queued* from submission until its first output
(it waits for a batch slot and then for prefill), and *in flight* from its first
output until it ends. Admission is bounded: at most `max_num_seqs +
max_queued_requests` requests at once, beyond which `generate` raises
ResourceExhausted. For the same reason `Finish.queue_s` is 0 and
`Finish.prefill_s` is the time from submission to the first output (queue wait
plus prefill).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from services.common.errors import (
    AtalayaError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from services.engines.base import (
    SAMPLING_FIELDS,
    Delta,
    Engine,
    Event,
    Finish,
    GenerationRequest,
    ModelInfo,
    SamplingParams,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")


# --- The subset of vLLM's interface this adapter uses -----------------------------


class TokenizerLike(Protocol):
    """The tokenizer `EngineClient.get_tokenizer()` returns
    (`vllm.tokenizers.TokenizerLike`, a Hugging Face tokenizer in practice)."""

    def encode(self, text: str, **kwargs: Any) -> list[int]: ...

    def apply_chat_template(self, conversation: Sequence[Mapping[str, str]], **kwargs: Any) -> Any:
        """Called with tokenize=False and add_generation_prompt=True: returns str."""
        ...


class CompletionOutputLike(Protocol):
    """`vllm.outputs.CompletionOutput`: one sequence of a request."""

    @property
    def text(self) -> str: ...

    @property
    def token_ids(self) -> Sequence[int]: ...

    @property
    def finish_reason(self) -> str | None:
        """ "stop", "length" or "abort" (newer vLLM also "error"); None while running."""
        ...

    @property
    def stop_reason(self) -> int | str | None:
        """The stop string or stop token id that ended the sequence, else None."""
        ...


class RequestOutputLike(Protocol):
    """`vllm.outputs.RequestOutput`. Its `num_cached_tokens` (prefix-cache hits) is
    read with getattr: older vLLM releases lack it."""

    @property
    def request_id(self) -> str: ...

    @property
    def prompt_token_ids(self) -> Sequence[int] | None: ...

    @property
    def outputs(self) -> Sequence[CompletionOutputLike]: ...

    @property
    def finished(self) -> bool: ...


class EngineClientLike(Protocol):
    """`vllm.engine.protocol.EngineClient` (implemented by
    `vllm.v1.engine.async_llm.AsyncLLM`). `AsyncLLM.shutdown()` is used when the
    object has it (it is not part of EngineClient)."""

    def generate(
        self,
        prompt: Any,
        sampling_params: Any,
        request_id: str,
        *,
        lora_request: Any = None,
    ) -> AsyncIterator[RequestOutputLike]: ...

    async def abort(self, request_id: str) -> None: ...

    async def check_health(self) -> None:
        """Returns None when healthy; raises otherwise."""
        ...

    async def get_tokenizer(self) -> TokenizerLike: ...


# --- Configuration ----------------------------------------------------------------


@dataclass(frozen=True)
class VllmConfig:
    """Settings of one vLLM-served model. The engine fields map one to one onto
    `vllm.engine.arg_utils.AsyncEngineArgs` (see `engine_args_kwargs`)."""

    model: str  # Hugging Face id or local directory of the weights
    served_name: str = ""  # the name clients use; defaults to `model`
    dtype: str = "auto"  # "auto", "float16", "bfloat16", "float32"
    quantization: str | None = None  # None, "awq", "gptq", "fp8", ...
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9
    max_model_len: int = 4096  # the context window
    max_num_seqs: int = 64  # sequences batched at once
    tensor_parallel_size: int = 1
    enable_lora: bool = False
    max_loras: int = 1  # adapters resident on the GPU at once
    max_lora_rank: int = 16
    #: LoRA adapter name -> local directory of its weights. Needs enable_lora.
    lora_adapters: Mapping[str, str] = field(default_factory=dict)
    default_max_tokens: int = 512
    #: Requests admitted beyond max_num_seqs before ResourceExhausted.
    max_queued_requests: int = 64
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("vllm: model is required")
        if self.lora_adapters and not self.enable_lora:
            raise ValueError("vllm: lora_adapters are set but enable_lora is false")
        if self.max_model_len < 2:
            raise ValueError("vllm: max_model_len must be at least 2")
        if self.default_max_tokens < 1:
            raise ValueError("vllm: default_max_tokens must be at least 1")

    @property
    def name(self) -> str:
        return self.served_name or self.model


def engine_args_kwargs(config: VllmConfig) -> dict[str, Any]:
    """Keyword arguments for `vllm.engine.arg_utils.AsyncEngineArgs`."""
    kwargs: dict[str, Any] = {
        "model": config.model,
        "served_model_name": [config.name],
        "dtype": config.dtype,
        "quantization": config.quantization,
        "enable_prefix_caching": config.enable_prefix_caching,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "max_model_len": config.max_model_len,
        "max_num_seqs": config.max_num_seqs,
        "tensor_parallel_size": config.tensor_parallel_size,
        "trust_remote_code": config.trust_remote_code,
        "enable_lora": config.enable_lora,
    }
    if config.enable_lora:
        kwargs["max_loras"] = config.max_loras
        kwargs["max_lora_rank"] = config.max_lora_rank
    return kwargs


# --- Lazily imported vLLM pieces ----------------------------------------------------


@dataclass(frozen=True)
class VllmBindings:
    """The vLLM constructors the adapter calls per request; injectable for tests."""

    #: `vllm.SamplingParams` (called with keyword arguments).
    sampling_params: Callable[..., Any]
    #: `vllm.lora.request.LoRARequest` (called as (lora_name, lora_int_id, lora_path)).
    lora_request: Callable[[str, int, str], Any]
    #: `vllm.sampling_params.RequestOutputKind.DELTA`; None: outputs are cumulative.
    delta_output_kind: Any = None


def load_vllm_bindings() -> VllmBindings:
    """Import vLLM's request types. Raises ImportError without vllm."""
    sampling_mod = importlib.import_module("vllm.sampling_params")
    lora_mod = importlib.import_module("vllm.lora.request")
    output_kind = getattr(sampling_mod, "RequestOutputKind", None)
    return VllmBindings(
        sampling_params=sampling_mod.SamplingParams,
        lora_request=lora_mod.LoRARequest,
        delta_output_kind=getattr(output_kind, "DELTA", None),
    )


def build_async_llm(config: VllmConfig) -> EngineClientLike:
    """The default engine factory: `AsyncLLM.from_engine_args(AsyncEngineArgs(...))`.
    Blocking (loads the weights); `VllmEngine.start` runs it in a thread, which
    AsyncLLM supports (it starts its output handler on the first request)."""
    arg_utils = importlib.import_module("vllm.engine.arg_utils")
    try:
        engine_cls: Any = importlib.import_module("vllm.v1.engine.async_llm").AsyncLLM
    except ImportError:  # older layouts export it at the top level
        engine_cls = importlib.import_module("vllm").AsyncLLMEngine
    engine_args = arg_utils.AsyncEngineArgs(**engine_args_kwargs(config))
    engine: EngineClientLike = engine_cls.from_engine_args(engine_args)
    return engine


EngineFactory = Callable[[VllmConfig], EngineClientLike]

#: vLLM's setting for how it starts its worker processes ("fork" or "spawn").
MULTIPROC_METHOD_ENV = "VLLM_WORKER_MULTIPROC_METHOD"
#: What this adapter sets unless the environment says otherwise (see the module doc).
MULTIPROC_METHOD = "spawn"


def use_spawned_workers() -> str:
    """Make vLLM spawn its worker processes (never fork this threaded process),
    unless VLLM_WORKER_MULTIPROC_METHOD is set already; the method in effect."""
    method = os.environ.setdefault(MULTIPROC_METHOD_ENV, MULTIPROC_METHOD)
    if method != MULTIPROC_METHOD:
        log.warning(
            "vllm: worker processes are not spawned",
            extra={"env": MULTIPROC_METHOD_ENV, "method": method},
        )
    return method


def to_vllm_sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams`: only the fields the caller set,
    so vLLM's defaults apply to the rest. `max_tokens` is resolved by the engine
    (it depends on the prompt length) and is included only when set here."""
    kwargs: dict[str, Any] = {}
    for name in SAMPLING_FIELDS:
        if name in ("stop", "ignore_eos"):
            continue
        value = getattr(params, name)
        if value is not None:
            kwargs[name] = value
    if params.stop:
        kwargs["stop"] = list(params.stop)
    if params.ignore_eos:
        kwargs["ignore_eos"] = True
    return kwargs


@dataclass(frozen=True)
class _Submission:
    prompt_ids: list[int]
    sampling_params: Any
    lora_request: Any
    delta_mode: bool


class _OutputReader:
    """Turns the successive CompletionOutputs of one request into Deltas. In delta
    mode each output carries only new text and token ids; otherwise they are
    cumulative and the difference is taken here. Tokens that came without text
    (the detokenizer holds back partial UTF-8) are counted on the next Delta."""

    def __init__(self, delta_mode: bool) -> None:
        self.delta_mode = delta_mode
        self.text_so_far = ""
        self.output_tokens = 0
        self.pending_tokens = 0

    def step(self, completion: CompletionOutputLike) -> Delta | None:
        if self.delta_mode:
            new_text = completion.text
            new_tokens = len(completion.token_ids)
        else:
            new_text = completion.text[len(self.text_so_far) :]
            self.text_so_far = completion.text
            new_tokens = len(completion.token_ids) - self.output_tokens
        self.output_tokens += new_tokens
        self.pending_tokens += new_tokens
        if not new_text:
            return None
        delta = Delta(text=new_text, token_count=self.pending_tokens)
        self.pending_tokens = 0
        return delta


def _finish(
    out: RequestOutputLike,
    reason: str | None,
    reader: _OutputReader,
    prompt_len: int,
    prefill_s: float,
) -> Finish:
    """The Finish for a request's final output (finish_reason "stop" or "length")."""
    if reason not in ("stop", "length"):
        log.error(
            "vllm: request ended with an unknown finish reason", extra={"finish_reason": reason}
        )
        raise Unavailable("the model engine failed")
    completion = out.outputs[0]
    stop_reason = completion.stop_reason
    prompt_token_ids = out.prompt_token_ids
    cached = getattr(out, "num_cached_tokens", None)
    return Finish(
        reason="length" if reason == "length" else "stop",
        input_tokens=len(prompt_token_ids) if prompt_token_ids else prompt_len,
        output_tokens=reader.output_tokens,
        stop_sequence=stop_reason if isinstance(stop_reason, str) else "",
        cached_input_tokens=cached if isinstance(cached, int) else 0,
        queue_s=0.0,
        prefill_s=prefill_s,
    )


# --- The engine -------------------------------------------------------------------


class VllmEngine(Engine):
    """An Engine over vLLM's EngineClient / AsyncLLM (in-process, GPU)."""

    def __init__(
        self,
        config: VllmConfig,
        *,
        engine_factory: EngineFactory = build_async_llm,
        bindings: VllmBindings | Callable[[], VllmBindings] = load_vllm_bindings,
    ) -> None:
        self._config = config
        self._factory = engine_factory
        self._bindings_source = bindings
        self._bindings: VllmBindings | None = None
        self._engine: EngineClientLike | None = None
        self._tokenizer: TokenizerLike | None = None
        # Hugging Face fast tokenizers must not be used from two threads at once.
        self._tokenize_pool: ThreadPoolExecutor | None = None
        self._lora_ids = {name: i for i, name in enumerate(sorted(config.lora_adapters), 1)}
        self._queued: set[str] = set()
        self._running: set[str] = set()
        self._aborted: set[str] = set()
        self._info = ModelInfo(
            name=config.name,
            backend="vllm",
            model_id=config.model,
            context_window=config.max_model_len,
            default_max_tokens=min(config.default_max_tokens, config.max_model_len - 1),
            adapters=tuple(sorted(config.lora_adapters)),
            max_concurrency=config.max_num_seqs,
            max_queued_requests=config.max_queued_requests,
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    # Lifecycle

    async def start(self) -> None:
        if self._engine is not None:
            return
        if isinstance(self._bindings_source, VllmBindings):
            self._bindings = self._bindings_source
        else:
            self._bindings = self._bindings_source()
        method = use_spawned_workers()
        log.info(
            "vllm: loading model",
            extra={
                "model": self._config.name,
                "model_id": self._config.model,
                "worker_method": method,
            },
        )
        engine = await asyncio.to_thread(self._factory, self._config)
        self._tokenizer = await engine.get_tokenizer()
        self._tokenize_pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"vllm-tok-{self._config.name}"
        )
        self._engine = engine
        log.info("vllm: model loaded", extra={"model": self._config.name})

    async def stop(self) -> None:
        engine, self._engine = self._engine, None
        if engine is None:
            return
        for request_id in list(self._queued | self._running):
            with contextlib.suppress(Exception):
                await engine.abort(request_id)
        shutdown = getattr(engine, "shutdown", None)
        if callable(shutdown):
            await asyncio.to_thread(shutdown)
        if self._tokenize_pool is not None:
            self._tokenize_pool.shutdown(wait=False)
            self._tokenize_pool = None
        self._tokenizer = None

    # Signals

    def queue_depth(self) -> int:
        """Requests submitted to vLLM that have not produced their first output."""
        return len(self._queued)

    def in_flight(self) -> int:
        """Requests that have produced output and have not ended."""
        return len(self._running)

    async def check_health(self) -> bool:
        engine = self._engine
        if engine is None:
            return False
        try:
            await engine.check_health()
        except Exception:
            log.warning(
                "vllm: health check failed", extra={"model": self._config.name}, exc_info=True
            )
            return False
        return True

    # Tokens

    async def count_tokens(self, request: GenerationRequest) -> int:
        return len(await self._prompt_token_ids(request))

    async def _prompt_token_ids(self, request: GenerationRequest) -> list[int]:
        tokenizer = self._tokenizer
        if tokenizer is None:
            raise Unavailable("model is not loaded")
        if request.messages is not None and request.prompt is not None:
            raise InvalidArgument("give either messages or a prompt, not both")
        if request.messages is not None:
            if not request.messages:
                raise InvalidArgument("messages must not be empty")
            conversation = [{"role": m.role, "content": m.content} for m in request.messages]
            try:
                text = await self._in_tokenizer_thread(
                    lambda: tokenizer.apply_chat_template(
                        conversation, add_generation_prompt=True, tokenize=False
                    )
                )
            except Exception as exc:
                log.info("vllm: chat template failed", extra={"error_type": type(exc).__name__})
                raise InvalidArgument(
                    "the model's chat template cannot render these messages"
                ) from None
            if not isinstance(text, str):
                raise Unavailable("the model's chat template did not produce text")
            # The template already holds BOS and the other special tokens.
            return await self._in_tokenizer_thread(
                lambda: list(tokenizer.encode(text, add_special_tokens=False))
            )
        if request.prompt is not None:
            prompt = request.prompt
            return await self._in_tokenizer_thread(
                lambda: list(tokenizer.encode(prompt, add_special_tokens=True))
            )
        raise InvalidArgument("give messages or a prompt")

    async def _in_tokenizer_thread(self, fn: Callable[[], _T]) -> _T:
        pool = self._tokenize_pool
        if pool is None:
            raise Unavailable("model is not loaded")
        return await asyncio.get_running_loop().run_in_executor(pool, fn)

    # Requests

    def _lora_request(self, adapter: str | None) -> Any:
        if not adapter:
            return None
        lora_id = self._lora_ids.get(adapter)
        if lora_id is None:
            raise InvalidArgument(f"unknown LoRA adapter {adapter!r} for model {self.info.name}")
        assert self._bindings is not None
        return self._bindings.lora_request(adapter, lora_id, self._config.lora_adapters[adapter])

    def _max_tokens(self, requested: int | None, prompt_len: int) -> int:
        limit = self._config.max_model_len
        if prompt_len >= limit:
            raise InvalidArgument(
                f"the prompt takes {prompt_len} tokens; the context window of "
                f"{self.info.name} is {limit}"
            )
        room = limit - prompt_len
        if requested is None:
            return min(self.info.default_max_tokens, room)
        if requested <= 0:
            raise InvalidArgument("max_tokens must be at least 1")
        if requested > room:
            raise InvalidArgument(
                f"the prompt ({prompt_len} tokens) plus max_tokens ({requested}) exceeds "
                f"the context window of {self.info.name} ({limit})"
            )
        return requested

    async def _submit_args(self, request: GenerationRequest) -> _Submission:
        """Validate the request and build what `EngineClient.generate` takes."""
        bindings = self._bindings
        if self._engine is None or bindings is None:
            raise Unavailable("model is not loaded")
        if request.request_id in self._queued or request.request_id in self._running:
            raise InvalidArgument("a request with this id is already running")
        lora_request = self._lora_request(request.adapter)
        prompt_ids = await self._prompt_token_ids(request)
        kwargs = to_vllm_sampling_kwargs(request.sampling)
        kwargs["max_tokens"] = self._max_tokens(request.sampling.max_tokens, len(prompt_ids))
        delta_mode = bindings.delta_output_kind is not None
        if delta_mode:
            kwargs["output_kind"] = bindings.delta_output_kind
        try:
            sampling_params = bindings.sampling_params(**kwargs)
        except ValueError as exc:  # vLLM validates ranges in SamplingParams
            log.info("vllm: sampling params rejected", extra={"reason": str(exc)})
            raise InvalidArgument("sampling parameters out of range for this model") from None
        limit = self._config.max_num_seqs + self._config.max_queued_requests
        if len(self._queued) + len(self._running) >= limit:
            raise ResourceExhausted(
                f"model {self.info.name} already holds {limit} requests; retry later"
            )
        return _Submission(prompt_ids, sampling_params, lora_request, delta_mode)

    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        return self._generate(request)

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        submission = await self._submit_args(request)
        engine = self._engine
        assert engine is not None
        request_id = request.request_id
        reader = _OutputReader(submission.delta_mode)
        submitted = time.monotonic()
        prefill_s = 0.0
        self._queued.add(request_id)
        self._aborted.discard(request_id)
        stream = engine.generate(
            {"prompt_token_ids": submission.prompt_ids},
            submission.sampling_params,
            request_id,
            lora_request=submission.lora_request,
        )
        finished = False
        try:
            async for out in stream:
                if request_id in self._queued:
                    self._queued.discard(request_id)
                    self._running.add(request_id)
                    prefill_s = time.monotonic() - submitted
                completion = out.outputs[0] if out.outputs else None
                if completion is not None and (delta := reader.step(completion)) is not None:
                    yield delta
                reason = completion.finish_reason if completion is not None else None
                if reason is None and not out.finished:
                    continue
                finished = True
                if reason == "abort" or request_id in self._aborted:
                    return  # aborted from outside: the stream ends without Finish
                yield _finish(out, reason, reader, len(submission.prompt_ids), prefill_s)
                return
            # vLLM's generator ended without a final output: aborted from outside.
            finished = True
            if request_id not in self._aborted:
                log.error("vllm: request stream ended without a final output")
                raise Unavailable("the model engine failed")
        except AtalayaError:
            raise
        except Exception:
            if request_id in self._aborted:
                finished = True
                return
            log.exception("vllm: request failed in the engine")
            raise Unavailable("the model engine failed") from None
        finally:
            self._queued.discard(request_id)
            self._running.discard(request_id)
            self._aborted.discard(request_id)
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            if not finished:
                with contextlib.suppress(Exception):
                    await engine.abort(request_id)

    async def abort(self, request_id: str) -> None:
        engine = self._engine
        if engine is None:
            return
        if request_id not in self._queued and request_id not in self._running:
            return
        self._aborted.add(request_id)
        await engine.abort(request_id)
