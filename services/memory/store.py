"""PostgreSQL + pgvector implementation of MemoryStore.

Connection failures become Unavailable (UNAVAILABLE to clients), statement
timeouts DeadlineExceeded; every write is one transaction, committed before the
method returns. Schema changes are numbered SQL files in migrations/, applied at
start under an advisory lock so several replicas can start at once.

Tenants: every query runs in a transaction that names its tenant in the setting
`atalaya.tenant` (set_config(..., true): for that transaction only, so a pooled
connection carries nothing over), and every statement also filters by tenant. The
tables' row-level security policies (migration 0002) hide and refuse other
tenants' rows, so a statement that forgets its filter still stays in its tenant.
The policies bind every role but superusers and BYPASSRLS roles; a login role of
that kind (the embedded server's `postgres`, the chart's database user) runs the
store's queries as ROLE below instead (SET ROLE on each pooled connection)."""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from importlib import resources
from typing import Any

import psycopg
from pgvector.psycopg import register_vector_async
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from services.common import semconv
from services.common.chat import ChatMessage
from services.common.embedder import Vector
from services.common.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from services.common.telemetry import meter
from services.memory.domain import (
    AppendResult,
    FeedbackRecord,
    ForgetCounts,
    History,
    MemoryStore,
    NewMemory,
    Recalled,
    SessionTurn,
)

log = logging.getLogger(__name__)

MIGRATION_LOCK_ID = 0x61746C6D  # pg_advisory_xact_lock key for schema changes
#: The role created by migration 0002 for login roles that bypass row-level security.
ROLE = "atalaya_memory"
#: The setting the row-level security policies compare each row's tenant with.
TENANT_SETTING = "atalaya.tenant"
#: Tables whose rows belong to a tenant, each under row-level security.
TENANT_TABLES = ("sessions", "turns", "memories", "user_memory_stats", "feedback")
#: The oldest pgvector the store runs on: every connection sets hnsw.iterative_scan
#: (pgvector 0.8.0), so that filtered HNSW searches return their k rows.
MIN_PGVECTOR = (0, 8)


def pgvector_supported(version: str) -> bool:
    """Whether pgvector `version` ("0.8.1") is MIN_PGVECTOR or newer."""
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return found >= MIN_PGVECTOR


def migration_files() -> list[tuple[int, str]]:
    """(version, sql) for every migrations/NNNN_*.sql, in order."""
    files = []
    for entry in resources.files("services.memory.migrations").iterdir():
        if entry.name.endswith(".sql"):
            files.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(files)


async def migrate(conn: psycopg.AsyncConnection[Any], params: dict[str, int]) -> list[int]:
    """Apply pending migrations; return the versions applied."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in await cur.fetchall()}
        for version, sql in migration_files():
            if version in done:
                continue
            script = sql
            for key, value in params.items():
                script = script.replace("{{" + key + "}}", str(int(value)))
            await conn.execute(script.encode())
            await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


@contextlib.contextmanager
def db_errors() -> Iterator[None]:
    """Map driver failures to domain errors with client-safe messages."""
    try:
        yield
    except PoolTimeout as exc:
        raise Unavailable("database unavailable") from exc
    except psycopg.errors.QueryCanceled as exc:
        raise DeadlineExceeded("database query timed out") from exc
    except psycopg.OperationalError as exc:
        raise Unavailable("database unavailable") from exc


def _messages_json(messages: Sequence[ChatMessage]) -> Jsonb:
    return Jsonb([{"role": m.role, "content": m.content, "name": m.name} for m in messages])


def _messages(raw: list[dict[str, str]]) -> list[ChatMessage]:
    return [ChatMessage(m["role"], m["content"], m.get("name", "")) for m in raw]


class PostgresStore(MemoryStore):
    def __init__(
        self,
        *,
        dimension: int,
        pool_min_size: int = 1,
        pool_max_size: int = 10,
        pool_timeout_s: float = 2.0,
        statement_timeout_ms: int = 5000,
        hnsw_m: int = 16,
        hnsw_ef_construction: int = 64,
        hnsw_ef_search: int = 100,
        exact_search_max_memories: int = 10_000,
    ) -> None:
        self.dimension = dimension
        self._migration_params = {
            "dimension": dimension,
            "hnsw_m": hnsw_m,
            "hnsw_ef_construction": hnsw_ef_construction,
        }
        self._ef_search = hnsw_ef_search
        self._statement_timeout_ms = statement_timeout_ms
        self._exact_max = exact_search_max_memories
        self._pool_args: dict[str, Any] = {
            "min_size": pool_min_size,
            "max_size": pool_max_size,
            "timeout": pool_timeout_s,
        }
        self._pool: AsyncConnectionPool[Any] | None = None
        self._role: str | None = None  # SET ROLE on each connection, when needed
        self._db_duration = meter().create_histogram(
            semconv.METRIC_MEMORY_DB_DURATION, unit="ms", description="Store operation time"
        )

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await register_vector_async(conn)
        role = f"SET ROLE {ROLE};" if self._role else ""
        await conn.execute(
            f"{role}"
            f"SET statement_timeout = {int(self._statement_timeout_ms)};"
            f"SET hnsw.ef_search = {int(self._ef_search)};"
            "SET hnsw.iterative_scan = relaxed_order"
        )

    async def open(self, dsn: str, connect_timeout_s: float | None = None) -> None:
        """Migrate the schema at `dsn`, check the dimension and that row-level
        security binds the store's queries, open the pool. `connect_timeout_s` bounds
        the wait for the first connection (libpq's connect_timeout: whole seconds, at
        least 2); None: the driver's default."""
        options: dict[str, Any] = {"autocommit": True}
        if connect_timeout_s is not None:
            options["connect_timeout"] = max(2, math.ceil(connect_timeout_s))
        with db_errors():
            async with await psycopg.AsyncConnection.connect(dsn, **options) as conn:
                try:
                    applied = await migrate(conn, self._migration_params)
                except psycopg.errors.InsufficientPrivilege as exc:
                    raise FailedPrecondition(
                        "the database role may not apply the schema: "
                        f"{exc.diag.message_primary} (see the README's PostgreSQL requirements)"
                    ) from exc
                await _check_pgvector(conn)
                cur = await conn.execute(
                    "SELECT value FROM store_info WHERE key = 'embedding_dimension'"
                )
                row = await cur.fetchone()
                self._role = await _query_role(conn)
        if applied:
            log.info("schema migrated", extra={"versions": applied})
        stored = int(row[0]) if row else None
        if stored != self.dimension:
            raise FailedPrecondition(
                f"store holds {stored}-dimensional vectors, settings say {self.dimension}"
            )
        self._pool = AsyncConnectionPool(
            dsn,
            open=False,
            configure=self._configure,
            check=AsyncConnectionPool.check_connection,
            kwargs={"autocommit": True},
            name="memory",
            **self._pool_args,
        )
        await self._pool.open(wait=False)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    @contextlib.asynccontextmanager
    async def _conn(self, op: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            raise Unavailable("database not connected yet")
        started = time.perf_counter()
        try:
            with db_errors():
                async with self._pool.connection() as conn:
                    yield conn
        finally:
            self._db_duration.record((time.perf_counter() - started) * 1000.0, {"op": op})

    @contextlib.asynccontextmanager
    async def _tx(self, op: str, tenant: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection inside a transaction confined to `tenant`: the row-level
        security policies see the tenant until the transaction ends."""
        if not tenant:
            raise ValueError("a store operation needs a tenant")
        async with self._conn(op) as conn, conn.transaction():
            await conn.execute("SELECT set_config(%s, %s, true)", (TENANT_SETTING, tenant))
            yield conn

    async def healthy(self) -> bool:
        try:
            async with self._conn("health") as conn:
                await conn.execute("SELECT 1")
            return True
        except (Unavailable, DeadlineExceeded):
            return False

    async def append_turn(
        self,
        tenant: str,
        user_id: str,
        session_id: str,
        request_id: str,
        *,
        messages: Sequence[ChatMessage],
        metadata: dict[str, str],
    ) -> AppendResult:
        key = (tenant, user_id, session_id)
        async with self._tx("append_turn", tenant) as conn:
            await conn.execute(
                "INSERT INTO sessions (tenant, user_id, session_id) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                key,
            )
            cur = await conn.execute(
                "SELECT turn_count FROM sessions"
                " WHERE tenant = %s AND user_id = %s AND session_id = %s FOR UPDATE",
                key,
            )
            (turn_count,) = await cur.fetchone() or (0,)
            cur = await conn.execute(
                "SELECT turn_index FROM turns WHERE tenant = %s AND user_id = %s"
                " AND session_id = %s AND request_id = %s",
                (*key, request_id),
            )
            existing = await cur.fetchone()
            if existing is not None:
                return AppendResult(turn_index=existing[0], created=False)
            await conn.execute(
                "INSERT INTO turns"
                " (tenant, user_id, session_id, turn_index, request_id, messages, metadata)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (*key, turn_count, request_id, _messages_json(messages), Jsonb(metadata)),
            )
            await conn.execute(
                "UPDATE sessions SET turn_count = turn_count + 1, updated_at = now()"
                " WHERE tenant = %s AND user_id = %s AND session_id = %s",
                key,
            )
        return AppendResult(turn_index=turn_count, created=True)

    async def history(
        self, tenant: str, user_id: str, session_id: str, last_n: int
    ) -> History | None:
        key = (tenant, user_id, session_id)
        async with self._tx("history", tenant) as conn:
            cur = await conn.execute(
                "SELECT turn_count FROM sessions"
                " WHERE tenant = %s AND user_id = %s AND session_id = %s",
                key,
            )
            row = await cur.fetchone()
            if row is None:
                return None
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT request_id, turn_index, messages, metadata, created_at FROM turns"
                " WHERE tenant = %s AND user_id = %s AND session_id = %s"
                " ORDER BY turn_index DESC LIMIT %s",
                (*key, last_n),
            )
            rows = await cur.fetchall()
        turns = [
            SessionTurn(
                request_id=r["request_id"],
                index=r["turn_index"],
                messages=_messages(r["messages"]),
                metadata=r["metadata"],
                created_at=r["created_at"],
            )
            for r in reversed(rows)
        ]
        return History(turns=turns, total_turns=row[0])

    async def memory_ids_for_request(self, tenant: str, user_id: str, request_id: str) -> list[str]:
        async with self._tx("memory_ids", tenant) as conn:
            return await _memory_ids(conn, tenant, user_id, request_id)

    async def add_memories(
        self,
        tenant: str,
        user_id: str,
        request_id: str,
        memories: Sequence[NewMemory],
        vectors: Vector,
    ) -> list[str]:
        ids = [uuid.uuid4() for _ in memories]
        rows = [
            (
                mid,
                tenant,
                user_id,
                request_id,
                i,
                m.session_id,
                m.text,
                Jsonb(m.metadata),
                vectors[i],
            )
            for i, (mid, m) in enumerate(zip(ids, memories, strict=True))
        ]
        async with self._tx("add_memories", tenant) as conn:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO memories (memory_id, tenant, user_id, request_id, position,"
                    " session_id, text, metadata, embedding)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (tenant, user_id, request_id, position) DO NOTHING",
                    rows,
                )
                inserted = cur.rowcount
            if inserted > 0:
                await conn.execute(
                    "INSERT INTO user_memory_stats (tenant, user_id, memories) VALUES (%s, %s, %s)"
                    " ON CONFLICT (tenant, user_id)"
                    " DO UPDATE SET memories = user_memory_stats.memories + EXCLUDED.memories",
                    (tenant, user_id, inserted),
                )
            return await _memory_ids(conn, tenant, user_id, request_id)

    async def search(
        self, tenant: str, user_id: str, query: Vector, k: int, *, exact: bool | None = None
    ) -> list[Recalled]:
        async with self._tx("search", tenant) as conn:
            if exact is None:
                cur = await conn.execute(
                    "SELECT memories FROM user_memory_stats WHERE tenant = %s AND user_id = %s",
                    (tenant, user_id),
                )
                row = await cur.fetchone()
                count = row[0] if row else 0
                if count == 0:
                    return []
                exact = count <= self._exact_max
            results = await self._search(conn, tenant, user_id, query, k, exact=exact)
            if not exact and len(results) < k:
                # The index scan can stop early for users with sparse rows; be exact.
                results = await self._search(conn, tenant, user_id, query, k, exact=True)
        return results

    async def _search(
        self,
        conn: psycopg.AsyncConnection[Any],
        tenant: str,
        user_id: str,
        query: Vector,
        k: int,
        *,
        exact: bool,
    ) -> list[Recalled]:
        columns = "memory_id, text, metadata, session_id, created_at"
        if exact:
            # MATERIALIZED keeps the planner from using the ANN index: all of the
            # user's rows are scored, so the answer is exact.
            sql = (
                f"WITH mine AS MATERIALIZED (SELECT {columns}, embedding <=> %s AS distance"
                " FROM memories WHERE tenant = %s AND user_id = %s)"
                f" SELECT {columns}, distance FROM mine ORDER BY distance LIMIT %s"
            )
        else:
            sql = (
                f"SELECT {columns}, embedding <=> %s AS distance FROM memories"
                " WHERE tenant = %s AND user_id = %s ORDER BY 6 LIMIT %s"
            )
        cur = await conn.execute(sql, (query, tenant, user_id, k))
        rows = await cur.fetchall()
        found = [
            Recalled(
                memory_id=str(r[0]),
                text=r[1],
                metadata=r[2],
                session_id=r[3],
                created_at=r[4],
                score=1.0 - float(r[5]),
            )
            for r in rows
        ]
        # relaxed_order iterative scans may return neighbours slightly out of order.
        found.sort(key=lambda m: m.score, reverse=True)
        return found

    async def forget_user(self, tenant: str, user_id: str) -> ForgetCounts:
        where = "tenant = %s AND user_id = %s"
        args = (tenant, user_id)
        async with self._tx("forget_user", tenant) as conn:
            feedback = await self._delete(conn, "feedback", where, args)
            turns = await self._delete(conn, "turns", where, args)
            sessions = await self._delete(conn, "sessions", where, args)
            memories = await self._delete(conn, "memories", where, args)
            await self._delete(conn, "user_memory_stats", where, args)
        return ForgetCounts(sessions, turns, memories, feedback)

    async def forget_session(self, tenant: str, user_id: str, session_id: str) -> ForgetCounts:
        where = "tenant = %s AND user_id = %s AND session_id = %s"
        args = (tenant, user_id, session_id)
        async with self._tx("forget_session", tenant) as conn:
            feedback = await self._delete(conn, "feedback", where, args)
            turns = await self._delete(conn, "turns", where, args)
            sessions = await self._delete(conn, "sessions", where, args)
            memories = await self._delete(conn, "memories", where, args)
            if memories:
                await conn.execute(
                    "UPDATE user_memory_stats SET memories = memories - %s"
                    " WHERE tenant = %s AND user_id = %s",
                    (memories, tenant, user_id),
                )
        return ForgetCounts(sessions, turns, memories, feedback)

    async def forget_tenant(self, tenant: str) -> ForgetCounts:
        where = "tenant = %s"
        args = (tenant,)
        async with self._tx("forget_tenant", tenant) as conn:
            feedback = await self._delete(conn, "feedback", where, args)
            turns = await self._delete(conn, "turns", where, args)
            sessions = await self._delete(conn, "sessions", where, args)
            memories = await self._delete(conn, "memories", where, args)
            await self._delete(conn, "user_memory_stats", where, args)
        return ForgetCounts(sessions, turns, memories, feedback)

    @staticmethod
    async def _delete(
        conn: psycopg.AsyncConnection[Any], table: str, where: str, args: tuple[str, ...]
    ) -> int:
        cur = await conn.execute(f"DELETE FROM {table} WHERE {where}", args)
        return max(cur.rowcount, 0)

    async def record_feedback(
        self, tenant: str, user_id: str, turn_request_id: str, score: float, comment: str
    ) -> bool | None:
        async with self._tx("record_feedback", tenant) as conn:
            cur = await conn.execute(
                "SELECT session_id FROM turns WHERE tenant = %s AND user_id = %s"
                " AND request_id = %s ORDER BY created_at DESC LIMIT 1",
                (tenant, user_id, turn_request_id),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            cur = await conn.execute(
                "INSERT INTO feedback"
                " (tenant, user_id, turn_request_id, session_id, score, comment)"
                " VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (tenant, user_id, turn_request_id) DO UPDATE SET session_id ="
                " EXCLUDED.session_id, score = EXCLUDED.score, comment = EXCLUDED.comment,"
                " recorded_at = now()"
                " RETURNING (xmax = 0)",
                (tenant, user_id, turn_request_id, row[0], score, comment),
            )
            created = await cur.fetchone()
        return bool(created and created[0])

    async def export_feedback(
        self, tenant: str, since: datetime | None, user_id: str | None, include_messages: bool
    ) -> AsyncIterator[FeedbackRecord]:
        sql = (
            "SELECT f.user_id, f.session_id, f.turn_request_id, f.score, f.comment,"
            " f.recorded_at, t.messages, t.metadata FROM feedback f JOIN turns t"
            " ON t.tenant = f.tenant AND t.user_id = f.user_id"
            " AND t.session_id = f.session_id AND t.request_id = f.turn_request_id"
            " WHERE f.tenant = %(tenant)s"
            " AND (%(since)s::timestamptz IS NULL OR f.recorded_at >= %(since)s)"
            " AND (%(user)s::text IS NULL OR f.user_id = %(user)s)"
            " ORDER BY f.recorded_at, f.user_id, f.turn_request_id"
        )
        async with self._tx("export_feedback", tenant) as conn:
            cur = conn.cursor(name="feedback_export")
            await cur.execute(sql, {"tenant": tenant, "since": since, "user": user_id})
            async for r in cur:
                yield FeedbackRecord(
                    user_id=r[0],
                    session_id=r[1],
                    turn_request_id=r[2],
                    score=float(r[3]),
                    comment=r[4],
                    recorded_at=r[5],
                    messages=_messages(r[6]) if include_messages else [],
                    metadata=r[7],
                )


async def _memory_ids(
    conn: psycopg.AsyncConnection[Any], tenant: str, user_id: str, request_id: str
) -> list[str]:
    cur = await conn.execute(
        "SELECT memory_id FROM memories WHERE tenant = %s AND user_id = %s AND request_id = %s"
        " ORDER BY position",
        (tenant, user_id, request_id),
    )
    return [str(r[0]) for r in await cur.fetchall()]


async def _check_pgvector(conn: psycopg.AsyncConnection[Any]) -> None:
    cur = await conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    row = await cur.fetchone()
    version = str(row[0]) if row else "none"
    if not pgvector_supported(version):
        raise FailedPrecondition(
            f"the database has pgvector {version}; the store needs "
            f"{'.'.join(map(str, MIN_PGVECTOR))} or newer (after upgrading the package: "
            "ALTER EXTENSION vector UPDATE)"
        )


async def _query_role(conn: psycopg.AsyncConnection[Any]) -> str | None:
    """The role the store's queries must run as (None: the login role itself), once
    it is sure that row-level security binds them: every tenant table has its
    policies enabled and forced, and the querying role bypasses neither."""
    cur = await conn.execute(
        "SELECT relname FROM pg_class WHERE oid = ANY(%s::regclass[])"
        " AND NOT (relrowsecurity AND relforcerowsecurity)",
        (list(TENANT_TABLES),),
    )
    unprotected = [r[0] for r in await cur.fetchall()]
    if unprotected:
        raise FailedPrecondition(f"row-level security is off on {', '.join(unprotected)}")
    role = None if not await _bypasses_rls(conn) else ROLE
    if role is not None:
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL ROLE {role}")
                still = await _bypasses_rls(conn)
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.InvalidParameterValue) as exc:
            raise FailedPrecondition(
                f"the database login role bypasses row-level security and cannot SET ROLE {role}"
            ) from exc
        if still:
            raise FailedPrecondition(f"role {role} bypasses row-level security")
    return role


async def _bypasses_rls(conn: psycopg.AsyncConnection[Any]) -> bool:
    cur = await conn.execute(
        "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"
    )
    row = await cur.fetchone()
    return bool(row and row[0])
