"""MemoryCore with an in-memory store and a hashing embedder: validation,
idempotency, recall filtering, history and error mapping."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.common.chat import ChatMessage
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.common.identity import (
    ADMIN_SCOPE,
    ANONYMOUS,
    DEFAULT_TENANT,
    ON_BEHALF_SCOPE,
    Identity,
)
from services.memory.config import MemorySettings
from services.memory.core import MemoryCore
from services.memory.domain import NewMemory
from tests.support.fakes import DIM, HashEmbedder, InMemoryStore, hashed_vector

HELLO = [ChatMessage("user", "hello"), ChatMessage("assistant", "hi there")]


@pytest.fixture
def settings() -> MemorySettings:
    return MemorySettings(port=0, dsn="postgresql://unused/none")


@pytest.fixture
def store() -> InMemoryStore:
    return InMemoryStore()


@pytest.fixture
def embedder() -> HashEmbedder:
    return HashEmbedder()


@pytest.fixture
def core(store: InMemoryStore, embedder: HashEmbedder, settings: MemorySettings) -> MemoryCore:
    return MemoryCore(store, embedder, settings)


def unit(text: str) -> list[float]:
    v = hashed_vector(text)
    return (v / np.linalg.norm(v)).tolist()


async def append(core: MemoryCore, **overrides: Any) -> Any:
    args: dict[str, Any] = {
        "user_id": "u1",
        "session_id": "s1",
        "request_id": "t1",
        "messages": HELLO,
        "metadata": {},
    }
    args.update(overrides)
    return await core.append_turn(caller=ANONYMOUS, **args)


# --- AppendTurn / GetHistory ----------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"user_id": ""}, "user_id is required"),
        ({"session_id": ""}, "session_id is required"),
        ({"request_id": ""}, "request_id is required"),
        ({"user_id": "u" * 129}, "user_id is longer than 128 characters"),
        ({"messages": []}, "messages needs at least 1 item(s), got 0"),
        ({"messages": [ChatMessage("user", "x")] * 17}, "messages allows at most 16 items, got 17"),
        ({"messages": [ChatMessage("", "x")]}, "messages[0].role is required"),
        ({"messages": [ChatMessage("user", "x"), ChatMessage("robot", "x")]}, "messages[1].role"),
        (
            {"messages": [ChatMessage("user", "x" * 32769)]},
            "messages[0].content is longer than 32768 characters",
        ),
        ({"metadata": {"": "v"}}, "metadata keys must be 1 to 64 characters"),
    ],
)
async def test_append_turn_validation(
    core: MemoryCore, store: InMemoryStore, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        await append(core, **overrides)
    assert message in str(info.value)
    assert store.turns == {}


async def test_append_turn_allows_an_empty_message_content(core: MemoryCore) -> None:
    result = await append(core, messages=[ChatMessage("assistant", "")])
    assert result.created


async def test_append_turn_is_idempotent_on_request_id(core: MemoryCore) -> None:
    first = await append(core, request_id="t1")
    second = await append(core, request_id="t2")
    again = await append(core, request_id="t1", messages=[ChatMessage("user", "different")])
    assert (first.turn_index, first.created) == (0, True)
    assert (second.turn_index, second.created) == (1, True)
    assert (again.turn_index, again.created) == (0, False)
    history = await core.history(caller=ANONYMOUS, user_id="u1", session_id="s1", last_n_turns=0)
    assert history.total_turns == 2
    assert history.turns[0].messages == HELLO


async def test_history_defaults_to_the_last_ten_turns_oldest_first(core: MemoryCore) -> None:
    for i in range(12):
        await append(core, request_id=f"t{i}")

    history = await core.history(caller=ANONYMOUS, user_id="u1", session_id="s1", last_n_turns=0)

    assert [t.request_id for t in history.turns] == [f"t{i}" for i in range(2, 12)]
    assert [t.index for t in history.turns] == list(range(2, 12))
    assert history.total_turns == 12


async def test_history_last_n(core: MemoryCore) -> None:
    for i in range(5):
        await append(core, request_id=f"t{i}")
    history = await core.history(caller=ANONYMOUS, user_id="u1", session_id="s1", last_n_turns=2)
    assert [t.request_id for t in history.turns] == ["t3", "t4"]


async def test_history_default_follows_settings(store: InMemoryStore) -> None:
    core = MemoryCore(store, HashEmbedder(), MemorySettings(port=0, default_history_turns=3))
    for i in range(5):
        await append(core, request_id=f"t{i}")
    history = await core.history(caller=ANONYMOUS, user_id="u1", session_id="s1", last_n_turns=0)
    assert [t.request_id for t in history.turns] == ["t2", "t3", "t4"]


@pytest.mark.parametrize("last_n", [-1, 101])
async def test_history_last_n_out_of_range(core: MemoryCore, last_n: int) -> None:
    await append(core)
    with pytest.raises(InvalidArgument, match=r"last_n_turns must be in \[1, 100\]"):
        await core.history(caller=ANONYMOUS, user_id="u1", session_id="s1", last_n_turns=last_n)


async def test_history_of_an_unknown_session_is_not_found(core: MemoryCore) -> None:
    await append(core, user_id="u1", session_id="s1")
    with pytest.raises(NotFound):
        await core.history(caller=ANONYMOUS, user_id="u1", session_id="other", last_n_turns=0)
    with pytest.raises(NotFound):  # another user's session of the same name
        await core.history(caller=ANONYMOUS, user_id="u2", session_id="s1", last_n_turns=0)


@pytest.mark.parametrize(
    ("user_id", "session_id", "field"), [("", "s1", "user_id"), ("u1", "", "session_id")]
)
async def test_history_requires_ids(
    core: MemoryCore, user_id: str, session_id: str, field: str
) -> None:
    with pytest.raises(InvalidArgument, match=f"{field} is required"):
        await core.history(caller=ANONYMOUS, user_id=user_id, session_id=session_id, last_n_turns=0)


# --- Remember -------------------------------------------------------------------


async def test_remember_is_idempotent_and_does_not_embed_again(
    core: MemoryCore, embedder: HashEmbedder, store: InMemoryStore
) -> None:
    first = await core.remember(
        caller=ANONYMOUS,
        user_id="u1",
        request_id="m1",
        memories=[NewMemory("I like tea"), NewMemory("I am tall")],
    )
    assert embedder.calls == 1
    assert len(first.memory_ids) == 2
    assert first.input_tokens == 6

    again = await core.remember(
        caller=ANONYMOUS,
        user_id="u1",
        request_id="m1",
        memories=[NewMemory("something else entirely")],
    )

    assert embedder.calls == 1
    assert again.memory_ids == first.memory_ids
    assert again.input_tokens == 0
    assert len(store.memories[(DEFAULT_TENANT, "u1")]) == 2


async def test_remember_same_request_id_for_another_user_is_separate(
    core: MemoryCore, embedder: HashEmbedder
) -> None:
    a = await core.remember(
        caller=ANONYMOUS, user_id="u1", request_id="m1", memories=[NewMemory("one")]
    )
    b = await core.remember(
        caller=ANONYMOUS, user_id="u2", request_id="m1", memories=[NewMemory("one")]
    )
    assert embedder.calls == 2
    assert set(a.memory_ids).isdisjoint(b.memory_ids)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"user_id": ""}, "user_id is required"),
        ({"request_id": ""}, "request_id is required"),
        ({"memories": []}, "memories needs at least 1"),
        ({"memories": [NewMemory("x")] * 65}, "memories allows at most 64 items, got 65"),
        ({"memories": [NewMemory("ok"), NewMemory("")]}, "memories[1].text is empty"),
        (
            {"memories": [NewMemory("x" * 8193)]},
            "memories[0].text is longer than 8192 characters",
        ),
        (
            {"memories": [NewMemory("x", {f"k{i}": "v" for i in range(33)})]},
            "memories[0].metadata allows at most 32 entries",
        ),
        ({"memories": [NewMemory("x", session_id="")]}, "memories[0].session_id is required"),
    ],
)
async def test_remember_validation(
    core: MemoryCore, embedder: HashEmbedder, kwargs: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {"user_id": "u1", "request_id": "m1", "memories": [NewMemory("x")]}
    args.update(kwargs)
    with pytest.raises(InvalidArgument) as info:
        await core.remember(caller=ANONYMOUS, **args)
    assert message in str(info.value)
    assert embedder.calls == 0


async def test_embedder_with_the_wrong_dimension_is_failed_precondition(
    store: InMemoryStore, settings: MemorySettings
) -> None:
    core = MemoryCore(store, HashEmbedder(dim=DIM // 2), settings)
    with pytest.raises(FailedPrecondition, match=f"dimension {DIM}"):
        await core.remember(
            caller=ANONYMOUS, user_id="u1", request_id="m1", memories=[NewMemory("x")]
        )
    assert store.memories == {}
    with pytest.raises(FailedPrecondition):
        await core.recall(caller=ANONYMOUS, user_id="u1", k=1, text="x")


# --- Recall ---------------------------------------------------------------------


@pytest.fixture
async def remembered(core: MemoryCore) -> list[str]:
    result = await core.remember(
        caller=ANONYMOUS,
        user_id="u1",
        request_id="m1",
        memories=[
            NewMemory("my dog is called rex"),
            NewMemory("I work as a nurse"),
            NewMemory("quarterly tax filing deadline"),
        ],
    )
    return result.memory_ids


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"user_id": ""}, "user_id is required"),
        ({"k": 0}, "k must be in [1, 100], got 0"),
        ({"k": 101}, "k must be in [1, 100], got 101"),
        ({"k": -5}, "k must be in [1, 100]"),
        ({"k": 2**31 - 1}, "k must be in [1, 100]"),
        ({"text": None}, "exactly one of text or embedding is required"),
        ({"vector": [1.0] * DIM}, "exactly one of text or embedding is required"),
        ({"text": ""}, "text is empty"),
        ({"text": "x" * 8193}, "text is longer than 8192 characters"),
        ({"min_score": 1.5}, "min_score must be in [-1.0, 1.0], got 1.5"),
        ({"min_score": -1.01}, "min_score must be in [-1.0, 1.0]"),
        ({"min_score": float("nan")}, "min_score must be in [-1.0, 1.0]"),
    ],
)
async def test_recall_validation(
    core: MemoryCore, embedder: HashEmbedder, kwargs: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {"user_id": "u1", "k": 3, "text": "dog"}
    args.update(kwargs)
    with pytest.raises(InvalidArgument) as info:
        await core.recall(caller=ANONYMOUS, **args)
    assert message in str(info.value)
    assert embedder.calls == 0


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        ([1.0] * (DIM - 1), f"embedding has {DIM - 1} values, the store uses {DIM}"),
        ([1.0] * (DIM + 1), f"embedding has {DIM + 1} values, the store uses {DIM}"),
        ([], f"embedding has 0 values, the store uses {DIM}"),
        ([0.0] * DIM, "embedding must be finite and non-zero"),
        ([float("nan")] + [1.0] * (DIM - 1), "embedding must be finite and non-zero"),
        ([float("inf")] + [1.0] * (DIM - 1), "embedding must be finite and non-zero"),
    ],
)
async def test_recall_rejects_bad_vectors(
    core: MemoryCore, vector: list[float], message: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        await core.recall(caller=ANONYMOUS, user_id="u1", k=3, vector=vector)
    assert str(info.value) == message


async def test_recall_by_text_finds_the_closest_memory_first(
    core: MemoryCore, remembered: list[str]
) -> None:
    result = await core.recall(caller=ANONYMOUS, user_id="u1", k=3, text="what is my dog called")
    assert result.memories[0].memory_id == remembered[0]
    assert result.memories[0].text == "my dog is called rex"
    scores = [m.score for m in result.memories]
    assert scores == sorted(scores, reverse=True)
    assert result.input_tokens == 5


async def test_recall_by_vector_normalises_the_query(
    core: MemoryCore, embedder: HashEmbedder, remembered: list[str]
) -> None:
    calls = embedder.calls
    scaled = [10.0 * x for x in unit("I work as a nurse")]
    result = await core.recall(caller=ANONYMOUS, user_id="u1", k=1, vector=scaled)
    assert [m.memory_id for m in result.memories] == [remembered[1]]
    assert result.memories[0].score == pytest.approx(1.0, abs=1e-5)
    assert result.input_tokens == 0
    assert embedder.calls == calls


async def test_recall_min_score_drops_weaker_memories(
    core: MemoryCore, remembered: list[str]
) -> None:
    query = unit("my dog is called rex")
    everything = await core.recall(caller=ANONYMOUS, user_id="u1", k=3, vector=query)
    assert len(everything.memories) == 3
    assert any(m.score < 0.5 for m in everything.memories)

    filtered = await core.recall(caller=ANONYMOUS, user_id="u1", k=3, vector=query, min_score=0.5)

    assert [m.memory_id for m in filtered.memories] == [remembered[0]]
    assert all(m.score >= 0.5 for m in filtered.memories)


async def test_recall_min_score_minus_one_keeps_everything(
    core: MemoryCore, remembered: list[str]
) -> None:
    result = await core.recall(caller=ANONYMOUS, user_id="u1", k=3, text="dog", min_score=-1.0)
    assert len(result.memories) == 3


async def test_recall_only_sees_the_callers_memories(
    core: MemoryCore, remembered: list[str]
) -> None:
    await core.remember(
        caller=ANONYMOUS, user_id="u2", request_id="m1", memories=[NewMemory("my dog is rex")]
    )
    mine = await core.recall(caller=ANONYMOUS, user_id="u1", k=10, text="my dog is rex")
    theirs = await core.recall(caller=ANONYMOUS, user_id="u2", k=10, text="my dog is rex")
    assert {m.memory_id for m in mine.memories} == set(remembered)
    assert len(theirs.memories) == 1
    assert theirs.memories[0].memory_id not in remembered


# --- Forget / feedback ----------------------------------------------------------


async def test_forget_requires_ids(core: MemoryCore) -> None:
    with pytest.raises(InvalidArgument, match="user_id is required"):
        await core.forget(caller=ANONYMOUS, user_id="")
    with pytest.raises(InvalidArgument, match="session_id is required"):
        await core.forget(caller=ANONYMOUS, user_id="u1", session_id="")


@pytest.mark.parametrize(
    ("score", "message"),
    [
        (None, "score is required"),
        (-0.1, "score must be in [0.0, 1.0], got -0.1"),
        (1.5, "score must be in [0.0, 1.0], got 1.5"),
        (float("nan"), "score must be in [0.0, 1.0]"),
    ],
)
async def test_feedback_score_is_required_and_bounded(
    core: MemoryCore, store: InMemoryStore, score: float | None, message: str
) -> None:
    await append(core)
    with pytest.raises(InvalidArgument) as info:
        await core.record_feedback(
            caller=ANONYMOUS, user_id="u1", turn_request_id="t1", score=score, comment=""
        )
    assert message in str(info.value)
    assert store.feedback == {}


async def test_feedback_comment_limit(core: MemoryCore) -> None:
    await append(core)
    with pytest.raises(InvalidArgument, match="comment is longer than 4096 characters"):
        await core.record_feedback(
            caller=ANONYMOUS, user_id="u1", turn_request_id="t1", score=1.0, comment="x" * 4097
        )


async def test_feedback_created_then_replaced(core: MemoryCore, store: InMemoryStore) -> None:
    await append(core)
    assert await core.record_feedback(
        caller=ANONYMOUS, user_id="u1", turn_request_id="t1", score=0.0, comment=""
    )
    assert not await core.record_feedback(
        caller=ANONYMOUS, user_id="u1", turn_request_id="t1", score=1.0, comment="better"
    )
    assert store.feedback[(DEFAULT_TENANT, "u1", "t1")] == ("s1", 1.0, "better")


async def test_feedback_on_an_unknown_turn_is_not_found(core: MemoryCore) -> None:
    await append(core, user_id="u1")
    with pytest.raises(NotFound):
        await core.record_feedback(
            caller=ANONYMOUS, user_id="u1", turn_request_id="nope", score=1.0, comment=""
        )
    with pytest.raises(NotFound):  # the turn belongs to another user
        await core.record_feedback(
            caller=ANONYMOUS, user_id="u2", turn_request_id="t1", score=1.0, comment=""
        )


async def test_export_feedback_checks_the_user_id(core: MemoryCore) -> None:
    with pytest.raises(InvalidArgument, match="user_id is longer than 128"):
        core.export_feedback(
            caller=ANONYMOUS, since=None, user_id="u" * 129, include_messages=False
        )


async def test_ready_follows_the_store(core: MemoryCore, store: InMemoryStore) -> None:
    assert await core.ready()
    store.up = False
    assert not await core.ready()


# --- tenants and authorization ----------------------------------------------------

ANA = Identity("acme", "ana")
APP = Identity("acme", "", frozenset({ON_BEHALF_SCOPE}))
ADMIN = Identity("acme", "ops", frozenset({ADMIN_SCOPE}))
ANA_GLOBEX = Identity("globex", "ana")


async def test_the_callers_tenant_keys_every_row(core: MemoryCore, store: InMemoryStore) -> None:
    for caller in (ANA, ANA_GLOBEX, ANONYMOUS):
        await core.append_turn(
            caller=caller,
            user_id="ana",
            session_id="s1",
            request_id="t1",
            messages=HELLO,
            metadata={},
        )
        await core.remember(
            caller=caller, user_id="ana", request_id="m1", memories=[NewMemory("x")]
        )
    assert sorted(store.turns) == [
        ("acme", "ana", "s1"),
        (DEFAULT_TENANT, "ana", "s1"),
        ("globex", "ana", "s1"),
    ]
    assert sorted(store.memories) == [("acme", "ana"), (DEFAULT_TENANT, "ana"), ("globex", "ana")]
    erased = await core.forget_tenant(caller=ADMIN, confirm_tenant="acme")
    assert (erased.sessions, erased.turns, erased.memories) == (1, 1, 1)
    assert sorted(store.turns) == [(DEFAULT_TENANT, "ana", "s1"), ("globex", "ana", "s1")]
    with pytest.raises(NotFound):
        await core.history(caller=ANA, user_id="ana", session_id="s1", last_n_turns=0)


@pytest.mark.parametrize(
    ("caller", "allowed"),
    [
        (ANA, True),  # herself
        (Identity("acme", "bob"), False),  # another user
        (APP, True),  # on behalf of its users
        (ADMIN, True),
        (ANONYMOUS, True),  # authentication off: as before
    ],
)
async def test_who_may_read_and_write_a_users_data(
    core: MemoryCore, store: InMemoryStore, caller: Identity, allowed: bool
) -> None:
    calls = [
        core.append_turn(
            caller=caller,
            user_id="ana",
            session_id="s1",
            request_id="t1",
            messages=HELLO,
            metadata={},
        ),
        core.remember(caller=caller, user_id="ana", request_id="m1", memories=[NewMemory("x")]),
        core.recall(caller=caller, user_id="ana", k=1, text="x"),
        core.history(caller=caller, user_id="ana", session_id="s1", last_n_turns=0),
        core.record_feedback(
            caller=caller, user_id="ana", turn_request_id="t1", score=1.0, comment=""
        ),
    ]
    for call in calls:
        if allowed:
            await call
        else:
            with pytest.raises(PermissionDenied, match="not allowed to act for this user"):
                await call
    assert bool(store.turns) == allowed


@pytest.mark.parametrize(
    ("caller", "allowed"),
    [
        (ANA, True),
        (Identity("acme", "bob"), False),
        (APP, False),  # on-behalf-of is not enough for erasure
        (ADMIN, True),
        (ANONYMOUS, True),
    ],
)
async def test_who_may_erase_a_user(
    core: MemoryCore, store: InMemoryStore, caller: Identity, allowed: bool
) -> None:
    for session in ("s1", "s2"):
        await core.append_turn(
            caller=caller if allowed else APP,
            user_id="ana",
            session_id=session,
            request_id="t1",
            messages=HELLO,
            metadata={},
        )
    for forget in (
        core.forget(caller=caller, user_id="ana", session_id="s1"),
        core.forget(caller=caller, user_id="ana"),
    ):
        if allowed:
            await forget
        else:
            with pytest.raises(PermissionDenied, match="erasure needs the user's own identity"):
                await forget
    assert len(store.turns) == (0 if allowed else 2)


@pytest.mark.parametrize(
    ("caller", "user_id", "allowed"),
    [
        (ANA, "ana", True),  # her own
        (ANA, None, False),  # everyone's
        (ANA, "bob", False),
        (APP, "ana", False),
        (APP, None, False),
        (ADMIN, None, True),
        (ADMIN, "bob", True),
        (ANONYMOUS, None, True),
    ],
)
async def test_who_may_export_feedback(
    core: MemoryCore, caller: Identity, user_id: str | None, allowed: bool
) -> None:
    for user in ("ana", "bob"):
        await core.append_turn(
            caller=APP, user_id=user, session_id="s1", request_id="t1", messages=HELLO, metadata={}
        )
        await core.record_feedback(
            caller=APP, user_id=user, turn_request_id="t1", score=1.0, comment=""
        )
    if not allowed:
        with pytest.raises(PermissionDenied, match="export needs the admin scope"):
            core.export_feedback(caller=caller, since=None, user_id=user_id, include_messages=False)
        return
    records = core.export_feedback(
        caller=caller, since=None, user_id=user_id, include_messages=False
    )
    users = sorted([r.user_id async for r in records])
    expected = {None: ["ana", "bob"], "ana": ["ana"], "bob": ["bob"]}[user_id]
    assert users == (expected if caller.tenant == "acme" else [])


@pytest.mark.parametrize("caller", [ANA, APP, ANONYMOUS, Identity("acme", "", frozenset())])
async def test_erasing_a_tenant_needs_the_admin_scope(
    core: MemoryCore, store: InMemoryStore, caller: Identity
) -> None:
    await append(core)
    with pytest.raises(PermissionDenied, match="erasing a tenant needs the admin scope"):
        await core.forget_tenant(caller=caller, confirm_tenant=caller.tenant)
    assert store.turns


async def test_erasing_a_tenant_must_name_the_callers_own(
    core: MemoryCore, store: InMemoryStore
) -> None:
    await core.append_turn(
        caller=ADMIN, user_id="ana", session_id="s1", request_id="t1", messages=HELLO, metadata={}
    )
    for wrong in ("globex", "", "ACME"):
        with pytest.raises(InvalidArgument, match="confirm_tenant must name the caller's tenant"):
            await core.forget_tenant(caller=ADMIN, confirm_tenant=wrong)
    assert list(store.turns) == [("acme", "ana", "s1")]


async def test_a_tenant_that_is_no_usable_identifier_is_invalid(
    core: MemoryCore, store: InMemoryStore
) -> None:
    long = Identity("t" * 129, "ana")
    with pytest.raises(InvalidArgument, match="tenant is longer than 128 characters"):
        await core.append_turn(
            caller=long,
            user_id="ana",
            session_id="s1",
            request_id="t1",
            messages=HELLO,
            metadata={},
        )
    with pytest.raises(InvalidArgument, match="tenant contains non-printable characters"):
        await core.recall(caller=Identity("a\nb", "ana"), user_id="ana", k=1, text="x")
    assert store.turns == {}
