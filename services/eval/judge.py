"""The LLM judge: a versioned prompt (judge.toml) sent to the generation service
(any backend), and a strict parser for its reply.

The reply must be one JSON object {"score": <number in [0, 1]>, "explanation":
"<text>"} and nothing else (surrounding whitespace and one enclosing ``` fence
are tolerated). An output that does not parse is retried once, with the reason;
a second failure is recorded as a judge_error and no score is guessed."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from atalaya.common.v1 import common_pb2
from atalaya.generation.v1 import generation_pb2 as gen
from atalaya.generation.v1 import generation_pb2_grpc

from services.common import topology
from services.common.channel import create_channel
from services.common.prompts import load_prompt, require_placeholders
from services.common.settings import ChannelSettings
from services.common.vocab import ROLE
from services.eval.scorers import JUDGE, Score

DEFAULT_JUDGE_PROMPT = Path(__file__).resolve().parent / "judge.toml"
DEFAULT_GENERATION_TARGET = topology.target("generation")
JUDGE_ERROR = "judge_error"
#: Judge outputs kept in a record, cut to this many characters.
RAW_CHARS = 400
_FENCE_RE = re.compile(r"\A```(?:json)?\s*\n?(.*?)\n?```\Z", re.DOTALL)


class JudgeParseError(ValueError):
    """The judge's output is not the required JSON object; the message says why."""


@dataclass(frozen=True)
class JudgeVerdict:
    score: float
    explanation: str


def parse_judge_output(text: str) -> JudgeVerdict:
    """The judge's score and explanation; JudgeParseError for anything else than
    exactly {"score": <0..1>, "explanation": "<non-empty text>"}."""
    body = text.strip()
    fenced = _FENCE_RE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    if not body:
        raise JudgeParseError("empty output")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise JudgeParseError(f"not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(data, dict):
        raise JudgeParseError("not a JSON object")
    if set(data) != {"score", "explanation"}:
        raise JudgeParseError(f"keys must be exactly score and explanation, got {sorted(data)}")
    score, explanation = data["score"], data["explanation"]
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise JudgeParseError("score is not a number")
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise JudgeParseError(f"score {score} is outside [0, 1]")
    if not isinstance(explanation, str) or not explanation.strip():
        raise JudgeParseError("explanation is not a non-empty string")
    return JudgeVerdict(float(score), " ".join(explanation.split()))


@dataclass(frozen=True)
class JudgePrompt:
    name: str
    version: str
    sha256: str
    system: str
    user: str
    retry: str

    @classmethod
    def load(cls, path: Path = DEFAULT_JUDGE_PROMPT) -> JudgePrompt:
        prompt = load_prompt(
            path,
            "judge prompt",
            lambda file: cls(
                name=file.name,
                version=file.version,
                sha256=file.sha256,
                system=file.text("system"),
                user=file.text("user"),
                retry=file.text("retry"),
            ),
        )
        placeholders = ("{question}", "{ground_truth}", "{answer}")
        require_placeholders(path, "user text", prompt.user, *placeholders)
        return prompt

    def render_user(self, question: str, ground_truth: str, answer: str) -> str:
        # One pass, so text inside a value is never taken for a placeholder.
        values = {"{question}": question, "{ground_truth}": ground_truth, "{answer}": answer}
        return re.sub(
            r"\{question\}|\{ground_truth\}|\{answer\}", lambda m: values[m.group()], self.user
        )

    def render_retry(self, reason: str) -> str:
        return self.retry.replace("{reason}", reason)

    def ref(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


Messages = list[tuple[str, str]]


class JudgeBackend(Protocol):
    """Completes a conversation of (role, content) messages; raises on failure."""

    async def complete(self, messages: Messages) -> str: ...


@dataclass
class JudgeResult:
    score: Score
    attempts: int
    raw: list[str] = field(default_factory=list)
    #: Outputs that did not parse (0, 1 or 2).
    parse_failures: int = 0


class Judge:
    """Scores an answer against the ground truth with a judge model: one call,
    one retry after an unparseable output or a failed call, never a guess."""

    def __init__(self, backend: JudgeBackend, prompt: JudgePrompt) -> None:
        self._backend = backend
        self.prompt = prompt

    async def judge(self, question: str, ground_truth: str, answer: str) -> JudgeResult:
        messages: Messages = [
            ("system", self.prompt.system),
            ("user", self.prompt.render_user(question, ground_truth, answer)),
        ]
        raw: list[str] = []
        failures = 0
        reason = ""
        for attempt in (1, 2):
            try:
                text = await self._backend.complete(messages)
            except Exception as exc:  # a failed call is retried once, then recorded
                reason = f"judge call failed: {_call_error(exc)}"
                continue
            raw.append(text[:RAW_CHARS])
            try:
                verdict = parse_judge_output(text)
            except JudgeParseError as exc:
                failures += 1
                reason = f"unparseable judge output: {exc}"
                messages = [
                    *messages[:2],
                    ("assistant", text),
                    ("user", self.prompt.render_retry(str(exc))),
                ]
                continue
            return JudgeResult(
                Score(JUDGE, verdict.score, verdict.explanation), attempt, raw, failures
            )
        return JudgeResult(Score(JUDGE, None, reason, JUDGE_ERROR), 2, raw, failures)


def _call_error(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details() or ''}".strip()
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class GenerationJudgeSettings:
    target: str = DEFAULT_GENERATION_TARGET
    #: Empty: the generation server's default model.
    model: str = ""
    temperature: float = 0.0
    seed: int = 0
    max_tokens: int = 160
    timeout_s: float = 120.0


class GenerationJudge:
    """A JudgeBackend over GenerationService/Generate (llamacpp, vllm, openai, sim).
    Use as an async context manager (it owns the channel)."""

    def __init__(self, settings: GenerationJudgeSettings) -> None:
        self.settings = settings
        self._channel: Any = None
        self._stub: Any = None
        self.model = ""

    async def __aenter__(self) -> GenerationJudge:
        s = self.settings
        self._channel = create_channel(ChannelSettings(target=s.target, timeout_s=s.timeout_s))
        self._stub = generation_pb2_grpc.GenerationServiceStub(self._channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._channel.close()

    async def complete(self, messages: Messages) -> str:
        s = self.settings
        request = gen.GenerateRequest(
            model=s.model,
            chat=gen.Conversation(
                messages=[
                    common_pb2.ChatMessage(role=ROLE.value(r), content=c) for r, c in messages
                ]
            ),
            sampling=gen.SamplingParams(
                temperature=s.temperature, seed=s.seed, max_tokens=s.max_tokens
            ),
        )
        parts: list[str] = []
        async for response in self._stub.Generate(request, timeout=s.timeout_s):
            if response.HasField("delta"):
                parts.append(response.delta.text)
            elif response.HasField("done"):
                self.model = response.done.model
        return "".join(parts)
