"""MemoryService in process on a real PostgreSQL with pgvector, through MemoryClient
(and raw stubs where the client has no knob). Deletions are checked in the
database itself (as its superuser, past row-level security). Callers other than
the anonymous one send their identity as forwarded identity metadata, as the
gateway does for its end users (tests/support/forwarding.py); on plaintext loopback
the server believes them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import psycopg
import pytest
from atalaya.common.v1 import common_pb2
from atalaya.memory.v1 import memory_pb2, memory_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from services.client import MemoryClient
from services.client.memory import message
from services.common.errors import FailedPrecondition
from services.common.identity import ADMIN_SCOPE, ON_BEHALF_SCOPE, Identity
from services.common.server import ServerRunner
from services.memory.config import MemorySettings
from services.memory.server import build
from services.memory.store import migration_files
from tests.support.fakes import DIM, HashEmbedder, hashed_vector
from tests.support.forwarding import forward_identity

TABLES = ("sessions", "turns", "memories", "feedback")


@dataclass
class Served:
    client: MemoryClient
    stub: memory_pb2_grpc.MemoryServiceStub
    embedder: HashEmbedder
    dsn: str
    target: str

    @asynccontextmanager
    async def client_as(self, who: Identity) -> AsyncIterator[MemoryClient]:
        """A client whose every call forwards `who`."""
        interceptors = forward_identity(who)
        async with grpc.aio.insecure_channel(self.target, interceptors=interceptors) as channel:
            yield MemoryClient(channel, timeout_s=15)


def memory_settings(dsn: str, **overrides: Any) -> MemorySettings:
    options: dict[str, Any] = {
        "port": 0,
        "dsn": dsn,
        "grace_period_s": 1.0,
        "pool_min_size": 1,
        "pool_max_size": 4,
    }
    options.update(overrides)
    return MemorySettings(**options)


@asynccontextmanager
async def serve(
    dsn: str, embedder: HashEmbedder | None = None, **overrides: Any
) -> AsyncIterator[Served]:
    embedder = embedder or HashEmbedder()
    settings = memory_settings(dsn, **overrides)
    service = build(settings, embedder=embedder)
    async with ServerRunner(service, settings).running() as runner:
        target = f"127.0.0.1:{runner.port}"
        async with (
            MemoryClient.connect(target, timeout_s=15) as client,
            grpc.aio.insecure_channel(target) as channel,
        ):
            stub = memory_pb2_grpc.MemoryServiceStub(channel)
            yield Served(client, stub, embedder, dsn, target)


@pytest.fixture
async def memory(fresh_dsn: str) -> AsyncIterator[Served]:
    async with serve(fresh_dsn) as served:
        yield served


async def query(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(sql, args)
        return await cur.fetchall()


async def count(dsn: str, table: str, where: str = "TRUE", *args: Any) -> int:
    rows = await query(dsn, f"SELECT count(*) FROM {table} WHERE {where}", *args)
    return int(rows[0][0])


def unit(text: str) -> list[float]:
    v = hashed_vector(text)
    return (v / np.linalg.norm(v)).tolist()


async def turn(
    client: MemoryClient, user_id: str, session_id: str, request_id: str, text: str = "hi"
) -> memory_pb2.AppendTurnResponse:
    return await client.append_turn(
        user_id=user_id,
        session_id=session_id,
        request_id=request_id,
        messages=[message("user", text), message("assistant", f"re: {text}")],
        metadata={"model": "test-model"},
    )


async def rpc_error(awaitable: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return info.value


# --- AppendTurn / GetHistory ----------------------------------------------------


async def test_append_and_history_round_trip_oldest_first(memory: Served) -> None:
    client = memory.client
    for i in range(4):
        appended = await turn(client, "ana", "s1", f"t{i}", text=f"message {i}")
        assert appended.created
        assert appended.turn_index == i
        assert appended.request_id == f"t{i}"

    history = await client.get_history(user_id="ana", session_id="s1")

    assert history.total_turns == 4
    assert [t.request_id for t in history.turns] == ["t0", "t1", "t2", "t3"]
    assert [t.index for t in history.turns] == [0, 1, 2, 3]
    first = history.turns[0]
    assert [(m.role, m.content) for m in first.messages] == [
        (common_pb2.ROLE_USER, "message 0"),
        (common_pb2.ROLE_ASSISTANT, "re: message 0"),
    ]
    assert dict(first.metadata) == {"model": "test-model"}
    assert first.created_at.seconds > 0
    assert history.request_id  # generated when empty

    last_two = await client.get_history(user_id="ana", session_id="s1", last_n_turns=2)
    assert [t.request_id for t in last_two.turns] == ["t2", "t3"]
    assert last_two.total_turns == 4


async def test_history_returns_the_last_ten_by_default(memory: Served) -> None:
    for i in range(12):
        await turn(memory.client, "ana", "s1", f"t{i}")
    history = await memory.client.get_history(user_id="ana", session_id="s1")
    assert [t.index for t in history.turns] == list(range(2, 12))
    assert history.total_turns == 12


async def test_append_turn_is_idempotent(memory: Served) -> None:
    client = memory.client
    await turn(client, "ana", "s1", "t0")
    first = await turn(client, "ana", "s1", "t1", text="original")
    retry = await turn(client, "ana", "s1", "t1", text="changed on retry")

    assert (first.turn_index, first.created) == (1, True)
    assert (retry.turn_index, retry.created) == (1, False)
    history = await client.get_history(user_id="ana", session_id="s1")
    assert history.total_turns == 2
    assert history.turns[1].messages[0].content == "original"
    assert await count(memory.dsn, "turns") == 2


async def test_concurrent_appends_get_distinct_indexes_and_retries_collapse(
    memory: Served,
) -> None:
    client = memory.client
    distinct = await asyncio.gather(*(turn(client, "ana", "s1", f"t{i}") for i in range(8)))
    assert sorted(r.turn_index for r in distinct) == list(range(8))
    assert all(r.created for r in distinct)

    retries = await asyncio.gather(*(turn(client, "ana", "s2", "same") for _ in range(6)))
    assert {r.turn_index for r in retries} == {0}
    assert sum(r.created for r in retries) == 1
    assert await count(memory.dsn, "turns", "session_id = %s", "s2") == 1


async def test_sessions_are_scoped_per_user(memory: Served) -> None:
    client = memory.client
    await turn(client, "ana", "shared", "a0", text="from ana")
    await turn(client, "ana", "shared", "a1", text="from ana again")
    bob = await turn(client, "bob", "shared", "b0", text="from bob")
    assert bob.turn_index == 0

    ana_history = await client.get_history(user_id="ana", session_id="shared")
    bob_history = await client.get_history(user_id="bob", session_id="shared")

    assert [t.request_id for t in ana_history.turns] == ["a0", "a1"]
    assert [t.request_id for t in bob_history.turns] == ["b0"]
    assert bob_history.turns[0].messages[0].content == "from bob"


async def test_history_of_an_unknown_session_is_not_found(memory: Served) -> None:
    await turn(memory.client, "ana", "s1", "t0")
    err = await rpc_error(memory.client.get_history(user_id="ana", session_id="nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await rpc_error(memory.client.get_history(user_id="bob", session_id="s1"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("last_n", [-1, 101])
async def test_history_bounds(memory: Served, last_n: int) -> None:
    await turn(memory.client, "ana", "s1", "t0")
    err = await rpc_error(
        memory.client.get_history(user_id="ana", session_id="s1", last_n_turns=last_n)
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "last_n_turns" in (err.details() or "")


async def test_append_turn_with_an_unspecified_role_is_invalid(memory: Served) -> None:
    err = await rpc_error(
        memory.client.append_turn(
            user_id="ana",
            session_id="s1",
            request_id="t0",
            messages=[common_pb2.ChatMessage(content="no role")],
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "messages[0].role is required"
    assert await count(memory.dsn, "sessions") == 0


@pytest.mark.parametrize(
    ("message", "metadata", "details"),
    [
        (common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="a\x00b"), {},
         "messages[0].content contains a NUL character"),
        (common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="a"), {"k": "\x00"},
         "metadata keys and values must not contain a NUL character"),
        (common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="a", name="n" * 65), {},
         "messages[0].name is longer than 64 characters (65)"),
    ],
)  # fmt: skip
async def test_append_turn_that_the_database_could_not_hold_or_too_long_a_name_is_invalid(
    memory: Served, message: common_pb2.ChatMessage, metadata: dict[str, str], details: str
) -> None:
    # A NUL got as far as PostgreSQL (which cannot store one): INTERNAL; a long name was kept.
    err = await rpc_error(
        memory.client.append_turn(
            user_id="ana", session_id="s1", request_id="t0", messages=[message], metadata=metadata
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == details
    assert await count(memory.dsn, "sessions") == 0


# --- Remember / Recall ----------------------------------------------------------

FACTS = ["my dog is called rex", "I work as a nurse", "my favourite food is ramen"]


async def test_remember_and_recall_by_text(memory: Served) -> None:
    stored = await memory.client.remember(
        user_id="ana", request_id="m1", texts=FACTS, metadata={"source": "chat"}
    )
    assert len(stored.memory_ids) == 3
    assert len(set(stored.memory_ids)) == 3
    assert stored.usage.input_tokens == 5 + 5 + 5
    assert {"embed", "store"} <= set(stored.timing.phases_ms)

    found = await memory.client.recall(user_id="ana", text="what is my dog called", k=3)

    assert len(found.memories) == 3
    best = found.memories[0]
    assert best.memory_id == stored.memory_ids[0]
    assert best.text == "my dog is called rex"
    assert dict(best.metadata) == {"source": "chat"}
    assert best.created_at.seconds > 0
    scores = [m.score for m in found.memories]
    assert scores == sorted(scores, reverse=True)
    assert found.usage.input_tokens == 5
    assert {"embed", "search"} <= set(found.timing.phases_ms)


async def test_recall_by_vector(memory: Served) -> None:
    stored = await memory.client.remember(user_id="ana", request_id="m1", texts=FACTS)
    calls = memory.embedder.calls

    scaled = [3.0 * x for x in unit("I work as a nurse")]
    found = await memory.client.recall(user_id="ana", embedding=scaled, k=1)

    assert [m.memory_id for m in found.memories] == [stored.memory_ids[1]]
    assert found.memories[0].score == pytest.approx(1.0, abs=1e-4)
    assert found.usage.input_tokens == 0
    assert "embed" not in found.timing.phases_ms
    assert "search" in found.timing.phases_ms
    assert memory.embedder.calls == calls


async def test_recall_min_score(memory: Served) -> None:
    stored = await memory.client.remember(user_id="ana", request_id="m1", texts=FACTS)
    found = await memory.client.recall(user_id="ana", embedding=unit(FACTS[2]), k=3, min_score=0.9)
    assert [m.memory_id for m in found.memories] == [stored.memory_ids[2]]


async def test_recall_for_a_user_without_memories_is_empty(memory: Served) -> None:
    found = await memory.client.recall(user_id="nobody", text="anything", k=5)
    assert list(found.memories) == []


async def test_remember_is_idempotent_on_request_id(memory: Served) -> None:
    first = await memory.client.remember(user_id="ana", request_id="m1", texts=FACTS)
    calls = memory.embedder.calls

    retry = await memory.client.remember(
        user_id="ana", request_id="m1", texts=["a completely different text"]
    )

    assert list(retry.memory_ids) == list(first.memory_ids)
    assert memory.embedder.calls == calls
    assert await count(memory.dsn, "memories") == 3
    other_user = await memory.client.remember(user_id="bob", request_id="m1", texts=["x y"])
    assert set(other_user.memory_ids).isdisjoint(first.memory_ids)


async def test_concurrent_remember_retries_store_once(memory: Served) -> None:
    results = await asyncio.gather(
        *(memory.client.remember(user_id="ana", request_id="m1", texts=FACTS) for _ in range(5))
    )
    ids = {tuple(r.memory_ids) for r in results}
    assert len(ids) == 1
    assert len(next(iter(ids))) == 3
    assert await count(memory.dsn, "memories") == 3
    stats = await query(memory.dsn, "SELECT memories FROM user_memory_stats")
    assert stats == [(3,)]


@pytest.mark.parametrize("exact_max", [10_000, 0], ids=["exact", "hnsw"])
async def test_recall_never_returns_another_users_memory(fresh_dsn: str, exact_max: int) -> None:
    async with serve(fresh_dsn, exact_search_max_memories=exact_max) as memory:
        owned: dict[str, set[str]] = {}
        for u in range(15):
            user = f"user-{u}"
            stored = await memory.client.remember(
                user_id=user,
                request_id="m1",
                texts=[
                    "my favourite colour is blue",
                    f"my secret number is {u}",
                    "I live in a big city",
                ],
            )
            owned[user] = set(stored.memory_ids)

        for user, ids in owned.items():
            by_text = await memory.client.recall(
                user_id=user, text="my favourite colour is blue", k=100
            )
            by_vector = await memory.client.recall(
                user_id=user, embedding=unit("my secret number is 3"), k=100
            )
            assert {m.memory_id for m in by_text.memories} == ids
            assert {m.memory_id for m in by_vector.memories} == ids
        assert await count(fresh_dsn, "memories") == 45


@pytest.mark.parametrize("k", [0, 101, -1])
async def test_k_out_of_bounds_is_invalid(memory: Served, k: int) -> None:
    err = await rpc_error(memory.client.recall(user_id="ana", text="x", k=k))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "k must be in [1, 100]" in (err.details() or "")


async def test_k_bounds_are_inclusive(memory: Served) -> None:
    await memory.client.remember(user_id="ana", request_id="m1", texts=FACTS)
    assert len((await memory.client.recall(user_id="ana", text="x", k=1)).memories) == 1
    assert len((await memory.client.recall(user_id="ana", text="x", k=100)).memories) == 3


@pytest.mark.parametrize("length", [0, DIM - 1, DIM + 1])
async def test_wrong_vector_length_is_invalid(memory: Served, length: int) -> None:
    request = memory_pb2.RecallRequest(user_id="ana", k=3)
    request.embedding.values.extend([0.5] * length)
    err = await rpc_error(memory.stub.Recall(request, timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == f"embedding has {length} values, the store uses {DIM}"


async def test_recall_without_a_query_is_invalid(memory: Served) -> None:
    err = await rpc_error(memory.stub.Recall(memory_pb2.RecallRequest(user_id="a", k=1), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exactly one of text or embedding" in (err.details() or "")


async def test_remember_validation_over_the_wire(memory: Served) -> None:
    err = await rpc_error(memory.client.remember(user_id="ana", request_id="m1", texts=[]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = await rpc_error(memory.client.remember(user_id="ana", request_id="", texts=["x"]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "request_id is required"
    assert memory.embedder.calls == 0


async def test_embedder_of_another_dimension_is_failed_precondition(fresh_dsn: str) -> None:
    async with serve(fresh_dsn, embedder=HashEmbedder(dim=DIM // 2)) as memory:
        err = await rpc_error(memory.client.remember(user_id="ana", request_id="m", texts=["x"]))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        err = await rpc_error(memory.client.recall(user_id="ana", text="x", k=1))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await count(fresh_dsn, "memories") == 0


# --- exact search vs the HNSW index ---------------------------------------------


async def test_recall_above_the_exact_search_limit_finds_the_true_neighbour(
    fresh_dsn: str,
) -> None:
    async with serve(fresh_dsn, exact_search_max_memories=5) as memory:
        texts = [f"memory {i} about topic{i} and subject{i * 7}" for i in range(50)]
        stored = await memory.client.remember(user_id="big", request_id="m1", texts=texts)
        for u in range(5):  # neighbours in the index that belong to other users
            await memory.client.remember(user_id=f"other-{u}", request_id="m1", texts=texts[:10])
        small = await memory.client.remember(user_id="small", request_id="m1", texts=texts[:3])

        stats = await query(fresh_dsn, "SELECT user_id, memories FROM user_memory_stats")
        assert dict(stats)["big"] == 50  # above the limit: the index answers
        assert dict(stats)["small"] == 3  # below it: an exact scan

        for target in (0, 17, 49):
            found = await memory.client.recall(user_id="big", embedding=unit(texts[target]), k=10)
            assert len(found.memories) == 10
            assert found.memories[0].memory_id == stored.memory_ids[target]
            assert found.memories[0].score == pytest.approx(1.0, abs=1e-4)
            assert {m.memory_id for m in found.memories} <= set(stored.memory_ids)
            scores = [m.score for m in found.memories]
            assert scores == sorted(scores, reverse=True)

        found = await memory.client.recall(user_id="small", embedding=unit(texts[1]), k=10)
        assert found.memories[0].memory_id == small.memory_ids[1]
        assert len(found.memories) == 3


# --- Forget ---------------------------------------------------------------------


async def populate(client: MemoryClient, user: str) -> None:
    """Two sessions with turns and feedback, and memories from s1, s2 and none."""
    for session in ("s1", "s2"):
        for i in range(3):
            await turn(client, user, session, f"{session}-t{i}")
        await client.record_feedback(user_id=user, turn_request_id=f"{session}-t0", score=1.0)
    await client.remember(user_id=user, request_id="m-s1", texts=["a", "b"], session_id="s1")
    await client.remember(user_id=user, request_id="m-s2", texts=["c"], session_id="s2")
    await client.remember(user_id=user, request_id="m-none", texts=["d"])


async def test_forget_user_deletes_every_row_of_that_user_only(memory: Served) -> None:
    await populate(memory.client, "ana")
    await populate(memory.client, "bob")

    erased = await memory.client.forget_user("ana")

    assert (
        erased.deleted_sessions,
        erased.deleted_turns,
        erased.deleted_memories,
        erased.deleted_feedback,
    ) == (2, 6, 4, 2)
    for table in TABLES:
        assert await count(memory.dsn, table, "user_id = %s", "ana") == 0, table
    assert await count(memory.dsn, "user_memory_stats", "user_id = %s", "ana") == 0
    assert [await count(memory.dsn, t, "user_id = %s", "bob") for t in TABLES] == [2, 6, 4, 2]

    err = await rpc_error(memory.client.get_history(user_id="ana", session_id="s1"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert list((await memory.client.recall(user_id="ana", text="a", k=5)).memories) == []
    assert len((await memory.client.recall(user_id="bob", text="a", k=5)).memories) == 4


async def test_forget_session_deletes_its_turns_feedback_and_memories(memory: Served) -> None:
    await populate(memory.client, "ana")
    await populate(memory.client, "bob")

    erased = await memory.client.forget_session("ana", "s1")

    assert (
        erased.deleted_sessions,
        erased.deleted_turns,
        erased.deleted_memories,
        erased.deleted_feedback,
    ) == (1, 3, 2, 1)
    where = "user_id = %s AND session_id = %s"
    for table in TABLES:
        assert await count(memory.dsn, table, where, "ana", "s1") == 0, table
    # The other session, the session-less memory and the other user stay.
    assert [await count(memory.dsn, t, where, "ana", "s2") for t in TABLES] == [1, 3, 1, 1]
    assert await count(memory.dsn, "memories", "user_id = 'ana' AND session_id IS NULL") == 1
    assert [await count(memory.dsn, t, where, "bob", "s1") for t in TABLES] == [1, 3, 2, 1]

    remaining = await memory.client.recall(user_id="ana", text="a", k=10)
    assert sorted(m.text for m in remaining.memories) == ["c", "d"]
    stats = await query(
        memory.dsn, "SELECT memories FROM user_memory_stats WHERE user_id = %s", "ana"
    )
    assert stats == [(2,)]
    err = await rpc_error(memory.client.get_history(user_id="ana", session_id="s1"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert (await memory.client.get_history(user_id="ana", session_id="s2")).total_turns == 3


async def test_erasing_nothing_returns_zero_counts(memory: Served) -> None:
    await populate(memory.client, "ana")
    for erased in (
        await memory.client.forget_user("ghost"),
        await memory.client.forget_session("ana", "no-such-session"),
        await memory.client.forget_session("ghost", "s1"),
    ):
        assert (
            erased.deleted_sessions,
            erased.deleted_turns,
            erased.deleted_memories,
            erased.deleted_feedback,
        ) == (0, 0, 0, 0)
    assert [await count(memory.dsn, t) for t in TABLES] == [2, 6, 4, 2]


async def test_forget_without_a_target_is_invalid(memory: Served) -> None:
    err = await rpc_error(memory.stub.Forget(memory_pb2.ForgetRequest(), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- feedback -------------------------------------------------------------------


async def test_record_feedback_created_then_replaced(memory: Served) -> None:
    await turn(memory.client, "ana", "s1", "t0")

    first = await memory.client.record_feedback(
        user_id="ana", turn_request_id="t0", score=0.0, comment="wrong"
    )
    second = await memory.client.record_feedback(
        user_id="ana", turn_request_id="t0", score=1.0, comment="fixed"
    )

    assert first.created
    assert not second.created
    assert await query(memory.dsn, "SELECT score, comment, session_id FROM feedback") == [
        (1.0, "fixed", "s1")
    ]


async def test_record_feedback_on_an_unknown_turn_is_not_found(memory: Served) -> None:
    await turn(memory.client, "ana", "s1", "t0")
    err = await rpc_error(
        memory.client.record_feedback(user_id="ana", turn_request_id="nope", score=1.0)
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await rpc_error(
        memory.client.record_feedback(user_id="bob", turn_request_id="t0", score=1.0)
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert await count(memory.dsn, "feedback") == 0


async def test_record_feedback_without_a_score_is_invalid(memory: Served) -> None:
    await turn(memory.client, "ana", "s1", "t0")
    err = await rpc_error(
        memory.stub.RecordFeedback(
            memory_pb2.RecordFeedbackRequest(user_id="ana", turn_request_id="t0"), timeout=5
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "score is required"
    zero = await memory.stub.RecordFeedback(
        memory_pb2.RecordFeedbackRequest(user_id="ana", turn_request_id="t0", score=0.0),
        timeout=5,
    )
    assert zero.created
    assert await query(memory.dsn, "SELECT score FROM feedback") == [(0.0,)]


@pytest.mark.parametrize("score", [-0.5, 1.5])
async def test_record_feedback_score_out_of_range_is_invalid(memory: Served, score: float) -> None:
    await turn(memory.client, "ana", "s1", "t0")
    err = await rpc_error(
        memory.client.record_feedback(user_id="ana", turn_request_id="t0", score=score)
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_export_feedback_streams_oldest_first(memory: Served) -> None:
    client = memory.client
    await turn(client, "ana", "s1", "a0", text="question a0")
    await turn(client, "ana", "s1", "a1", text="question a1")
    await turn(client, "bob", "s9", "b0", text="question b0")
    await client.record_feedback(user_id="ana", turn_request_id="a0", score=0.0)
    await client.record_feedback(user_id="bob", turn_request_id="b0", score=0.5, comment="meh")
    await client.record_feedback(user_id="ana", turn_request_id="a1", score=1.0)

    everything = [r async for r in client.export_feedback()]
    assert [(r.user_id, r.turn_request_id) for r in everything] == [
        ("ana", "a0"),
        ("bob", "b0"),
        ("ana", "a1"),
    ]
    bob = everything[1]
    assert (bob.session_id, bob.score, bob.comment) == ("s9", 0.5, "meh")
    assert dict(bob.metadata) == {"model": "test-model"}
    assert bob.recorded_at.seconds > 0
    assert all(len(r.messages) == 0 for r in everything)

    with_messages = [r async for r in client.export_feedback(include_messages=True)]
    assert [m.content for m in with_messages[0].messages] == ["question a0", "re: question a0"]
    assert with_messages[0].messages[0].role == common_pb2.ROLE_USER

    only_ana = [r async for r in client.export_feedback(user_id="ana")]
    assert [r.turn_request_id for r in only_ana] == ["a0", "a1"]
    assert [r async for r in client.export_feedback(user_id="carol")] == []


async def test_export_feedback_since(memory: Served) -> None:
    await turn(memory.client, "ana", "s1", "a0")
    await memory.client.record_feedback(user_id="ana", turn_request_id="a0", score=1.0)

    past, future = Timestamp(), Timestamp()
    past.FromSeconds(0)
    future.FromSeconds(4_000_000_000)
    since_past = memory.stub.ExportFeedback(memory_pb2.ExportFeedbackRequest(since=past), timeout=5)
    since_future = memory.stub.ExportFeedback(
        memory_pb2.ExportFeedbackRequest(since=future), timeout=5
    )
    assert [r.turn_request_id async for r in since_past] == ["a0"]
    assert [r async for r in since_future] == []


# --- tenants and who may act for a user -----------------------------------------------

ANA_ACME = Identity("acme", "ana")
BOB_ACME = Identity("acme", "bob")
ANA_GLOBEX = Identity("globex", "ana")
APP_ACME = Identity("acme", "", frozenset({ON_BEHALF_SCOPE}))  # a service for its users
ADMIN_ACME = Identity("acme", "ops", frozenset({ADMIN_SCOPE}))
ADMIN_GLOBEX = Identity("globex", "ops", frozenset({ADMIN_SCOPE}))


async def tenant_counts(dsn: str, tenant: str) -> list[int]:
    return [await count(dsn, t, "tenant = %s", tenant) for t in TABLES]


async def test_the_tenant_comes_from_the_identity_and_scopes_everything(memory: Served) -> None:
    async with memory.client_as(ANA_ACME) as acme, memory.client_as(ANA_GLOBEX) as globex:
        for client, tenant in ((acme, "acme"), (globex, "globex")):
            await turn(client, "ana", "s1", "t0", text=f"hello from {tenant}")
            await client.remember(user_id="ana", request_id="m1", texts=[f"{tenant} secret"])
            await client.record_feedback(user_id="ana", turn_request_id="t0", score=1.0)

        for client, tenant in ((acme, "acme"), (globex, "globex")):
            history = await client.get_history(user_id="ana", session_id="s1")
            assert [t.messages[0].content for t in history.turns] == [f"hello from {tenant}"]
            found = await client.recall(user_id="ana", text="secret", k=10)
            assert [m.text for m in found.memories] == [f"{tenant} secret"]
            exported = [r async for r in client.export_feedback(user_id="ana")]
            assert len(exported) == 1
            assert exported[0].session_id == "s1"

    # The rows carry the callers' tenants; the anonymous caller's is "default",
    # where ana has nothing.
    assert await query(memory.dsn, "SELECT tenant, user_id FROM turns ORDER BY tenant") == [
        ("acme", "ana"),
        ("globex", "ana"),
    ]
    assert await tenant_counts(memory.dsn, "acme") == [1, 1, 1, 1]
    assert await tenant_counts(memory.dsn, "globex") == [1, 1, 1, 1]
    err = await rpc_error(memory.client.get_history(user_id="ana", session_id="s1"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert list((await memory.client.recall(user_id="ana", text="secret", k=10)).memories) == []


async def test_a_user_may_not_name_another_user(memory: Served) -> None:
    async with memory.client_as(ANA_ACME) as ana:
        calls = [
            turn(ana, "bob", "s1", "t0"),
            ana.get_history(user_id="bob", session_id="s1"),
            ana.remember(user_id="bob", request_id="m1", texts=["planted"]),
            ana.recall(user_id="bob", text="planted", k=1),
            ana.record_feedback(user_id="bob", turn_request_id="t0", score=1.0),
            ana.forget_user("bob"),
            ana.forget_session("bob", "s1"),
        ]
        for call in calls:
            err = await rpc_error(call)
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        err = await rpc_error(export(ana, user_id="bob"))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert [await count(memory.dsn, t) for t in TABLES] == [0, 0, 0, 0]
    assert memory.embedder.calls == 0


async def export(client: MemoryClient, **kwargs: Any) -> list[memory_pb2.FeedbackRecord]:
    return [r async for r in client.export_feedback(**kwargs)]


async def test_on_behalf_of_may_read_and_write_for_a_user_but_not_erase(memory: Served) -> None:
    async with (
        memory.client_as(APP_ACME) as app,
        memory.client_as(BOB_ACME) as bob,
        memory.client_as(ADMIN_ACME) as admin,
    ):
        await populate(app, "bob")
        await populate(app, "carol")
        assert (await app.get_history(user_id="bob", session_id="s1")).total_turns == 3

        for call in (app.forget_user("bob"), app.forget_session("bob", "s1")):
            err = await rpc_error(call)
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "erasure needs the user's own identity or the admin scope" in (
                err.details() or ""
            )
        assert await tenant_counts(memory.dsn, "acme") == [4, 12, 8, 4]

        own = await bob.forget_session("bob", "s1")
        assert (own.deleted_sessions, own.deleted_turns) == (1, 3)
        own = await bob.forget_user("bob")
        assert (own.deleted_sessions, own.deleted_turns, own.deleted_memories) == (1, 3, 2)
        erased = await admin.forget_user("carol")
        assert (erased.deleted_sessions, erased.deleted_turns, erased.deleted_memories) == (2, 6, 4)
    assert await tenant_counts(memory.dsn, "acme") == [0, 0, 0, 0]


async def test_export_feedback_needs_the_admin_scope_or_the_users_own_identity(
    memory: Served,
) -> None:
    async with (
        memory.client_as(ANA_ACME) as ana,
        memory.client_as(APP_ACME) as app,
        memory.client_as(ADMIN_ACME) as admin,
        memory.client_as(ANA_GLOBEX) as ana_globex,
    ):
        await populate(app, "ana")
        await populate(app, "bob")
        await populate(ana_globex, "ana")

        assert {r.user_id for r in await export(ana, user_id="ana")} == {"ana"}
        assert len(await export(ana, user_id="ana")) == 2
        for client, kwargs in ((ana, {}), (app, {}), (app, {"user_id": "bob"})):
            err = await rpc_error(export(client, **kwargs))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED

        everything = await export(admin, include_messages=True)
        assert sorted(r.user_id for r in everything) == ["ana", "ana", "bob", "bob"]
        assert len(await export(admin, user_id="bob")) == 2
        # Only acme's four of the six stored: globex's ana has hers on the same ids.
        assert await count(memory.dsn, "feedback") == 6


async def test_forget_tenant_erases_every_row_of_the_callers_tenant_only(
    memory: Served,
) -> None:
    async with (
        memory.client_as(APP_ACME) as app,
        memory.client_as(ANA_ACME) as ana,
        memory.client_as(ADMIN_ACME) as admin,
        memory.client_as(ANA_GLOBEX) as ana_globex,
        memory.client_as(ADMIN_GLOBEX) as admin_globex,
    ):
        await populate(app, "ana")
        await populate(app, "bob")
        await populate(ana_globex, "ana")
        await populate(memory.client, "ana")  # the anonymous caller: tenant "default"

        for client in (memory.client, app, ana):
            err = await rpc_error(client.forget_tenant("acme"))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        err = await rpc_error(admin.forget_tenant("globex"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details() == "confirm_tenant must name the caller's tenant"
        assert await tenant_counts(memory.dsn, "acme") == [4, 12, 8, 4]

        erased = await admin.forget_tenant("acme")

        assert (
            erased.deleted_sessions,
            erased.deleted_turns,
            erased.deleted_memories,
            erased.deleted_feedback,
        ) == (4, 12, 8, 4)
        assert erased.request_id
        # Deleted from the tables (counted past row-level security, no VACUUM run),
        # the stats with them; nothing of the other tenants touched.
        assert await tenant_counts(memory.dsn, "acme") == [0, 0, 0, 0]
        assert await count(memory.dsn, "user_memory_stats", "tenant = 'acme'") == 0
        assert await tenant_counts(memory.dsn, "globex") == [2, 6, 4, 2]
        assert await tenant_counts(memory.dsn, "default") == [2, 6, 4, 2]
        for user in ("ana", "bob"):
            assert list((await app.recall(user_id=user, text="a b c d", k=10)).memories) == []
            err = await rpc_error(app.get_history(user_id=user, session_id="s1"))
            assert err.code() == grpc.StatusCode.NOT_FOUND
        assert await export(admin) == []
        found = await ana_globex.recall(user_id="ana", text="a b c d", k=10)
        assert len(found.memories) == 4

        # A tenant's users start again from nothing.
        appended = await turn(ana, "ana", "s1", "s1-t0")
        assert (appended.turn_index, appended.created) == (0, True)
        await admin_globex.forget_tenant("globex")
        assert await tenant_counts(memory.dsn, "globex") == [0, 0, 0, 0]
        assert await tenant_counts(memory.dsn, "default") == [2, 6, 4, 2]


@pytest.mark.parametrize(
    ("seconds", "nanos"), [(0, -1), (0, 1_000_000_000), (1 << 62, 0), (-(1 << 62), 0)]
)
async def test_export_feedback_since_an_invalid_timestamp_is_invalid(
    memory: Served, seconds: int, nanos: int
) -> None:
    since = Timestamp(seconds=seconds, nanos=nanos)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in memory.stub.ExportFeedback(
            memory_pb2.ExportFeedbackRequest(since=since), timeout=5
        ):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "since is not a valid timestamp"


# --- schema migrations ----------------------------------------------------------


async def test_a_second_service_does_not_migrate_again(fresh_dsn: str) -> None:
    async with serve(fresh_dsn) as first:
        await turn(first.client, "ana", "s1", "t0")
    migrations = await query(fresh_dsn, "SELECT version, applied_at FROM schema_migrations")
    assert [v for v, _ in migrations] == [v for v, _ in migration_files()] == [1, 2]

    async with serve(fresh_dsn) as second:
        history = await second.client.get_history(user_id="ana", session_id="s1")
        assert [t.request_id for t in history.turns] == ["t0"]

    assert await query(fresh_dsn, "SELECT version, applied_at FROM schema_migrations") == migrations
    assert await query(fresh_dsn, "SELECT key, value FROM store_info") == [
        ("embedding_dimension", str(DIM))
    ]


async def test_a_different_embedding_dimension_fails_start(fresh_dsn: str) -> None:
    async with serve(fresh_dsn):
        pass

    settings = memory_settings(fresh_dsn, embedding_dimension=DIM // 2)
    runner = ServerRunner(build(settings, embedder=HashEmbedder(dim=DIM // 2)), settings)
    try:
        with pytest.raises(FailedPrecondition) as info:
            await runner.start()
    finally:
        await runner.stop(grace=0.5)
    assert str(info.value) == f"store holds {DIM}-dimensional vectors, settings say {DIM // 2}"
    assert await query(fresh_dsn, "SELECT value FROM store_info") == [(str(DIM),)]
