"""Atalaya benchmark: `python -m loadtests.bench [--only NAME] [--memories N] [--duration S]`.

Prints one JSON line per figure on stdout (name, value, baseline, ratio = value /
baseline, unit, plus extras such as goal, goal_met, p99 and notes); progress goes
to stderr. The services under test run as separate processes on 127.0.0.1, are
waited for through grpc.health.v1 and are stopped with SIGTERM, also on errors.

Figures:
  embedding_throughput   texts/s through the embedding service, 32 concurrent
                         one-sentence callers on one channel; baseline: in-process
                         SentenceTransformer.encode at its best batch size.
  embedding_latency_c1   one caller, one sentence per call: p50 ms; baseline:
                         in-process batch-1 encode p50.
  memory_recall_p50/p99  Recall (k=10, query vector) through the memory service on
                         a real PostgreSQL holding N memories of one user (HNSW
                         path); baseline: the same Recall on the exact path.
  memory_recall_at_10    recall@10 of those HNSW answers against the exact ones.

See loadtests/README.md for how to read the output."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from loadtests.gateway_bench import GATEWAY_FIGURES, bench_gateway
from loadtests.generation_bench import GENERATION_FIGURES, bench_generation
from loadtests.guard_bench import GUARD_FIGURES, bench_guard
from loadtests.runtime_bench import RUNTIME_FIGURES, bench_runtime
from services.client import EmbeddingClient, MemoryClient
from services.memory.config import MemorySettings
from services.stack.process import HOST, ServiceProcess, free_port

USER_ID = "bench-user"
RECALL_K = 10

MULTI_TEXT_CALLS = 8
MULTI_TEXT_FIGURE = f"embedding_throughput_{MULTI_TEXT_CALLS}_per_call"
EMBEDDING_FIGURES = ("embedding_throughput", MULTI_TEXT_FIGURE, "embedding_latency_c1")
MEMORY_FIGURES = ("memory_recall_p50", "memory_recall_p99", "memory_recall_at_10")
GROUPS = {
    "embedding": EMBEDDING_FIGURES,
    "memory": MEMORY_FIGURES,
    "generation": GENERATION_FIGURES,
    "guard": GUARD_FIGURES,
    "gateway": GATEWAY_FIGURES,
    "runtime_overhead": RUNTIME_FIGURES,
}

Floats = npt.NDArray[np.float32]

_STARTED = time.perf_counter()


def progress(message: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- output


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    baseline: float
    unit: str
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        ratio = self.value / self.baseline if self.baseline else None
        record: dict[str, Any] = {
            "name": self.name,
            "value": _round(self.value),
            "baseline": _round(self.baseline),
            "ratio": None if ratio is None else round(ratio, 4),
            "unit": self.unit,
            **self.extra,
        }
        return json.dumps(record)


def _round(x: float) -> float:
    return round(float(x), 4)


@dataclass(frozen=True)
class Output:
    """Prints the selected figures, each with the run-wide extras appended."""

    selected: frozenset[str]
    run_extra: dict[str, Any]

    def emit(self, figure: Figure) -> None:
        if figure.name in self.selected:
            extra = {**figure.extra, **self.run_extra}
            print(Figure(figure.name, figure.value, figure.baseline, figure.unit, extra).line())
            sys.stdout.flush()


@dataclass(frozen=True)
class Latencies:
    """Per-call latencies in milliseconds."""

    samples_ms: npt.NDArray[np.float64]

    @classmethod
    def of_seconds(cls, samples_s: Sequence[float]) -> Latencies:
        return cls(np.asarray(samples_s, dtype=np.float64) * 1000.0)

    def pct(self, q: float) -> float:
        return float(np.percentile(self.samples_ms, q))

    @property
    def p50(self) -> float:
        return self.pct(50)

    @property
    def p99(self) -> float:
        return self.pct(99)

    def summary(self) -> dict[str, float]:
        return {
            "p50": _round(self.p50),
            "p90": _round(self.pct(90)),
            "p99": _round(self.p99),
            "mean": _round(float(self.samples_ms.mean())),
        }


# ----------------------------------------------------------------------- workload


_SUBJECTS = (
    "My sister", "My brother", "My manager", "Our team lead", "My neighbour", "My daughter",
    "My son", "My partner", "The landlord", "My dentist", "Grandma", "My best friend",
    "The new intern", "My doctor", "My running coach", "The accountant", "My cousin",
    "Our teacher", "My flatmate", "Uncle Joe",
)  # fmt: skip
_VERBS = (
    "prefers", "is allergic to", "wants to learn about", "keeps forgetting", "recommended",
    "complained about", "is saving money for", "asked me about", "loves", "dislikes",
    "is worried about", "booked", "bought", "returned", "is reading about",
    "talked for hours about", "never mentions", "collects", "is planning", "cancelled",
)  # fmt: skip
_OBJECTS = (
    "green tea", "peanuts", "Italian cooking", "the quarterly report", "a trip to Lisbon",
    "jazz records", "the dentist appointment", "a new laptop", "vintage cameras",
    "the marathon in April", "spicy food", "the gym membership", "Spanish lessons",
    "the electricity bill", "a mountain bike", "board games", "the wedding in June",
    "oat milk", "science fiction novels", "the car insurance", "sourdough bread",
    "the flight to Tokyo", "yoga classes", "the kitchen renovation", "chess openings",
    "the tax return", "houseplants", "a rescue puppy", "the school play", "dark chocolate",
)  # fmt: skip
_TAILS = (
    "", " last week", " every morning", " since the spring", " before the holidays",
    " on weekends", " at the office", " after dinner", " this year", " during the summer",
    " again yesterday", " for a long time",
)  # fmt: skip


def make_sentences(n: int, rng: np.random.Generator) -> list[str]:
    """`n` distinct short first-person-memory sentences (seeded, reproducible)."""
    capacity = len(_SUBJECTS) * len(_VERBS) * len(_OBJECTS) * len(_TAILS)
    if n > capacity // 4:
        raise ValueError(f"at most {capacity // 4} sentences, asked for {n}")
    seen: dict[str, None] = {}
    while len(seen) < n:
        s, v, o, t = (
            int(rng.integers(len(part))) for part in (_SUBJECTS, _VERBS, _OBJECTS, _TAILS)
        )
        seen[f"{_SUBJECTS[s]} {_VERBS[v]} {_OBJECTS[o]}{_TAILS[t]}."] = None
    return list(seen)


@dataclass(frozen=True)
class SyntheticMemories:
    """Memory vectors built from real sentence embeddings: each is a normalised
    mixture a*b_i + (1-a)*b_j of two base embeddings plus small Gaussian noise."""

    vectors: Floats  # (n, dim), unit length
    texts: list[str]
    queries: Floats  # (q, dim), unit length, from pairs not used by any memory


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
    pairs: list[tuple[int, int]] = []
    while len(pairs) < n_queries:
        a, b = (int(x) for x in rng.choice(n_base, size=2, replace=False))
        pair = (min(a, b), max(a, b))
        if pair not in used:
            used.add(pair)
            pairs.append(pair)
    qi = np.array([p[0] for p in pairs], dtype=np.int64)
    qj = np.array([p[1] for p in pairs], dtype=np.int64)
    texts = [f"{base_texts[x]} {base_texts[y]}" for x, y in zip(i, j, strict=True)]
    return SyntheticMemories(vectors=mix(i, j), texts=texts, queries=mix(qi, qj))


def exact_top_k(vectors: Floats, queries: Floats, k: int) -> list[set[int]]:
    """Row indices of the k most cosine-similar vectors per query (numpy, brute force)."""
    scores = queries @ vectors.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return [set(row.tolist()) for row in top]


# ---------------------------------------------------------------------- processes


def _child_env() -> dict[str, str]:
    """The parent's environment without ATALAYA_* settings (services run with their
    defaults plus what the bench sets), offline model loading."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATALAYA_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


@contextlib.contextmanager
def running(
    module: str,
    env: Callable[[int], dict[str, str]],
    workdir: Path,
    label: str,
    overrides: dict[str, str] | None = None,
) -> Iterator[str]:
    """A started service process for the block (its target); always stopped after.
    `overrides` (from --set) are applied last, to compare settings."""
    port = free_port()
    proc = ServiceProcess(
        module,
        port,
        {**env(port), **(overrides or {})},
        workdir / f"{label}.log",
        base_env=_child_env(),
    )
    try:
        proc.start()
        progress(f"{module} SERVING on {proc.target}")
        yield proc.target
    finally:
        proc.stop()


def _embedding_env(port: int) -> dict[str, str]:
    return {
        "ATALAYA_EMBEDDING_HOST": HOST,
        "ATALAYA_EMBEDDING_PORT": str(port),
        "ATALAYA_EMBEDDING_GRACE_PERIOD_S": "2",
    }


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


# ---------------------------------------------------------------- in-process model


@dataclass
class Tally:
    """Texts done and seconds spent, summed over measurement slices."""

    texts: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else 0.0


class LocalModel:
    """all-MiniLM-L6-v2 in this process: the baseline, and the memory data's source."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        from services.embedding.backends.sentence_transformers import bundled_model_path

        # torch's default intra-op thread count (one per core), as in the service
        # process. The two never compute at once: this process encodes only while
        # no RPC is in flight, and only waits on gRPC while the service computes.
        self.threads = int(torch.get_num_threads())
        self._model: Any = SentenceTransformer(
            str(bundled_model_path()), device="cpu", local_files_only=True
        )
        self._model.eval()
        dimension = self._model.get_embedding_dimension()
        if dimension is None:
            raise RuntimeError("the model does not report its embedding dimension")
        self.dimension = int(dimension)
        self._offset = 0

    def encode(self, texts: Sequence[str], batch_size: int) -> Floats:
        out = self._model.encode(
            list(texts),
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)

    def encode_for(
        self, texts: Sequence[str], batch_size: int, seconds: float, tally: Tally
    ) -> None:
        """Encode the next texts, one full batch of `batch_size` per call, for about
        `seconds` (at least one batch)."""
        started = time.perf_counter()
        done = 0
        while done == 0 or time.perf_counter() - started < seconds:
            part = [texts[(self._offset + i) % len(texts)] for i in range(batch_size)]
            self._offset += batch_size
            self.encode(part, batch_size)
            done += batch_size
        tally.texts += done
        tally.seconds += time.perf_counter() - started


# -------------------------------------------------------------------- embedding

BASELINE_BATCHES = (16, 32, 64)


@dataclass
class Drive:
    """What the concurrent callers did during measurement windows."""

    tally: Tally = field(default_factory=Tally)
    samples: list[float] = field(default_factory=list)
    errors: int = 0


async def _drive(
    client: EmbeddingClient,
    texts: Sequence[str],
    *,
    concurrency: int,
    ramp_s: float,
    window_s: float,
    into: Drive,
    per_call: int = 1,
) -> None:
    """`concurrency` callers embedding `per_call` texts per call; calls completing in
    the window after `ramp_s` are counted. Returns once every call has finished."""
    measuring = False
    stop = asyncio.Event()
    offset = into.tally.texts

    async def caller(first: int) -> None:
        i = first
        while not stop.is_set():
            batch = [texts[(i + j * concurrency) % len(texts)] for j in range(per_call)]
            i += concurrency * per_call
            started = time.perf_counter()
            try:
                await client.embed(batch, timeout=30.0)
            except grpc.aio.AioRpcError as err:
                if measuring:
                    into.errors += 1
                progress(f"embed failed: {err.code()} {err.details()}")
                continue
            if measuring:
                into.tally.texts += per_call
                into.samples.append(time.perf_counter() - started)

    tasks = [asyncio.create_task(caller(offset + n)) for n in range(concurrency)]
    try:
        await asyncio.sleep(ramp_s)
        measuring = True
        window_start = time.perf_counter()
        await asyncio.sleep(window_s)
        measuring = False
        into.tally.seconds += time.perf_counter() - window_start
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True)
class ThroughputResult:
    service: Drive
    local: dict[int, Tally]  # by batch size


async def measure_throughput(
    target: str,
    model: LocalModel,
    texts: Sequence[str],
    args: argparse.Namespace,
    per_call: int = 1,
) -> ThroughputResult:
    """Service windows and in-process slices, interleaved in `args.rounds` rounds so
    that slow drifts of the machine's speed hit both sides alike. The in-process
    slices run while no RPC is in flight (the service is idle)."""
    rounds = args.rounds
    window_s = args.duration / rounds
    slice_s = window_s / len(BASELINE_BATCHES)
    service = Drive()
    local = {b: Tally() for b in BASELINE_BATCHES}
    async with EmbeddingClient.connect(target) as client:
        warmup = Drive()
        await _drive(
            client,
            texts,
            concurrency=args.concurrency,
            ramp_s=args.warmup,
            window_s=0.0,
            into=warmup,
            per_call=per_call,
        )
        for batch_size in BASELINE_BATCHES:
            model.encode_for(texts, batch_size, 0.5, Tally())
        for r in range(rounds):
            await _drive(
                client,
                texts,
                concurrency=args.concurrency,
                ramp_s=0.5,
                window_s=window_s,
                into=service,
                per_call=per_call,
            )
            turn = r % len(BASELINE_BATCHES)
            order = BASELINE_BATCHES[turn:] + BASELINE_BATCHES[:turn]
            for batch_size in order:
                model.encode_for(texts, batch_size, slice_s, local[batch_size])
            rates = ", ".join(f"b{b} {local[b].rate:.0f}" for b in BASELINE_BATCHES)
            progress(
                f"round {r + 1}/{rounds}: service {service.tally.rate:.1f} texts/s; "
                f"in-process {rates} (running totals)"
            )
    return ThroughputResult(service, local)


@dataclass(frozen=True)
class LatencyResult:
    service: Latencies
    local: Latencies


async def measure_latency(
    target: str, model: LocalModel, texts: Sequence[str], calls: int, warmup: int
) -> LatencyResult:
    """One caller: each text once through the service and once in-process (batch
    1), alternating which goes first, so both see the same moments."""
    service: list[float] = []
    local: list[float] = []

    async def one_rpc(text: str, into: list[float] | None) -> None:
        started = time.perf_counter()
        await client.embed([text], timeout=30.0)
        if into is not None:
            into.append(time.perf_counter() - started)

    def one_local(text: str, into: list[float] | None) -> None:
        started = time.perf_counter()
        model.encode([text], 1)
        if into is not None:
            into.append(time.perf_counter() - started)

    async with EmbeddingClient.connect(target) as client:
        for i in range(warmup + calls):
            text = texts[i % len(texts)]
            measured = i >= warmup
            if i % 2:
                await one_rpc(text, service if measured else None)
                one_local(text, local if measured else None)
            else:
                one_local(text, local if measured else None)
                await one_rpc(text, service if measured else None)
    return LatencyResult(Latencies.of_seconds(service), Latencies.of_seconds(local))


def bench_embedding(
    args: argparse.Namespace, model: LocalModel, workdir: Path, out: Output
) -> None:
    rng = np.random.default_rng(args.seed)
    texts = make_sentences(2048, rng)

    with running(
        "services.embedding", _embedding_env, workdir, "embedding", dict(args.set)
    ) as target:
        progress(
            f"throughput: {args.concurrency} callers, warm-up {args.warmup:.0f}s, "
            f"{args.duration:.0f}s measured in {args.rounds} rounds interleaved with "
            "in-process encode"
        )
        tp = asyncio.run(measure_throughput(target, model, texts, args))
        tp_multi = None
        if MULTI_TEXT_FIGURE in out.selected:
            progress(f"throughput again with {MULTI_TEXT_CALLS} texts per call")
            tp_multi = asyncio.run(
                measure_throughput(target, model, texts, args, per_call=MULTI_TEXT_CALLS)
            )
        progress(f"latency: {args.latency_calls} calls, one caller")
        lat = asyncio.run(measure_latency(target, model, texts, args.latency_calls, warmup=20))
        progress(
            f"latency p50: service {lat.service.p50:.2f} ms, in-process {lat.local.p50:.2f} ms"
        )

    best_batch = max(tp.local, key=lambda b: tp.local[b].rate)
    baseline = tp.local[best_batch].rate
    ratio = tp.service.tally.rate / baseline
    out.emit(
        Figure(
            "embedding_throughput",
            tp.service.tally.rate,
            baseline,
            "texts/s",
            {
                "goal": "ratio >= 0.85",
                "goal_met": ratio >= 0.85,
                "concurrency": args.concurrency,
                "duration_s": _round(tp.service.tally.seconds),
                "rounds": args.rounds,
                "completed": tp.service.tally.texts,
                "errors": tp.service.errors,
                "call_latency_ms": Latencies.of_seconds(tp.service.samples).summary(),
                "baseline_batch": best_batch,
                "baseline_by_batch": {str(b): _round(t.rate) for b, t in tp.local.items()},
                "baseline_seconds_per_batch": _round(tp.local[best_batch].seconds),
                "torch_threads": model.threads,
                "notes": "service: one channel, each call embeds one short sentence "
                "(normalised), service default settings (max_batch 32, max_wait_ms 2); "
                "baseline: in-process SentenceTransformer.encode on the same model and "
                "sentences at its best batch size; service windows and in-process slices "
                "alternate in rounds, never overlapping",
            },
        )
    )
    if tp_multi is not None:
        multi_baseline = max(t.rate for t in tp_multi.local.values())
        out.emit(
            Figure(
                MULTI_TEXT_FIGURE,
                tp_multi.service.tally.rate,
                multi_baseline,
                "texts/s",
                {
                    "concurrency": args.concurrency,
                    "texts_per_call": MULTI_TEXT_CALLS,
                    "completed": tp_multi.service.tally.texts,
                    "errors": tp_multi.service.errors,
                    "call_latency_ms": Latencies.of_seconds(tp_multi.service.samples).summary(),
                    "notes": "as embedding_throughput, but each call carries "
                    f"{MULTI_TEXT_CALLS} sentences: the per-RPC cost is shared by more texts, "
                    "so the gap to the baseline shows how much of it is per request",
                },
            )
        )
    out.emit(
        Figure(
            "embedding_latency_c1",
            lat.service.p50,
            lat.local.p50,
            "ms",
            {
                "p99": _round(lat.service.p99),
                "baseline_p99": _round(lat.local.p99),
                "calls": args.latency_calls,
                "service_ms": lat.service.summary(),
                "baseline_ms": lat.local.summary(),
                "notes": "one caller, sequential calls of one sentence; baseline: in-process "
                "batch-1 SentenceTransformer.encode of the same sentence, alternating with "
                "the service call",
            },
        )
    )


# ----------------------------------------------------------------------- memory


def _store_defaults() -> dict[str, int]:
    fields = MemorySettings.model_fields
    names = ("embedding_dimension", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search")
    return {name: int(fields[name].default) for name in (*names, "exact_search_max_memories")}


async def _migrate(dsn: str, defaults: dict[str, int]) -> None:
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
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY memories (memory_id, user_id, request_id, position, text, embedding)"
                " FROM STDIN WITH (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(["uuid", "text", "text", "int4", "text", "vector"])
            for n, (memory_id, text) in enumerate(zip(ids, data.texts, strict=True)):
                copy.write_row(
                    (memory_id, USER_ID, f"bench-{n // 64}", n % 64, text, data.vectors[n])
                )
        copy_s = time.perf_counter() - started
        progress(f"copied {len(ids)} rows in {copy_s:.1f}s; building the HNSW index")
        started = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute(index_definition.encode())
        index_s = time.perf_counter() - started
        conn.execute(
            "INSERT INTO user_memory_stats (user_id, memories) VALUES (%s, %s)",
            (USER_ID, len(ids)),
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
            " embedding <=> %s AS distance FROM memories WHERE user_id = %s"
            " ORDER BY 6 LIMIT %s",
            (query, USER_ID, RECALL_K),
        ).fetchall()
    return any("memories_embedding" in str(r[0]) for r in rows)


@dataclass
class RecallRun:
    samples: list[float] = field(default_factory=list)  # seconds per call, client side
    search: list[float] = field(default_factory=list)  # the service's own "search" phase
    answers: list[list[str]] = field(default_factory=list)  # memory ids, best first

    @property
    def latencies(self) -> Latencies:
        return Latencies.of_seconds(self.samples)

    @property
    def server_search(self) -> Latencies:
        return Latencies.of_seconds(self.search)


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


def bench_memory(args: argparse.Namespace, model: LocalModel, workdir: Path, out: Output) -> None:
    from services.memory.embedded import EmbeddedPostgres

    defaults = _store_defaults()
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

    # The HNSW run keeps the service's default exact-search threshold unless the
    # data set is too small to be above it.
    hnsw_exact_max = min(defaults["exact_search_max_memories"], args.memories - 1)
    exact_exact_max = 10**12

    pg = EmbeddedPostgres(workdir / "postgres")
    try:
        dsn = pg.start()
        progress("embedded PostgreSQL running (Unix socket)")
        asyncio.run(_migrate(dsn, defaults))
        loaded = load_memories(dsn, data)
        progress(f"HNSW index built in {loaded.index_s:.1f}s")
        uses_index = hnsw_plan_uses_index(dsn, data.queries[0])
        queries = [q.tolist() for q in data.queries]

        with (
            running(
                "services.memory", _memory_env(dsn, hnsw_exact_max), workdir, "memory-hnsw"
            ) as hnsw_target,
            running(
                "services.memory", _memory_env(dsn, exact_exact_max), workdir, "memory-exact"
            ) as exact_target,
        ):
            progress(f"Recall: {args.queries} queries through each service, one at a time")
            hnsw, exact = asyncio.run(
                measure_recall(hnsw_target, exact_target, queries, args.recall_warmup)
            )
    finally:
        pg.stop()

    exact_sets = [set(a) for a in exact.answers]
    recalls = _recall_at_k(hnsw.answers, exact_sets)
    # Cross-check the exact path against numpy brute force on the same vectors.
    truth_rows = exact_top_k(data.vectors, data.queries, RECALL_K)
    numpy_truth = [{loaded.memory_ids[r] for r in rows} for rows in truth_rows]
    exact_vs_numpy = float(np.mean(_recall_at_k(exact.answers, numpy_truth)))

    common = {
        "memories": args.memories,
        "queries": args.queries,
        "k": RECALL_K,
        "hnsw_ef_search": defaults["hnsw_ef_search"],
        "exact_search_max_memories": hnsw_exact_max,
        "index": loaded.index_definition,
    }
    data_notes = (
        f"one user, {args.memories} memories in a real PostgreSQL 18 + pgvector (embedded, "
        f"shared_buffers {loaded.shared_buffers}); synthetic vectors derived from real "
        f"embeddings: {args.base_sentences} generated sentences embedded with "
        "all-MiniLM-L6-v2, each memory a normalised mixture of a random pair of them plus "
        f"small Gaussian noise; {args.queries} query vectors made the same way from pairs "
        "used by no memory; loaded with COPY, then the HNSW index recreated from the "
        f"migration's definition ({loaded.index_s:.0f}s), then ANALYZE; Recall with the "
        "query vector over gRPC, one sequential caller"
    )
    baseline_notes = (
        "baseline: the same Recall through a second memory service process on the same "
        "database, started with ATALAYA_MEMORY_EXACT_SEARCH_MAX_MEMORIES above the user's "
        "count so the store takes its exact path (every row scored); the same queries, "
        "after the HNSW block, one call at a time"
    )
    out.emit(
        Figure(
            "memory_recall_p50",
            hnsw.latencies.p50,
            exact.latencies.p50,
            "ms",
            {
                "goal": "value <= 10 ms",
                "goal_met": hnsw.latencies.p50 <= 10.0,
                "p99": _round(hnsw.latencies.p99),
                "service_ms": hnsw.latencies.summary(),
                "baseline_ms": exact.latencies.summary(),
                "server_search_p50_ms": _round(hnsw.server_search.p50),
                "baseline_server_search_p50_ms": _round(exact.server_search.p50),
                "plan_uses_hnsw_index": uses_index,
                **common,
                "notes": f"{data_notes}; {baseline_notes}",
            },
        )
    )
    out.emit(
        Figure(
            "memory_recall_p99",
            hnsw.latencies.p99,
            exact.latencies.p99,
            "ms",
            {**common, "notes": f"p99 of the calls behind memory_recall_p50; {baseline_notes}"},
        )
    )
    mean_recall = float(np.mean(recalls))
    out.emit(
        Figure(
            "memory_recall_at_10",
            mean_recall,
            1.0,
            "fraction",
            {
                "goal": "value >= 0.95",
                "goal_met": mean_recall >= 0.95,
                "min": _round(min(recalls)),
                "p10": _round(float(np.percentile(recalls, 10))),
                "queries_below_0_9": sum(r < 0.9 for r in recalls),
                "exact_vs_numpy": _round(exact_vs_numpy),
                **common,
                "notes": "mean over queries of |HNSW top-10 ∩ exact top-10| / 10, both from "
                "the memory service; exact_vs_numpy checks the exact answers against a numpy "
                "brute-force top-10 on the same vectors",
            },
        )
    )


# ------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench",
        description="Atalaya benchmarks: one JSON line per figure on stdout.",
    )
    names = (
        *EMBEDDING_FIGURES,
        *MEMORY_FIGURES,
        *GENERATION_FIGURES,
        *GUARD_FIGURES,
        *GATEWAY_FIGURES,
        *RUNTIME_FIGURES,
        *GROUPS,
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these figures or groups (repeatable, comma-separated): {', '.join(names)}",
    )
    parser.add_argument("--memories", type=int, default=100_000, help="memories for the user")
    parser.add_argument("--queries", type=int, default=200, help="Recall queries per path")
    parser.add_argument("--recall-warmup", type=int, default=20, help="untimed Recalls first")
    parser.add_argument("--base-sentences", type=int, default=2000)
    parser.add_argument(
        "--duration", type=float, default=15.0, help="embedding throughput window, seconds"
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="throughput warm-up, seconds")
    parser.add_argument(
        "--rounds", type=int, default=5, help="throughput rounds (service, then in-process)"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        type=lambda kv: tuple(kv.split("=", 1)),
        metavar="ATALAYA_X=VALUE",
        help="a service setting for this run (repeatable), e.g. ATALAYA_EMBEDDING_MAX_WAIT_MS=5",
    )
    parser.add_argument("--latency-calls", type=int, default=200)
    parser.add_argument(
        "--guard-items", type=int, default=60, help="evaluation items for cascade_llm_share"
    )
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep service logs and the database here"
    )
    args = parser.parse_args(argv)
    wanted = {n.strip() for item in args.only for n in item.split(",") if n.strip()}
    unknown = wanted - set(names)
    if unknown:
        parser.error(f"unknown --only {', '.join(sorted(unknown))}; choose from {', '.join(names)}")
    selected: set[str] = set()
    for name in wanted or set(GROUPS):
        selected.update(GROUPS.get(name, (name,)))
    args.selected = frozenset(selected)
    if args.memories < 2 * RECALL_K or args.queries < 1 or args.duration <= 0 or args.rounds < 1:
        parser.error("need --memories >= 20, --queries >= 1, --duration > 0, --rounds >= 1")
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanups


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    selected: frozenset[str] = args.selected
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="atalaya-bench-"))
            )
        else:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        load = os.getloadavg()[0]
        progress(f"work directory {workdir}; 1-minute load average {load:.2f}")
        if load > 0.5:
            progress("warning: other work is using the CPU; figures will be noisy")
        out = Output(selected, {"load_1m_at_start": round(load, 2)})
        if selected & {*EMBEDDING_FIGURES, *MEMORY_FIGURES}:
            progress("loading the model in-process")
            model = LocalModel()
            if selected & set(EMBEDDING_FIGURES):
                bench_embedding(args, model, workdir, out)
            if selected & set(MEMORY_FIGURES):
                bench_memory(args, model, workdir, out)
        if selected & set(GENERATION_FIGURES):
            progress("generation: simulator in-process, then through the service")
            bench_generation(args, workdir, out, Figure)
        if selected & set(GUARD_FIGURES):
            progress("guardrail: each detector alone, then the default cascade")
            bench_guard(args, workdir, out, Figure)
        if selected & set(GATEWAY_FIGURES):
            progress("gateway: turn and token overhead over generation")
            bench_gateway(args, workdir, out, Figure)
        if selected & set(RUNTIME_FIGURES):
            progress("runtime_overhead: one unary call on grpc.aio, Ray Serve and KServe")
            bench_runtime(args, workdir, out, Figure)
    progress(f"done in {time.perf_counter() - _STARTED:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
