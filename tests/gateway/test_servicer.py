"""The gateway's proto conversions: its servicer (ChatRequest -> ChatTurn, core
events -> ChatEvent) and its upstream adapters (the other services' responses ->
domain results), named through services.common.vocab."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import pytest
from atalaya.gateway.v1 import gateway_pb2 as pb
from atalaya.generation.v1 import generation_pb2
from atalaya.guardrail.v1 import guardrail_pb2
from google.protobuf.message import Message

from services.common.errors import InvalidArgument
from services.gateway.clients import Transport, TransportGenerator, TransportGuard
from services.gateway.core import BlockedOut, DoneOut, VerdictOut
from services.gateway.servicer import to_event, to_turn
from services.gateway.upstream import GenDone


def chat(mode: int) -> pb.ChatRequest:
    return pb.ChatRequest(
        user_id="ana",
        session_id="s1",
        message="hi",
        options=pb.ChatOptions(moderation_mode=mode),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (pb.MODERATION_MODE_UNSPECIFIED, None),
        (pb.MODERATION_MODE_BUFFERED, "buffered"),
        (pb.MODERATION_MODE_OPTIMISTIC, "optimistic"),
    ],
)
def test_moderation_modes(mode: int, expected: str | None) -> None:
    assert to_turn(chat(mode)).mode == expected


def test_an_unknown_moderation_mode_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match=r"options\.moderation_mode: unknown value 99"):
        to_turn(chat(99))


def test_verdicts_and_blocks_name_stages_categories_and_detectors() -> None:
    verdict = VerdictOut("output", True, ("S1", "S10"), "llama_guard", "p", False, False, 2, 5.0)
    out = to_event("r1", verdict).verdict
    assert out.stage == pb.GUARD_STAGE_OUTPUT
    assert out.verdict == guardrail_pb2.VERDICT_UNSAFE
    assert list(out.categories) == [
        guardrail_pb2.HAZARD_CATEGORY_S1_VIOLENT_CRIMES,
        guardrail_pb2.HAZARD_CATEGORY_S10_HATE,
    ]
    assert out.decided_by == guardrail_pb2.DETECTOR_LLAMA_GUARD
    undecided = VerdictOut("input", False, (), "", "p", True, False, 0, 1.0)
    out = to_event("r1", undecided).verdict
    assert out.stage == pb.GUARD_STAGE_INPUT
    assert out.decided_by == guardrail_pb2.DETECTOR_UNSPECIFIED
    blocked = to_event("r1", BlockedOut("input", ("S7",), "no", "p", False, "")).blocked
    assert blocked.stage == pb.GUARD_STAGE_INPUT
    assert list(blocked.categories) == [guardrail_pb2.HAZARD_CATEGORY_S7_PRIVACY]


def test_done_names_backend_finish_reason_and_cost_basis() -> None:
    done = DoneOut(cost_basis="gpu_time", backend="llamacpp", finish_reason="length")
    out = to_event("r1", done).done
    assert out.cost_basis == pb.COST_BASIS_GPU_TIME
    assert out.backend == generation_pb2.BACKEND_LLAMACPP
    assert out.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    unset = to_event("r1", DoneOut()).done
    assert unset.cost_basis == pb.COST_BASIS_UNSPECIFIED
    assert unset.backend == generation_pb2.BACKEND_UNSPECIFIED
    assert unset.finish_reason == generation_pb2.FINISH_REASON_UNSPECIFIED


class Canned(Transport):
    """Answers every call with the given responses, in order."""

    upstream = "canned"

    def __init__(self, *responses: Message) -> None:
        self._responses = list(responses)

    async def unary(self, method: str, request: Message, timeout_s: float) -> Any:
        return self._responses.pop(0)

    async def stream(self, method: str, request: Message, timeout_s: float) -> AsyncGenerator[Any]:
        while self._responses:
            yield self._responses.pop(0)


async def test_guard_results_name_codes_and_detectors() -> None:
    response = guardrail_pb2.ClassifyResponse(
        verdict=guardrail_pb2.VERDICT_UNSAFE,
        categories=[guardrail_pb2.HAZARD_CATEGORY_S9_INDISCRIMINATE_WEAPONS, 15],  # type: ignore[list-item]
        decided_by=guardrail_pb2.DETECTOR_SEMANTIC,
    )
    result = await TransportGuard(Canned(response)).classify("r1", [], policy="", timeout_s=1)
    assert result.unsafe
    assert result.codes == ("S9", "S15")  # a newer guardrail's category keeps its number
    assert result.decided_by == "semantic"
    unknown = guardrail_pb2.ClassifyResponse(decided_by=99)  # type: ignore[arg-type]
    result = await TransportGuard(Canned(unknown)).classify("r1", [], policy="", timeout_s=1)
    assert (result.unsafe, result.codes, result.decided_by) == (False, (), "")


async def test_generation_results_name_backends_and_finish_reasons() -> None:
    models = generation_pb2.ListModelsResponse(
        default_model="m",
        models=[generation_pb2.ModelInfo(name="m", backend=generation_pb2.BACKEND_SIM)],
    )
    done = generation_pb2.GenerateResponse(
        done=generation_pb2.Done(
            finish_reason=generation_pb2.FINISH_REASON_STOP,
            backend=99,
            model="m",  # type: ignore[arg-type]
        )
    )
    generator = TransportGenerator(Canned(models, done))
    assert (await generator.model("", timeout_s=1)).backend == "sim"
    events = [
        e
        async for e in generator.generate(
            "r1", [("user", "hi")], model="m", max_tokens=5, temperature=0, seed=None, timeout_s=1
        )
    ]
    assert events == [GenDone("stop", 0, 0, "m", "", None, {})]
