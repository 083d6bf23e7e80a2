"""Memory figures for `make bench` (loadtests/figures.py has the output format).

memory_recall_p50/p99  Recall (k=10, query vector) through the memory service on
                       a real PostgreSQL holding N memories of one user (HNSW
                       path); baseline: the same Recall on the exact path.
memory_recall_at_10    recall@10 of those HNSW answers against the exact ones.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.figures import Figure, Output, Samples, progress, rounded
from loadtests.local_model import LocalModel
from loadtests.memory_data import (
    RECALL_K,
    USER_ID,
    LoadReport,
    SyntheticMemories,
    exact_top_k,
    hnsw_plan_uses_index,
    load_memories,
    migrate,
    store_defaults,
    synthesise,
)
from loadtests.processes import running
from loadtests.sentences import make_sentences
from services.client import MemoryClient
from services.common.process import HOST, free_port

MEMORY_FIGURES = ("memory_recall_p50", "memory_recall_p99", "memory_recall_at_10")
#: The exact-path service's threshold: above any user's count.
EXACT_PATH_MAX_MEMORIES = 10**12
BASELINE_NOTES = (
    "baseline: the same Recall through a second memory service process on the same "
    "database, started with ATALAYA_MEMORY_EXACT_SEARCH_MAX_MEMORIES above the user's "
    "count so the store takes its exact path (every row scored); the same queries, "
    "after the HNSW block, one call at a time"
)


def _memory_env(dsn: str, exact_max: int) -> Callable[[int], dict[str, str]]:
    def env(port: int) -> dict[str, str]:
        return {
            "ATALAYA_MEMORY_HOST": HOST,
            "ATALAYA_MEMORY_PORT": str(port),
            "ATALAYA_MEMORY_DSN": dsn,
            # Vector queries never reach the embedding service; point at a closed port.
            "ATALAYA_MEMORY_EMBEDDING__TARGET": f"{HOST}:{free_port()}",
            "ATALAYA_MEMORY_EXACT_SEARCH_MAX_MEMORIES": str(exact_max),
            "ATALAYA_MEMORY_GRACE_PERIOD_S": "2",
        }

    return env


# --------------------------------------------------------------------- Recall


@dataclass
class RecallRun:
    samples: list[float] = field(default_factory=list)  # seconds per call, client side
    search: list[float] = field(default_factory=list)  # the service's own "search" phase
    answers: list[list[str]] = field(default_factory=list)  # memory ids, best first

    @property
    def latencies(self) -> Samples:
        return Samples.ms(self.samples)

    @property
    def server_search(self) -> Samples:
        return Samples.ms(self.search)


async def _recall(client: MemoryClient, query: list[float], into: RecallRun | None) -> None:
    started = time.perf_counter()
    response = await client.recall(user_id=USER_ID, k=RECALL_K, embedding=query)
    elapsed = time.perf_counter() - started
    if into is not None:
        into.samples.append(elapsed)
        into.search.append(response.timing.phases_ms["search"] / 1000.0)
        into.answers.append([m.memory_id for m in response.memories])


async def _recall_block(target: str, queries: list[list[float]], warmup: int) -> RecallRun:
    run = RecallRun()
    async with MemoryClient.connect(target) as client:
        for i in range(warmup):
            await _recall(client, queries[i % len(queries)], None)
        for query in queries:
            await _recall(client, query, run)
    return run


async def measure_recall(
    hnsw_target: str, exact_target: str, queries: list[list[float]], warmup: int
) -> tuple[RecallRun, RecallRun]:
    """All queries through the HNSW-path service, then all through the exact-path
    one; one call at a time. Not interleaved per query: each exact Recall scans the
    whole table, which pushes the index out of the CPU caches and shared buffers and
    would add about a millisecond to the HNSW call after it."""
    hnsw = await _recall_block(hnsw_target, queries, warmup)
    progress(f"HNSW path: p50 {hnsw.latencies.p50:.2f} ms")
    exact = await _recall_block(exact_target, queries, warmup)
    progress(f"exact path: p50 {exact.latencies.p50:.2f} ms")
    return hnsw, exact


def _recall_at_k(answers: Sequence[Sequence[str]], truth: Sequence[set[str]]) -> list[float]:
    return [len(set(a[:RECALL_K]) & t) / RECALL_K for a, t in zip(answers, truth, strict=True)]


# ---------------------------------------------------------------------- run


@dataclass(frozen=True)
class MemoryRun:
    data: SyntheticMemories
    loaded: LoadReport
    uses_index: bool
    hnsw: RecallRun
    exact: RecallRun


def _synthetic_data(
    args: argparse.Namespace, model: LocalModel, defaults: dict[str, int]
) -> SyntheticMemories:
    if model.dimension != defaults["embedding_dimension"]:
        raise RuntimeError(
            f"model dimension {model.dimension} != store {defaults['embedding_dimension']}"
        )
    rng = np.random.default_rng(args.seed + 1)
    base_texts = make_sentences(args.base_sentences, rng)
    started = time.perf_counter()
    base = model.encode(base_texts, batch_size=64)
    progress(f"embedded {len(base_texts)} base sentences in {time.perf_counter() - started:.1f}s")
    data = synthesise(base, base_texts, args.memories, args.queries, rng=rng)
    progress(f"synthesised {args.memories} memory vectors and {args.queries} queries")
    return data


def _hnsw_exact_max(args: argparse.Namespace, defaults: dict[str, int]) -> int:
    """The HNSW run keeps the service's default exact-search threshold unless the
    data set is too small to be above it."""
    memories: int = args.memories
    return min(defaults["exact_search_max_memories"], memories - 1)


def _measure(
    args: argparse.Namespace,
    data: SyntheticMemories,
    defaults: dict[str, int],
    workdir: Path,
) -> MemoryRun:
    """Load the data into an embedded PostgreSQL, then Recall through an HNSW-path
    and an exact-path memory service on it."""
    from services.memory.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(workdir / "postgres")
    try:
        dsn = pg.start()
        progress("embedded PostgreSQL running (Unix socket)")
        asyncio.run(migrate(dsn, defaults))
        loaded = load_memories(dsn, data)
        progress(f"HNSW index built in {loaded.index_s:.1f}s")
        uses_index = hnsw_plan_uses_index(dsn, data.queries[0])
        queries = [q.tolist() for q in data.queries]
        hnsw_env = _memory_env(dsn, _hnsw_exact_max(args, defaults))
        exact_env = _memory_env(dsn, EXACT_PATH_MAX_MEMORIES)
        with (
            running("services.memory", hnsw_env, workdir, "memory-hnsw") as hnsw_target,
            running("services.memory", exact_env, workdir, "memory-exact") as exact_target,
        ):
            progress(f"Recall: {args.queries} queries through each service, one at a time")
            hnsw, exact = asyncio.run(
                measure_recall(hnsw_target, exact_target, queries, args.recall_warmup)
            )
    finally:
        pg.stop()
    return MemoryRun(data, loaded, uses_index, hnsw, exact)


# -------------------------------------------------------------------- figures


def _common(args: argparse.Namespace, defaults: dict[str, int], run: MemoryRun) -> dict[str, Any]:
    """The extras every memory figure carries."""
    return {
        "memories": args.memories,
        "queries": args.queries,
        "k": RECALL_K,
        "hnsw_ef_search": defaults["hnsw_ef_search"],
        "exact_search_max_memories": _hnsw_exact_max(args, defaults),
        "index": run.loaded.index_definition,
    }


def _data_notes(args: argparse.Namespace, loaded: LoadReport) -> str:
    return (
        f"one user, {args.memories} memories in a real PostgreSQL 18 + pgvector (embedded, "
        f"shared_buffers {loaded.shared_buffers}); synthetic vectors derived from real "
        f"embeddings: {args.base_sentences} generated sentences embedded with "
        "all-MiniLM-L6-v2, each memory a normalised mixture of a random pair of them plus "
        f"small Gaussian noise; {args.queries} query vectors made the same way from pairs "
        "used by no memory; loaded with COPY, then the HNSW index recreated from the "
        f"migration's definition ({loaded.index_s:.0f}s), then ANALYZE; Recall with the "
        "query vector over gRPC, one sequential caller"
    )


def _p50_figure(run: MemoryRun, common: dict[str, Any], notes: str) -> Figure:
    hnsw, exact = run.hnsw.latencies, run.exact.latencies
    return Figure(
        "memory_recall_p50",
        hnsw.p50,
        exact.p50,
        "ms",
        {
            "goal": "value <= 10 ms",
            "goal_met": hnsw.p50 <= 10.0,
            "p99": rounded(hnsw.p99),
            "service_ms": hnsw.summary(),
            "baseline_ms": exact.summary(),
            "server_search_p50_ms": rounded(run.hnsw.server_search.p50),
            "baseline_server_search_p50_ms": rounded(run.exact.server_search.p50),
            "plan_uses_hnsw_index": run.uses_index,
            **common,
            "notes": f"{notes}; {BASELINE_NOTES}",
        },
    )


def _p99_figure(run: MemoryRun, common: dict[str, Any]) -> Figure:
    return Figure(
        "memory_recall_p99",
        run.hnsw.latencies.p99,
        run.exact.latencies.p99,
        "ms",
        {**common, "notes": f"p99 of the calls behind memory_recall_p50; {BASELINE_NOTES}"},
    )


def _recall_figure(run: MemoryRun, common: dict[str, Any]) -> Figure:
    recalls = Samples.of(_recall_at_k(run.hnsw.answers, [set(a) for a in run.exact.answers]))
    # Cross-check the exact path against numpy brute force on the same vectors.
    truth_rows = exact_top_k(run.data.vectors, run.data.queries, RECALL_K)
    numpy_truth = [{run.loaded.memory_ids[r] for r in rows} for rows in truth_rows]
    exact_vs_numpy = Samples.of(_recall_at_k(run.exact.answers, numpy_truth)).mean
    return Figure(
        "memory_recall_at_10",
        recalls.mean,
        1.0,
        "fraction",
        {
            "goal": "value >= 0.95",
            "goal_met": recalls.mean >= 0.95,
            "min": rounded(min(recalls.values)),
            "p10": rounded(recalls.pct(10)),
            "queries_below_0_9": sum(r < 0.9 for r in recalls.values),
            "exact_vs_numpy": rounded(exact_vs_numpy),
            **common,
            "notes": "mean over queries of |HNSW top-10 ∩ exact top-10| / 10, both from "
            "the memory service; exact_vs_numpy checks the exact answers against a numpy "
            "brute-force top-10 on the same vectors",
        },
    )


def bench_memory(args: argparse.Namespace, model: LocalModel, workdir: Path, out: Output) -> None:
    defaults = store_defaults()
    data = _synthetic_data(args, model, defaults)
    run = _measure(args, data, defaults, workdir)
    common = _common(args, defaults, run)
    out.emit(_p50_figure(run, common, _data_notes(args, run.loaded)))
    out.emit(_p99_figure(run, common))
    out.emit(_recall_figure(run, common))
