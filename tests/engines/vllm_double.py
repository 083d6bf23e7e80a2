"""A test double of vLLM's in-process engine, honouring the subset of
`vllm.engine.protocol.EngineClient` that services.engines.vllm uses:

* `generate(prompt, sampling_params, request_id, *, lora_request=None)` is an async
  generator of `vllm.outputs.RequestOutput`-like objects. With
  `sampling_params.output_kind == DELTA` each output carries only the new text and
  token ids (vLLM's RequestOutputKind.DELTA); otherwise they are cumulative. It
  honours max_tokens ("length"), stop strings ("stop", stop_reason = the string,
  text cut before it) and ends with "stop" (stop_reason None, the EOS case) when
  its script runs out.
* `abort(request_id)` makes the running generator stop: it yields a final output
  with finish_reason "abort", as current vLLM does.
* `check_health()` returns None or raises; `get_tokenizer()` returns a tiny
  tokenizer with `encode` and `apply_chat_template`.

The double also stands in for `vllm.SamplingParams`, `LoRARequest` and
`RequestOutputKind.DELTA` through `double_bindings()`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.engines.vllm import MULTIPROC_METHOD_ENV, VllmBindings, VllmConfig

BOS = 1
DELTA = "DELTA"  # stands in for vllm.sampling_params.RequestOutputKind.DELTA


class TinyTokenizer:
    """One token per whitespace-separated word; BOS when special tokens are added."""

    def __init__(self) -> None:
        self.encode_calls: list[tuple[str, bool]] = []
        self.template_calls: list[tuple[list[dict[str, str]], dict[str, Any]]] = []

    def encode(self, text: str, **kwargs: Any) -> list[int]:
        add_special = bool(kwargs.get("add_special_tokens", True))
        self.encode_calls.append((text, add_special))
        ids = [100 + (sum(word.encode()) % 1000) for word in text.split()]
        return [BOS, *ids] if add_special else ids

    def apply_chat_template(self, conversation: Sequence[Mapping[str, str]], **kwargs: Any) -> Any:
        messages = [dict(m) for m in conversation]
        self.template_calls.append((messages, dict(kwargs)))
        parts = ["<s>"]
        for m in messages:
            if m["role"] not in ("system", "user", "assistant"):
                raise ValueError(f"role {m['role']} is not supported by this template")
            parts.append(f"<|{m['role']}|> {m['content']} <|end|>")
        if kwargs.get("add_generation_prompt"):
            parts.append("<|assistant|>")
        text = " ".join(parts)
        if kwargs.get("tokenize", True):
            return self.encode(text, add_special_tokens=False)
        return text


@dataclass
class FakeSamplingParams:
    """Stands in for vllm.SamplingParams: keeps the keyword arguments."""

    kwargs: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["kwargs"][name]
        except KeyError:
            raise AttributeError(name) from None


def fake_sampling_params(**kwargs: Any) -> FakeSamplingParams:
    temperature = kwargs.get("temperature")
    if temperature is not None and temperature < 0:
        raise ValueError("temperature must be non-negative")
    return FakeSamplingParams(kwargs)


@dataclass(frozen=True)
class FakeLoRARequest:
    """Stands in for vllm.lora.request.LoRARequest."""

    lora_name: str
    lora_int_id: int
    lora_path: str


def double_bindings(*, delta: bool = True) -> VllmBindings:
    return VllmBindings(
        sampling_params=fake_sampling_params,
        lora_request=FakeLoRARequest,
        delta_output_kind=DELTA if delta else None,
    )


@dataclass
class FakeCompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class FakeRequestOutput:
    request_id: str
    prompt_token_ids: list[int] | None
    outputs: list[FakeCompletionOutput]
    finished: bool
    num_cached_tokens: int | None = None


@dataclass
class GenerateCall:
    prompt: Any
    sampling_params: Any
    request_id: str
    lora_request: Any


@dataclass
class VllmDouble:
    """Scripted engine. Each script piece is one token of output text."""

    script: Sequence[str] = ("Hello", ",", " world", "!")
    num_cached_tokens: int | None = 0
    #: Yield this many outputs, then wait until abort() or release().
    block_after: int | None = None
    #: Raise RuntimeError after this many outputs (an engine failure mid-stream).
    fail_after: int | None = None
    healthy: bool = True
    tokenizer: TinyTokenizer = field(default_factory=TinyTokenizer)
    calls: list[GenerateCall] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    shut_down: bool = False
    config: VllmConfig | None = None
    #: VLLM_WORKER_MULTIPROC_METHOD when the engine was built (None: unset).
    worker_method: str | None = None
    _stop: dict[str, asyncio.Event] = field(default_factory=dict)
    _blocked: dict[str, asyncio.Event] = field(default_factory=dict)

    # EngineClient subset

    def generate(
        self,
        prompt: Any,
        sampling_params: Any,
        request_id: str,
        *,
        lora_request: Any = None,
    ) -> AsyncIterator[FakeRequestOutput]:
        self.calls.append(GenerateCall(prompt, sampling_params, request_id, lora_request))
        return self._run(prompt, sampling_params, request_id)

    async def _run(
        self, prompt: Any, sampling_params: Any, request_id: str
    ) -> AsyncIterator[FakeRequestOutput]:
        stop_event = self._stop.setdefault(request_id, asyncio.Event())
        prompt_ids = list(prompt["prompt_token_ids"])
        delta = sampling_params.kwargs.get("output_kind") == DELTA
        max_tokens = int(sampling_params.kwargs.get("max_tokens", 16))
        stops: list[str] = list(sampling_params.kwargs.get("stop", []))
        text = ""
        token_ids: list[int] = []
        emitted_text = 0
        emitted_tokens = 0
        try:
            for i, piece in enumerate(self.script):
                if self.block_after is not None and i == self.block_after:
                    self._blocked.setdefault(request_id, asyncio.Event()).set()
                    await stop_event.wait()
                if self.fail_after is not None and i == self.fail_after:
                    raise RuntimeError("engine core died")
                if stop_event.is_set():
                    yield self._output(
                        request_id,
                        prompt_ids,
                        text="" if delta else text,
                        token_ids=[] if delta else token_ids,
                        finish="abort",
                    )
                    return
                text += piece
                token_ids.append(200 + i)
                finish: str | None = None
                stop_reason: str | None = None
                for s in stops:
                    at = text.find(s)
                    if at >= 0:
                        text, finish, stop_reason = text[:at], "stop", s
                        break
                if finish is None and len(token_ids) >= max_tokens:
                    finish = "length"
                if finish is None and i == len(self.script) - 1:
                    finish = "stop"  # end of sequence
                yield self._output(
                    request_id,
                    prompt_ids,
                    text=text[emitted_text:] if delta else text,
                    token_ids=token_ids[emitted_tokens:] if delta else token_ids,
                    finish=finish,
                    stop_reason=stop_reason,
                )
                emitted_text, emitted_tokens = len(text), len(token_ids)
                if finish is not None:
                    return
        finally:
            self.closed.append(request_id)

    def _output(
        self,
        request_id: str,
        prompt_ids: list[int],
        *,
        text: str,
        token_ids: list[int],
        finish: str | None,
        stop_reason: str | None = None,
    ) -> FakeRequestOutput:
        completion = FakeCompletionOutput(
            index=0,
            text=text,
            token_ids=list(token_ids),
            finish_reason=finish,
            stop_reason=stop_reason,
        )
        return FakeRequestOutput(
            request_id=request_id,
            prompt_token_ids=prompt_ids,
            outputs=[completion],
            finished=finish is not None,
            num_cached_tokens=self.num_cached_tokens,
        )

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        self._stop.setdefault(request_id, asyncio.Event()).set()

    async def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("engine core is dead")

    async def get_tokenizer(self) -> TinyTokenizer:
        return self.tokenizer

    def shutdown(self) -> None:
        self.shut_down = True

    # Test helpers

    async def wait_blocked(self, request_id: str) -> None:
        """Wait until `request_id` sits at block_after."""
        await self._blocked.setdefault(request_id, asyncio.Event()).wait()

    def factory(self, config: VllmConfig) -> VllmDouble:
        """An engine_factory for VllmEngine that returns this double. Like vLLM when
        it creates its worker processes, it reads VLLM_WORKER_MULTIPROC_METHOD."""
        self.config = config
        self.worker_method = os.environ.get(MULTIPROC_METHOD_ENV)
        return self
