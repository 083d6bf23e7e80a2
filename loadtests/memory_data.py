"""The memory bench's data: synthetic memory vectors derived from real sentence
embeddings, bulk-loaded into a real PostgreSQL with the service's own schema."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from loadtests.figures import progress
from loadtests.local_model import Floats
from services.common.identity import DEFAULT_TENANT
from services.memory.config import MemorySettings

if TYPE_CHECKING:
    import psycopg  # the memory extra's driver, imported where used

USER_ID = "bench-user"
#: The bench recalls with no credentials: as the default tenant's user.
TENANT = DEFAULT_TENANT
RECALL_K = 10


@dataclass(frozen=True)
class SyntheticMemories:
    """Memory vectors built from real sentence embeddings: each is a normalised
    mixture a*b_i + (1-a)*b_j of two base embeddings plus small Gaussian noise."""

    vectors: Floats  # (n, dim), unit length
    texts: list[str]
    queries: Floats  # (q, dim), unit length, from pairs not used by any memory


def _query_pairs(
    n_base: int, used: set[tuple[int, int]], n_queries: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """`n_queries` distinct pairs of base rows, none of them in `used`."""
    pairs: list[tuple[int, int]] = []
    while len(pairs) < n_queries:
        a, b = (int(x) for x in rng.choice(n_base, size=2, replace=False))
        pair = (min(a, b), max(a, b))
        if pair not in used:
            used.add(pair)
            pairs.append(pair)
    return pairs


def synthesise(
    base: Floats,
    base_texts: Sequence[str],
    n: int,
    n_queries: int,
    *,
    rng: np.random.Generator,
    noise: float = 0.1,
) -> SyntheticMemories:
    """`noise` is the expected norm of the added noise (the mixture has norm ~1)."""
    n_base, dim = base.shape
    sigma = noise / np.sqrt(dim)

    def mix(i: npt.NDArray[np.int64], j: npt.NDArray[np.int64]) -> Floats:
        a = rng.uniform(0.1, 0.9, size=(len(i), 1)).astype(np.float32)
        v = a * base[i] + (1.0 - a) * base[j]
        v += rng.normal(scale=sigma, size=v.shape).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v.astype(np.float32)

    i = rng.integers(n_base, size=n)
    j = (i + rng.integers(1, n_base, size=n)) % n_base  # j != i
    used = {(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist(), strict=True)}
    pairs = _query_pairs(n_base, used, n_queries, rng)
    qi = np.array([p[0] for p in pairs], dtype=np.int64)
    qj = np.array([p[1] for p in pairs], dtype=np.int64)
    texts = [f"{base_texts[x]} {base_texts[y]}" for x, y in zip(i, j, strict=True)]
    return SyntheticMemories(vectors=mix(i, j), texts=texts, queries=mix(qi, qj))


def exact_top_k(vectors: Floats, queries: Floats, k: int) -> list[set[int]]:
    """Row indices of the k most cosine-similar vectors per query (numpy, brute force)."""
    scores = queries @ vectors.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return [set(row.tolist()) for row in top]


# ------------------------------------------------------------------- database


def store_defaults() -> dict[str, int]:
    """The memory service's default store settings (the bench runs with them)."""
    fields = MemorySettings.model_fields
    names = ("embedding_dimension", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search")
    return {name: int(fields[name].default) for name in (*names, "exact_search_max_memories")}


async def migrate(dsn: str, defaults: dict[str, int]) -> None:
    """The service's own schema, through its store's migrations."""
    from services.memory.store import PostgresStore

    store = PostgresStore(
        dimension=defaults["embedding_dimension"],
        hnsw_m=defaults["hnsw_m"],
        hnsw_ef_construction=defaults["hnsw_ef_construction"],
    )
    await store.open(dsn)
    await store.close()


@dataclass(frozen=True)
class LoadReport:
    memory_ids: list[str]
    copy_s: float
    index_s: float
    index_definition: str
    shared_buffers: str


def _copy_rows(
    conn: psycopg.Connection[Any], ids: Sequence[uuid.UUID], data: SyntheticMemories
) -> None:
    """COPY the user's memories (binary format)."""
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY memories (memory_id, tenant, user_id, request_id, position, text, embedding)"
            " FROM STDIN WITH (FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(["uuid", "text", "text", "text", "int4", "text", "vector"])
        for n, (memory_id, text) in enumerate(zip(ids, data.texts, strict=True)):
            row = (memory_id, TENANT, USER_ID, f"bench-{n // 64}", n % 64, text, data.vectors[n])
            copy.write_row(row)


def load_memories(dsn: str, data: SyntheticMemories) -> LoadReport:
    """Bulk-load one user's memories: drop the HNSW index created by the schema
    migration, COPY the rows, recreate the index from its own definition, record
    the count in user_memory_stats (as add_memories does) and ANALYZE."""
    import psycopg
    from pgvector.psycopg import register_vector

    ids = [uuid.uuid4() for _ in range(len(data.texts))]
    with psycopg.connect(dsn, autocommit=True) as conn:
        register_vector(conn)
        row = conn.execute(
            "SELECT indexdef FROM pg_indexes"
            " WHERE tablename = 'memories' AND indexname = 'memories_embedding'"
        ).fetchone()
        if row is None:
            raise RuntimeError("the schema has no memories_embedding index")
        index_definition = str(row[0])
        conn.execute("DROP INDEX memories_embedding")
        started = time.perf_counter()
        _copy_rows(conn, ids, data)
        copy_s = time.perf_counter() - started
        progress(f"copied {len(ids)} rows in {copy_s:.1f}s; building the HNSW index")
        started = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute(index_definition.encode())
        index_s = time.perf_counter() - started
        conn.execute(
            "INSERT INTO user_memory_stats (tenant, user_id, memories) VALUES (%s, %s, %s)",
            (TENANT, USER_ID, len(ids)),
        )
        conn.execute("ANALYZE memories")
        shared = conn.execute("SHOW shared_buffers").fetchone()
    return LoadReport(
        memory_ids=[str(i) for i in ids],
        copy_s=copy_s,
        index_s=index_s,
        index_definition=index_definition,
        shared_buffers=str(shared[0]) if shared else "",
    )


def hnsw_plan_uses_index(dsn: str, query: Floats) -> bool:
    """Does the planner answer the service's HNSW-path query with the HNSW index?"""
    import psycopg
    from pgvector.psycopg import register_vector

    with psycopg.connect(dsn, autocommit=True) as conn:
        register_vector(conn)
        rows = conn.execute(
            "EXPLAIN SELECT memory_id, text, metadata, session_id, created_at,"
            " embedding <=> %s AS distance FROM memories WHERE tenant = %s AND user_id = %s"
            " ORDER BY 6 LIMIT %s",
            (query, TENANT, USER_ID, RECALL_K),
        ).fetchall()
    return any("memories_embedding" in str(r[0]) for r in rows)
