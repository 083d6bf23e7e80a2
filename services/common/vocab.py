"""The names of the protos' enum values, derived from their descriptors, so that
every servicer, client, CLI command and load test converts them the same way:

    BACKEND.name(generation_pb2.BACKEND_LLAMACPP) == "llamacpp"
    BACKEND.value("llamacpp") == generation_pb2.BACKEND_LLAMACPP

A value's name is its proto name without the enum's prefix (the zero value's name
less UNSPECIFIED), in lower case. The zero value, <ENUM>_UNSPECIFIED, is proto3's
"not set"; its name is "". Domain enums whose values are these names (the
guardrail's DetectorName, Verdict, ExecutionMode...) convert through them:
`DETECTOR.member(value, DetectorName)` and `DETECTOR.value(name)`.

Also here: the Llama Guard category codes ("S1".."S14") of HazardCategory values
and their labels ("S1 Violent Crimes"), and the domain ChatMessage to and from
its proto.

For the proto side only (servicers, clients, the CLI, load tests); cores never
import this module."""

from __future__ import annotations

import enum
import re
from typing import TYPE_CHECKING, Generic, TypeVar

from atalaya.common.v1 import common_pb2
from atalaya.gateway.v1 import gateway_pb2
from atalaya.generation.v1 import generation_pb2
from atalaya.guardrail.v1 import guardrail_pb2

from services.common.chat import ChatMessage

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

V = TypeVar("V", bound=int)
E = TypeVar("E", bound=enum.Enum)

_UNSPECIFIED = "UNSPECIFIED"


class ProtoEnum(Generic[V]):
    """One proto enum's values and their names."""

    def __init__(self, enum_type: _EnumTypeWrapper[V]) -> None:
        descriptor = enum_type.DESCRIPTOR
        self.full_name: str = descriptor.full_name
        zero = descriptor.values_by_number.get(0)
        if zero is None or not zero.name.endswith("_" + _UNSPECIFIED):
            raise ValueError(f"{self.full_name}: the zero value must be <ENUM>_UNSPECIFIED")
        self.prefix: str = zero.name.removesuffix(_UNSPECIFIED)
        self._names: dict[int, str] = {}
        self._values: dict[str, V] = {}
        for value in descriptor.values:
            if not value.name.startswith(self.prefix):
                raise ValueError(f"{self.full_name}: {value.name} lacks the prefix {self.prefix}")
            name = "" if value.number == 0 else value.name.removeprefix(self.prefix).lower()
            self._names[value.number] = name
            self._values[name] = enum_type.Value(value.name)

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the enum's values, the zero value left out, in number order."""
        return tuple(name for _, name in sorted(self._names.items()) if name)

    @property
    def numbers(self) -> tuple[V, ...]:
        """The enum's values, the zero value left out, in number order."""
        return tuple(self._values[name] for name in self.names)

    def name(self, value: int, default: str | None = None) -> str:
        """The name of `value` ("" for the zero value). For a value the enum lacks (a
        newer peer's, or a wrong one), `default`; ValueError when there is none."""
        name = self._names.get(value)
        if name is not None:
            return name
        if default is None:
            raise ValueError(f"{value} is not a value of {self.full_name}")
        return default

    def value(self, name: str, default: V | None = None) -> V:
        """The value named `name` (the zero value for ""). For a name the enum lacks,
        `default`; ValueError when there is none."""
        value = self._values.get(name)
        if value is not None:
            return value
        if default is None:
            raise ValueError(f"{name!r} names no value of {self.full_name}")
        return default

    def member(self, value: int, kind: type[E]) -> E:
        """The member of the domain enum `kind` whose value is the name of `value`;
        ValueError for the zero value and for a value either enum lacks."""
        return kind(self.name(value))


ROLE = ProtoEnum(common_pb2.Role)
BACKEND = ProtoEnum(generation_pb2.Backend)
FINISH_REASON = ProtoEnum(generation_pb2.FinishReason)
HAZARD_CATEGORY = ProtoEnum(guardrail_pb2.HazardCategory)
VERDICT = ProtoEnum(guardrail_pb2.Verdict)
DETECTOR = ProtoEnum(guardrail_pb2.Detector)
EXECUTION_MODE = ProtoEnum(guardrail_pb2.ExecutionMode)
FAIL_MODE = ProtoEnum(guardrail_pb2.FailMode)
PII_TYPE = ProtoEnum(guardrail_pb2.PiiType)
MODERATION_MODE = ProtoEnum(gateway_pb2.ModerationMode)
GUARD_STAGE = ProtoEnum(gateway_pb2.GuardStage)
COST_BASIS = ProtoEnum(gateway_pb2.CostBasis)

_CODE = re.compile(r"S([1-9][0-9]*)")


def category_code(value: int) -> str:
    """The Llama Guard code of a category: "S10" for HAZARD_CATEGORY_S10_HATE, whose
    number the proto makes its code (and whose name starts with it). A value these
    stubs lack keeps its number, as proto3 keeps unknown enum values; ValueError for
    the zero value, which is no category."""
    if value < 1:
        raise ValueError(f"{value} is not a hazard category")
    return f"S{value}"


def category_value(code: str) -> guardrail_pb2.HazardCategory.ValueType:
    """HAZARD_CATEGORY_S10_HATE for "S10"; ValueError for anything but S<n>, n >= 1."""
    match = _CODE.fullmatch(code)
    if match is None:
        raise ValueError(f"{code!r} is not a hazard category code")
    return guardrail_pb2.HazardCategory.ValueType(int(match[1]))


def category_label(value: int) -> str:
    """A category as people read it: "S1 Violent Crimes" for
    HAZARD_CATEGORY_S1_VIOLENT_CRIMES; ValueError for a value that is no category
    these stubs know."""
    code, _, words = HAZARD_CATEGORY.name(value).partition("_")
    if not code:
        raise ValueError(f"{value} is not a hazard category")
    return f"{code.upper()} {words.replace('_', ' ').title()}".strip()


def message_from_proto(message: common_pb2.ChatMessage) -> ChatMessage:
    """The domain message; an unset or unknown role becomes "", which cores reject."""
    return ChatMessage(ROLE.name(message.role, default=""), message.content, message.name)


def message_to_proto(message: ChatMessage) -> common_pb2.ChatMessage:
    """The proto message (ROLE_UNSPECIFIED for a role of ""); ValueError for a role
    outside services.common.chat.ROLES."""
    return common_pb2.ChatMessage(
        role=ROLE.value(message.role), content=message.content, name=message.name
    )
