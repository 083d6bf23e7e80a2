"""The fuzzer's wire format and strategies (loadtests.fuzz.wire, .strategies) and the
parts of its run that need no stack (loadtests.fuzz.run): what they draw is what the
fuzzer promises to send, and its checks find what they look for."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from atalaya.common.v1 import common_pb2
from atalaya.gateway.v1 import gateway_pb2
from atalaya.memory.v1 import memory_pb2
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from loadtests.fuzz import strategies, wire
from loadtests.fuzz.run import Case, Leaks, Outcome, all_rpcs, case_from_dict, describe, restarts
from services.common import identity, topology

T = TypeVar("T")


def sample(strategy: st.SearchStrategy[T], n: int = 400) -> list[T]:
    """`n` draws of `strategy`, the same ones every run."""
    out: list[T] = []

    @seed(20261130)
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: T) -> None:
        out.append(value)

    collect()
    return out


def parse(cls: Callable[[bytes], T], payloads: list[bytes]) -> tuple[list[T], int]:
    """(the payloads that parse, how many do not)."""
    parsed, failed = [], 0
    for payload in payloads:
        try:
            parsed.append(cls(payload))
        except DecodeError:
            failed += 1
    return parsed, failed


def test_varint_zigzag_and_fields_follow_the_protobuf_encoding() -> None:
    assert wire.varint(1) == b"\x01"
    assert wire.varint(300) == b"\xac\x02"
    assert wire.varint(-1) == b"\xff" * 9 + b"\x01"  # a negative int32 takes ten bytes
    assert [wire.zigzag(v, 32) for v in (0, -1, 1, -2)] == [0, 1, 2, 3]
    encoded = wire.field_len(2, "hé".encode()) + wire.field_varint(1, 3)
    assert common_pb2.ChatMessage.FromString(encoded) == common_pb2.ChatMessage(
        role=common_pb2.ROLE_ASSISTANT, content="hé"
    )
    with pytest.raises(DecodeError):
        common_pb2.ChatMessage.FromString(wire.field_len(2, b"\xed\xa0\x80"))


def test_chat_requests_are_mostly_valid_with_edges_and_some_broken() -> None:
    payloads = sample(strategies.message(gateway_pb2.ChatRequest.DESCRIPTOR), 600)
    parsed, failed = parse(gateway_pb2.ChatRequest.FromString, payloads)
    assert len(parsed) >= 0.6 * len(payloads)
    assert failed >= 10  # invalid UTF-8, wrong wire types, cut short
    texts = [
        t
        for r in parsed
        for t in (r.request_id, r.user_id, r.session_id, r.message, r.options.policy)
    ]
    assert any(t == "" for t in texts)
    assert any(len(t) > 8192 for t in texts)  # past the limits
    assert any("\x00" in t for t in texts)
    assert any(not t.isprintable() for t in texts if t)
    modes = {r.options.moderation_mode for r in parsed}
    assert modes - set(gateway_pb2.ModerationMode.values())  # values the enum lacks
    temperatures = [r.options.temperature for r in parsed if r.options.HasField("temperature")]
    assert any(math.isnan(t) or math.isinf(t) or t < 0 for t in temperatures)
    # Plain requests use the fuzzer's pool of ids, so that cases meet each other's data.
    assert sum(r.user_id in strategies.ID_POOL for r in parsed) >= 0.3 * len(parsed)


def test_repeated_fields_and_maps_are_sometimes_repeated_far_past_their_limits() -> None:
    payloads = sample(strategies.message(memory_pb2.AppendTurnRequest.DESCRIPTOR))
    parsed, _ = parse(memory_pb2.AppendTurnRequest.FromString, payloads)
    assert any(len(r.metadata) > 32 for r in parsed)
    assert any(len(r.messages) > 16 for r in parsed)
    assert any(not r.messages for r in parsed)
    roles = {m.role for r in parsed for m in r.messages}
    assert set(common_pb2.Role.values()) <= roles
    assert roles - set(common_pb2.Role.values())


def test_hints_give_the_plain_value_of_a_field_by_name() -> None:
    hinted = strategies.message(
        gateway_pb2.ChatRequest.DESCRIPTOR, hints={"session_id": ("only-this",)}
    )
    parsed, _ = parse(gateway_pb2.ChatRequest.FromString, sample(hinted, 200))
    assert sum(r.session_id == "only-this" for r in parsed) >= 0.3 * len(parsed)


def test_metadata_is_sendable_and_often_carries_a_credential() -> None:
    drawn = sample(strategies.metadata(), 300)
    legal_key = re.compile(r"[0-9a-z_.-]+")
    for pairs in drawn:
        for key, value in pairs:
            assert legal_key.fullmatch(key) and not key.startswith("grpc-")
            if key.endswith("-bin"):
                assert isinstance(value, bytes)
            else:
                assert all(0x20 <= ord(c) <= 0x7E for c in value)
    with_credential = [p for p in drawn if any(k == identity.AUTHORIZATION_KEY for k, _ in p)]
    assert len(with_credential) >= 0.4 * len(drawn)
    assert any(
        v.startswith("Bearer ") for p in with_credential for k, v in p if k == "authorization"
    )
    assert any(k == identity.TENANT_KEY for p in drawn for k, _ in p)


def test_every_rpc_of_every_service_is_fuzzed() -> None:
    rpcs = all_rpcs()
    assert {r.service for r in rpcs} == set(topology.NAMES)
    names = {r.name for r in rpcs}
    assert {"memory.AppendTurn", "memory.ExportFeedback", "gateway.Chat"} <= names
    pool = descriptor_pool.Default()
    declared = sum(len(pool.FindServiceByName(s.grpc_service).methods) for s in topology.SERVICES)
    assert len(names) == len(rpcs) == declared  # a new RPC is fuzzed without a test edit
    streaming = {r.name for r in rpcs if r.streaming}
    assert streaming == {"generation.Generate", "memory.ExportFeedback", "gateway.Chat"}
    assert all(r.path.startswith("/atalaya.") for r in rpcs)


def test_a_reproducer_round_trips_and_shows_the_request_when_it_parses() -> None:
    (rpc,) = [r for r in all_rpcs() if r.name == "memory.Forget"]
    payload = memory_pb2.ForgetRequest(user_id="ana").SerializeToString()
    case = Case(payload, (("authorization", "Bearer x"), ("k-bin", b"\xff")), None)
    shown: dict[str, Any] = describe(rpc, case)
    assert shown["request_text"] == 'user_id: "ana"\n'
    assert case_from_dict(shown) == case
    broken = describe(rpc, Case(b"\x12\x02\xff\xfe", (), None))
    assert broken["request_text"] is None and broken["payload_hex"] == "1202fffe"


def test_a_restart_in_the_stack_log_is_found(tmp_path: Path) -> None:
    log = tmp_path / "stack.log"
    log.write_text(
        "memory    | started\n"
        "stack     | memory exited with code -9; restarting in 1s\n"
        "gateway   | stack     | gateway exited with code 1 (a quote, not the supervisor)\n"
    )
    assert restarts(log) == ["memory exited with code -9"]
    assert restarts(tmp_path / "missing.log") == []


def test_a_leak_is_found_unless_the_request_carried_it(tmp_path: Path) -> None:
    leaks = Leaks(tmp_path, ["127.0.0.1:50123"])
    sent = Case(b"", (), None)
    for details in (
        f"cannot open {tmp_path}/memory/pgdata",
        "connect to 127.0.0.1:50123 failed",
        'Traceback (most recent call last):\n  File "/x.py"',
    ):
        assert leaks.find(sent, Outcome("INVALID_ARGUMENT", details, b"", 0.0)) is not None
    assert leaks.find(sent, Outcome("OK", "", str(Path.cwd()).encode(), 0.0)) is not None
    echoed = Case(str(tmp_path).encode(), (), None)
    assert leaks.find(echoed, Outcome("NOT_FOUND", f"no {tmp_path}", b"", 0.0)) is None
    assert leaks.find(sent, Outcome("INVALID_ARGUMENT", "user_id is required", b"", 0.0)) is None
