"""services.common.vocab: every enum of every proto has a vocabulary, every value
round-trips through its name, and each domain type naming the same values agrees
with the descriptors, so a value added to a proto cannot be missed."""

from __future__ import annotations

import enum
import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any, get_args, get_type_hints

import atalaya
import pytest
from atalaya.common.v1 import common_pb2
from atalaya.generation.v1 import generation_pb2
from atalaya.guardrail.v1 import guardrail_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor

from services.common import vocab
from services.common.chat import ROLES, ChatMessage, Role
from services.common.vocab import ProtoEnum
from services.engines.base import BackendKind, FinishReason
from services.gateway.core import DoneOut, Stage
from services.gateway.moderation import Mode
from services.guardrail.domain import DetectorName, Verdict
from services.guardrail.pii import PiiType
from services.guardrail.policy import ExecutionMode, FailMode
from services.guardrail.protocol import CATEGORIES


def _nested(message: Descriptor) -> Iterator[EnumDescriptor]:
    yield from message.enum_types
    for inner in message.nested_types:
        yield from _nested(inner)


def proto_enums() -> dict[str, EnumDescriptor]:
    """Every enum of every atalaya proto, by full name."""
    found: dict[str, EnumDescriptor] = {}
    for module in pkgutil.walk_packages(atalaya.__path__, "atalaya."):
        if not module.name.endswith("_pb2"):
            continue
        file = importlib.import_module(module.name).DESCRIPTOR
        enums = [*file.enum_types_by_name.values()]
        for message in file.message_types_by_name.values():
            enums.extend(_nested(message))
        found.update((e.full_name, e) for e in enums)
    return found


VOCABULARIES: dict[str, ProtoEnum[Any]] = {
    v.full_name: v for v in vars(vocab).values() if isinstance(v, ProtoEnum)
}


def test_every_proto_enum_has_a_vocabulary() -> None:
    enums = proto_enums()
    assert len(enums) >= 12
    assert set(VOCABULARIES) == set(enums)


@pytest.mark.parametrize("full_name", sorted(VOCABULARIES))
def test_every_value_round_trips_through_its_name(full_name: str) -> None:
    vocabulary = VOCABULARIES[full_name]
    descriptor = proto_enums()[full_name]
    for value in descriptor.values:
        name = vocabulary.name(value.number)
        if value.number == 0:
            assert name == ""
        else:
            assert name == value.name.removeprefix(vocabulary.prefix).lower()
            assert name.isidentifier() and name.islower()
        assert vocabulary.value(name) == value.number
    assert len(set(vocabulary.names)) == len(descriptor.values) - 1
    assert vocabulary.numbers == tuple(v.number for v in descriptor.values if v.number)


def test_the_prefix_is_the_zero_value_name_less_unspecified() -> None:
    assert vocab.ROLE.prefix == "ROLE_"
    assert vocab.HAZARD_CATEGORY.prefix == "HAZARD_CATEGORY_"
    assert vocab.BACKEND.name(generation_pb2.BACKEND_LLAMACPP) == "llamacpp"
    assert vocab.DETECTOR.value("llama_guard") == guardrail_pb2.DETECTOR_LLAMA_GUARD


def test_unknown_values_and_names_raise_or_give_the_default() -> None:
    with pytest.raises(ValueError, match=r"99 is not a value of atalaya\.common\.v1\.Role"):
        vocab.ROLE.name(99)
    assert vocab.ROLE.name(99, default="") == ""
    with pytest.raises(ValueError, match="'robot' names no value"):
        vocab.ROLE.value("robot")
    assert vocab.ROLE.value("robot", common_pb2.ROLE_UNSPECIFIED) == common_pb2.ROLE_UNSPECIFIED
    with pytest.raises(ValueError):
        vocab.DETECTOR.member(guardrail_pb2.DETECTOR_UNSPECIFIED, DetectorName)


def _literal_names(literal: Any) -> set[str]:
    return {name for name in get_args(literal) if name}


@pytest.mark.parametrize(
    ("vocabulary", "names"),
    [
        (vocab.ROLE, _literal_names(Role)),
        (vocab.ROLE, ROLES),
        (vocab.BACKEND, _literal_names(BackendKind)),
        (vocab.FINISH_REASON, _literal_names(FinishReason)),
        (vocab.MODERATION_MODE, _literal_names(Mode)),
        (vocab.GUARD_STAGE, _literal_names(Stage)),
        (vocab.COST_BASIS, _literal_names(get_type_hints(DoneOut)["cost_basis"])),
    ],
)
def test_domain_literals_name_every_value(vocabulary: ProtoEnum[Any], names: set[str]) -> None:
    assert set(vocabulary.names) == names


@pytest.mark.parametrize(
    ("vocabulary", "kind"),
    [
        (vocab.DETECTOR, DetectorName),
        (vocab.VERDICT, Verdict),
        (vocab.EXECUTION_MODE, ExecutionMode),
        (vocab.FAIL_MODE, FailMode),
        (vocab.PII_TYPE, PiiType),
    ],
)
def test_domain_enums_round_trip(vocabulary: ProtoEnum[Any], kind: type[enum.Enum]) -> None:
    assert {m.value for m in kind} == set(vocabulary.names)
    for value in vocabulary.numbers:
        member = vocabulary.member(value, kind)
        assert vocabulary.value(member.value) == value


def test_category_codes_follow_the_names_and_the_protocol() -> None:
    numbers = vocab.HAZARD_CATEGORY.numbers
    codes = [vocab.category_code(v) for v in numbers]
    assert codes == [c.code for c in CATEGORIES]
    for value, code in zip(numbers, codes, strict=True):
        assert vocab.HAZARD_CATEGORY.name(value).split("_")[0].upper() == code
        assert vocab.category_value(code) == value
    assert vocab.category_label(guardrail_pb2.HAZARD_CATEGORY_S1_VIOLENT_CRIMES) == (
        "S1 Violent Crimes"
    )
    assert vocab.category_label(guardrail_pb2.HAZARD_CATEGORY_S11_SUICIDE_AND_SELF_HARM) == (
        "S11 Suicide And Self Harm"
    )


def test_category_codes_of_unknown_values_keep_their_number() -> None:
    assert vocab.category_code(15) == "S15"
    assert vocab.category_value("S15") == 15
    for value in (0, -1):
        with pytest.raises(ValueError):
            vocab.category_code(value)
    for code in ("", "S", "S0", "S01", "s1", "X1", "S1 "):
        with pytest.raises(ValueError):
            vocab.category_value(code)
    for value in (0, 15):
        with pytest.raises(ValueError):
            vocab.category_label(value)


@pytest.mark.parametrize("role", vocab.ROLE.numbers)
def test_chat_messages_round_trip(role: int) -> None:
    proto = common_pb2.ChatMessage(role=role, content="hi", name="ana")  # type: ignore[arg-type]
    message = vocab.message_from_proto(proto)
    assert message == ChatMessage(vocab.ROLE.name(role), "hi", "ana")
    assert vocab.message_to_proto(message) == proto


def test_a_chat_message_without_a_known_role_has_none() -> None:
    for role in (common_pb2.ROLE_UNSPECIFIED, 99):
        proto = common_pb2.ChatMessage(role=role, content="hi")  # type: ignore[arg-type]
        assert vocab.message_from_proto(proto).role == ""
    with pytest.raises(ValueError):
        vocab.message_to_proto(ChatMessage("robot", "hi"))
