"""The llama_guard detector: the Llama Guard 3 protocol run on a model through
the shared engines (vLLM or llama.cpp with Llama-Guard-3-1B/8B; locally a
stand-in model, see `stand_in`).

Greedy decoding, a handful of output tokens. The policy prompt (task line and
categories) is the same for every request with the same role and categories, so
engines with prefix caching (vLLM's enable_prefix_caching, llama.cpp's prompt
cache) reuse it. Prompt formats:
  template  the official prompt with its special tokens, sent as a raw prompt
            (rendered by the model's own chat template when a tokenizer path is
            configured): what a Llama Guard model expects.
  chat      the protocol's user turn sent as a chat message, wrapped by the
            engine's own chat template: for a stand-in model, or an endpoint that
            only takes chat messages."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from typing import Literal

from services.common.chat import ChatMessage
from services.common.errors import InvalidArgument
from services.engines.base import (
    Delta,
    Engine,
    Finish,
    GenerationRequest,
    SamplingParams,
)
from services.guardrail.domain import Detector, DetectorName, DetectorResult, GuardInput, Verdict
from services.guardrail.protocol import (
    ALL_CODES,
    Assessment,
    TemplateRenderer,
    parse_output,
    render_body,
    render_prompt,
)

log = logging.getLogger(__name__)

PromptFormat = Literal["template", "chat"]


class LlamaGuardDetector(Detector):
    name = DetectorName.LLAMA_GUARD

    def __init__(
        self,
        engine: Engine,
        *,
        prompt_format: PromptFormat,
        stand_in: bool,
        max_tokens: int = 20,
        max_prompt_tokens: int = 4096,
        renderer: TemplateRenderer | None = None,
    ) -> None:
        self._engine = engine
        self._format = prompt_format
        self._stand_in = stand_in
        self._max_tokens = max_tokens
        self._max_prompt_tokens = max_prompt_tokens
        self._renderer = renderer

    @property
    def model(self) -> str:
        return self._engine.info.name

    @property
    def stand_in(self) -> bool:
        return self._stand_in

    def covers(self) -> frozenset[str]:
        return ALL_CODES

    async def start(self) -> None:
        await self._engine.start()
        if self._stand_in:
            log.warning(
                "llama_guard runs on a stand-in and not a trained guard: its verdicts "
                "demonstrate the Llama Guard protocol, they do not moderate",
                extra={"model": self.model},
            )

    async def stop(self) -> None:
        await self._engine.stop()

    async def ready(self) -> bool:
        return await self._engine.check_health()

    def queue_depth(self) -> int:
        return self._engine.queue_depth()

    def request(self, guard_input: GuardInput) -> GenerationRequest:
        sampling = SamplingParams(temperature=0.0, max_tokens=self._max_tokens)
        # The engine's request id is unique per check, the caller's id its prefix (for
        # the logs): two callers that send the same request id must not collide in it.
        engine_id = f"{guard_input.request_id}:{uuid.uuid4().hex[:12]}"
        turns, role, codes = guard_input.turns, guard_input.role, guard_input.codes
        if self._format == "chat":
            body = render_body(turns, role, codes)
            return GenerationRequest(
                engine_id, messages=[ChatMessage("user", body)], sampling=sampling
            )
        if self._renderer is not None:
            prompt = self._renderer.render(turns, role, codes)
        else:
            prompt = render_prompt(turns, role, codes)
        return GenerationRequest(engine_id, prompt=prompt, sampling=sampling)

    async def check(self, guard_input: GuardInput) -> None:
        tokens = await self._engine.count_tokens(self.request(guard_input))
        if tokens > self._max_prompt_tokens:
            raise InvalidArgument(
                f"the Llama Guard prompt takes {tokens} tokens, over the limit of "
                f"{self._max_prompt_tokens}; send a shorter conversation"
            )

    async def classify(self, guard_input: GuardInput) -> DetectorResult:
        text = ""
        finish: Finish | None = None
        async for event in self._engine.generate(self.request(guard_input)):
            if isinstance(event, Delta):
                text += event.text
            else:
                finish = event
        parsed = parse_output(text, guard_input.codes)
        result = DetectorResult(
            self.name,
            Verdict.SAFE,
            model=self.model,
            stand_in=self._stand_in,
            input_tokens=finish.input_tokens if finish else 0,
            output_tokens=finish.output_tokens if finish else 0,
        )
        if parsed.assessment is Assessment.UNPARSEABLE:
            reason = f"output outside the Llama Guard protocol: {parsed.reason}"
            return replace(result, verdict=Verdict.UNPARSEABLE, error=reason)
        if parsed.assessment is Assessment.UNSAFE:
            return replace(result, verdict=Verdict.UNSAFE, codes=parsed.codes)
        return result
