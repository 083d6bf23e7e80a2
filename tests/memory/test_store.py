"""PostgresStore's tenants on a real PostgreSQL: every row carries its tenant, every
operation stays in it, row-level security holds a query that forgets the filter
to its tenant, rows stored before tenants existed land in the default tenant, and
the store refuses to start where the policies would not bind its queries, or where
its login role may not create pgvector or the database's pgvector is too old."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
import pytest

from services.common.chat import ChatMessage
from services.common.errors import FailedPrecondition
from services.common.identity import DEFAULT_TENANT
from services.memory.domain import NewMemory
from services.memory.store import (
    ROLE,
    TENANT_TABLES,
    PostgresStore,
    migrate,
    migration_files,
    pgvector_supported,
)
from tests.support.fakes import DIM, hashed_vector
from tests.support.postgres import TestPostgres

HELLO = [ChatMessage("user", "hello"), ChatMessage("assistant", "hi there")]
PARAMS = {"dimension": DIM, "hnsw_m": 16, "hnsw_ef_construction": 64}


def vectors(*texts: str) -> Any:
    v = np.stack([hashed_vector(t) for t in texts])
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
async def store(fresh_dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(dimension=DIM, pool_min_size=1, pool_max_size=2)
    await s.open(fresh_dsn)
    yield s
    await s.close()


async def superuser_rows(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows as the server's superuser, whom row-level security never binds."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(sql, args)
        return await cur.fetchall()


async def fill(store: PostgresStore, tenant: str, user: str = "ana") -> None:
    """A session with a turn and feedback on it, and two memories, one from it."""
    await store.append_turn(tenant, user, "s1", "t0", messages=HELLO, metadata={"t": tenant})
    await store.record_feedback(tenant, user, "t0", 1.0, f"from {tenant}")
    memories = [NewMemory(f"{tenant} likes tea", session_id="s1"), NewMemory(f"{tenant} rows")]
    await store.add_memories(tenant, user, "m0", memories, vectors("tea", "rows"))


async def counts(dsn: str, tenant: str) -> list[int]:
    return [
        (await superuser_rows(dsn, f"SELECT count(*) FROM {t} WHERE tenant = %s", tenant))[0][0]
        for t in TENANT_TABLES
    ]


# --- every operation stays in its tenant ----------------------------------------------


async def test_same_user_and_ids_in_two_tenants_never_meet(
    store: PostgresStore, fresh_dsn: str
) -> None:
    await fill(store, "acme")
    await fill(store, "globex")
    assert await counts(fresh_dsn, "acme") == await counts(fresh_dsn, "globex") == [1, 1, 2, 1, 1]

    for tenant, other in (("acme", "globex"), ("globex", "acme")):
        history = await store.history(tenant, "ana", "s1", 10)
        assert history is not None
        assert [t.metadata for t in history.turns] == [{"t": tenant}]
        found = await store.search(tenant, "ana", vectors("tea")[0], 10)
        assert sorted(m.text for m in found) == [f"{tenant} likes tea", f"{tenant} rows"]
        assert not any(other in m.text for m in found)
        for exact in (True, False):
            assert {
                m.text for m in await store.search(tenant, "ana", vectors("x")[0], 10, exact=exact)
            } == {
                f"{tenant} likes tea",
                f"{tenant} rows",
            }
        exported = [r async for r in store.export_feedback(tenant, None, None, True)]
        assert [r.comment for r in exported] == [f"from {tenant}"]
        ids = await store.memory_ids_for_request(tenant, "ana", "m0")
        assert len(ids) == 2

    # The same request ids are separate keys per tenant: no idempotent collapse across.
    acme_ids = await store.memory_ids_for_request("acme", "ana", "m0")
    globex_ids = await store.memory_ids_for_request("globex", "ana", "m0")
    assert set(acme_ids).isdisjoint(globex_ids)
    assert await store.history("initech", "ana", "s1", 10) is None
    assert await store.search("initech", "ana", vectors("tea")[0], 10) == []
    assert await store.record_feedback("initech", "ana", "t0", 1.0, "") is None


async def test_erasure_stays_in_its_tenant(store: PostgresStore, fresh_dsn: str) -> None:
    await fill(store, "acme")
    await fill(store, "globex")

    erased = await store.forget_user("acme", "ana")
    assert (erased.sessions, erased.turns, erased.memories, erased.feedback) == (1, 1, 2, 1)
    assert await counts(fresh_dsn, "acme") == [0, 0, 0, 0, 0]
    assert await counts(fresh_dsn, "globex") == [1, 1, 2, 1, 1]

    await fill(store, "acme")
    erased = await store.forget_session("globex", "ana", "s1")
    assert (erased.sessions, erased.turns, erased.memories, erased.feedback) == (1, 1, 1, 1)
    assert await counts(fresh_dsn, "acme") == [1, 1, 2, 1, 1]
    assert await counts(fresh_dsn, "globex") == [0, 0, 1, 1, 0]


async def test_forget_tenant_deletes_every_row_of_it_and_nothing_else(
    store: PostgresStore, fresh_dsn: str
) -> None:
    for user in ("ana", "bob", "carol"):
        await fill(store, "acme", user)
    await fill(store, "globex")

    erased = await store.forget_tenant("acme")

    assert (erased.sessions, erased.turns, erased.memories, erased.feedback) == (3, 3, 6, 3)
    # Gone from the tables themselves (read past row-level security), not flagged
    # or hidden, and with no VACUUM run.
    assert await counts(fresh_dsn, "acme") == [0, 0, 0, 0, 0]
    assert await counts(fresh_dsn, "globex") == [1, 1, 2, 1, 1]
    for user in ("ana", "bob", "carol"):
        assert await store.search("acme", user, vectors("tea")[0], 10) == []
        assert await store.history("acme", user, "s1", 10) is None
    assert [r async for r in store.export_feedback("acme", None, None, False)] == []
    again = await store.forget_tenant("acme")
    assert (again.sessions, again.turns, again.memories, again.feedback) == (0, 0, 0, 0)


# --- row-level security: the second wall ----------------------------------------------


async def test_a_query_without_a_tenant_filter_sees_only_its_tenant(
    store: PostgresStore, fresh_dsn: str
) -> None:
    await fill(store, "acme")
    await fill(store, "globex", "bob")

    for tenant, user in (("acme", "ana"), ("globex", "bob")):
        async with store._tx("test", tenant) as conn:
            for table in TENANT_TABLES:
                cur = await conn.execute(f"SELECT tenant, user_id FROM {table}")
                rows = await cur.fetchall()
                assert rows, table
                assert set(rows) == {(tenant, user)}, table
            cur = await conn.execute(
                "SELECT count(*) FROM memories WHERE user_id IN ('ana', 'bob')"
            )
            assert await cur.fetchone() == (2,)
    # Everything is there for a role that bypasses the policies.
    assert len(await superuser_rows(fresh_dsn, "SELECT 1 FROM memories")) == 4


async def test_other_tenants_rows_can_be_neither_written_nor_changed(
    store: PostgresStore, fresh_dsn: str
) -> None:
    await fill(store, "acme")
    await fill(store, "globex", "bob")

    async with store._tx("test", "acme") as conn:
        cur = await conn.execute("UPDATE sessions SET turn_count = 99 WHERE user_id = 'bob'")
        assert cur.rowcount == 0
        cur = await conn.execute("DELETE FROM turns WHERE user_id = 'bob'")
        assert cur.rowcount == 0
    for statement in (
        "INSERT INTO sessions (tenant, user_id, session_id) VALUES ('globex', 'x', 'y')",
        "UPDATE user_memory_stats SET tenant = 'globex'",  # moving its own row away
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            async with store._tx("test", "acme") as conn:
                await conn.execute(statement)
    assert await counts(fresh_dsn, "globex") == [1, 1, 2, 1, 1]
    assert await counts(fresh_dsn, "acme") == [1, 1, 2, 1, 1]
    assert await superuser_rows(
        fresh_dsn, "SELECT turn_count FROM sessions WHERE user_id = 'bob'"
    ) == [(1,)]


async def test_outside_a_tenant_transaction_nothing_is_visible(fresh_dsn: str) -> None:
    store = PostgresStore(dimension=DIM, pool_min_size=1, pool_max_size=1)  # one connection
    await store.open(fresh_dsn)
    try:
        await fill(store, "acme")
        async with store._tx("test", "acme") as conn:
            cur = await conn.execute("SELECT count(*) FROM sessions")
            assert await cur.fetchone() == (1,)
        # The same pooled connection, after that transaction: its tenant went with
        # it, so the next user of the connection sees nothing without naming its own.
        async with store._conn("test") as conn:
            for table in TENANT_TABLES:
                cur = await conn.execute(f"SELECT count(*) FROM {table}")
                assert await cur.fetchone() == (0,), table
    finally:
        await store.close()


async def test_the_store_queries_as_a_role_bound_by_the_policies(
    store: PostgresStore, fresh_dsn: str
) -> None:
    login = await superuser_rows(
        fresh_dsn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
    )
    assert login == [(True,)]  # the embedded server's login role would bypass them
    async with store._tx("test", "acme") as conn:
        cur = await conn.execute(
            "SELECT current_user, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        )
        assert await cur.fetchone() == (ROLE, False, False)
        cur = await conn.execute(
            "SELECT count(*) FROM pg_class WHERE relname = ANY(%s)"
            " AND relrowsecurity AND relforcerowsecurity",
            (list(TENANT_TABLES),),
        )
        assert await cur.fetchone() == (len(TENANT_TABLES),)


# --- login roles ----------------------------------------------------------------------


def dsn_as(dsn: str, user: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


async def database_owned_by(
    postgres: TestPostgres, options: str, *, extension: bool = True
) -> tuple[str, str]:
    """A new login role with `options`, and a database it owns with pgvector in it
    (creating the extension needs a superuser) unless `extension` is False; its DSN
    as that role."""
    role = f"r_{uuid.uuid4().hex[:10]}"
    dsn = postgres.new_database()
    database = urlsplit(dsn).path.lstrip("/")
    async with await psycopg.AsyncConnection.connect(postgres.dsn, autocommit=True) as conn:
        await conn.execute(f"CREATE ROLE {role} LOGIN {options}")
        await conn.execute(f'ALTER DATABASE "{database}" OWNER TO {role}')
    if extension:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    return role, dsn_as(dsn, role)


async def test_an_owner_that_is_no_superuser_is_bound_by_forced_policies(
    postgres: TestPostgres, store: PostgresStore
) -> None:
    # `store` has created the shared role on this server already; this owner may
    # not create roles, and needs none: FORCE binds the tables' owner.
    role, dsn = await database_owned_by(postgres, "NOSUPERUSER NOBYPASSRLS")
    owned = PostgresStore(dimension=DIM, pool_min_size=1, pool_max_size=2)
    await owned.open(dsn)
    try:
        await fill(owned, "acme")
        await fill(owned, "globex", "bob")
        async with owned._tx("test", "acme") as conn:
            cur = await conn.execute("SELECT current_user, tenant, user_id FROM sessions")
            assert await cur.fetchall() == [(role, "acme", "ana")]
            cur = await conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'turns'")
            assert await cur.fetchone() == (role,)
    finally:
        await owned.close()


async def test_a_login_role_that_bypasses_the_policies_and_cannot_leave_them_fails_start(
    postgres: TestPostgres, store: PostgresStore
) -> None:
    _, dsn = await database_owned_by(postgres, "NOSUPERUSER BYPASSRLS")
    refused = PostgresStore(dimension=DIM)
    with pytest.raises(FailedPrecondition, match="bypasses row-level security"):
        await refused.open(dsn)
    await refused.close()


async def test_a_role_that_may_not_create_pgvector_fails_start_saying_so(
    postgres: TestPostgres,
) -> None:
    _, dsn = await database_owned_by(postgres, "NOSUPERUSER", extension=False)
    refused = PostgresStore(dimension=DIM)
    with pytest.raises(FailedPrecondition, match='permission denied to create extension "vector"'):
        await refused.open(dsn)
    await refused.close()


def test_pgvector_before_0_8_is_refused() -> None:
    assert [pgvector_supported(v) for v in ("0.8.0", "0.8.6", "0.10.1", "1.0")] == [True] * 4
    assert [pgvector_supported(v) for v in ("0.7.4", "0.5.1", "none", "")] == [False] * 4


async def test_a_table_without_forced_policies_fails_start(
    store: PostgresStore, fresh_dsn: str
) -> None:
    async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
        await conn.execute("ALTER TABLE feedback NO FORCE ROW LEVEL SECURITY")
    again = PostgresStore(dimension=DIM)
    with pytest.raises(FailedPrecondition, match="row-level security is off on feedback"):
        await again.open(fresh_dsn)
    await again.close()


# --- rows from before tenants ---------------------------------------------------------


async def test_rows_stored_before_tenants_belong_to_the_default_tenant(fresh_dsn: str) -> None:
    first = [m for m in migration_files() if m[0] == 1]
    async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
        # Version 1 alone, as a store of that version left it.
        async with conn.transaction():
            await conn.execute(
                "CREATE TABLE schema_migrations ("
                " version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            script = first[0][1]
            for key, value in PARAMS.items():
                script = script.replace("{{" + key + "}}", str(value))
            await conn.execute(script.encode())
            await conn.execute("INSERT INTO schema_migrations VALUES (1)")
        await conn.execute(
            "INSERT INTO sessions (user_id, session_id, turn_count) VALUES ('ana', 's1', 1)"
        )
        await conn.execute(
            "INSERT INTO turns (user_id, session_id, turn_index, request_id, messages)"
            " VALUES ('ana', 's1', 0, 't0', '[{\"role\": \"user\", \"content\": \"old\"}]')"
        )
        await conn.execute(
            "INSERT INTO feedback (user_id, turn_request_id, session_id, score)"
            " VALUES ('ana', 't0', 's1', 1)"
        )
        await conn.execute(
            "INSERT INTO memories (memory_id, user_id, request_id, position, text, embedding)"
            " VALUES (gen_random_uuid(), 'ana', 'm0', 0, 'old memory', %s)",
            (str(vectors("old memory")[0].tolist()),),
        )
        await conn.execute("INSERT INTO user_memory_stats VALUES ('ana', 1)")
        assert await migrate(conn, PARAMS) == [2]

    assert await counts(fresh_dsn, DEFAULT_TENANT) == [1, 1, 1, 1, 1]
    store = PostgresStore(dimension=DIM, pool_min_size=1, pool_max_size=2)
    await store.open(fresh_dsn)
    try:
        history = await store.history(DEFAULT_TENANT, "ana", "s1", 10)
        assert history is not None
        assert history.turns[0].messages[0].content == "old"
        assert [
            m.text for m in await store.search(DEFAULT_TENANT, "ana", vectors("old")[0], 5)
        ] == ["old memory"]
        assert await store.history("acme", "ana", "s1", 10) is None
        # New rows go on from the old ones, in their tenant's keys.
        appended = await store.append_turn(
            DEFAULT_TENANT, "ana", "s1", "t1", messages=HELLO, metadata={}
        )
        assert appended.turn_index == 1
    finally:
        await store.close()
    # The column keeps no default: an insert that names no tenant is refused.
    with pytest.raises(psycopg.errors.NotNullViolation):
        await superuser_rows(
            fresh_dsn, "INSERT INTO sessions (user_id, session_id) VALUES ('x', 'y') RETURNING 1"
        )
