"""`atalaya eval run`: every item of a data set through the gateway (the real
pipeline: guards, generation, memory off unless an item has history), then its
scores. Items run concurrently up to a bound; each result is appended to the
run's JSON lines as soon as it is scored, so an interrupted run resumes where it
stopped (items already scored are skipped; failed calls are tried again)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc

from services.client.gateway import DEFAULT_TARGET as DEFAULT_GATEWAY_TARGET
from services.client.gateway import GatewayClient, TurnResult, TurnSettings, stage_name
from services.client.memory import MemoryClient, message
from services.common import topology
from services.common.vocab import BACKEND
from services.eval import scorers
from services.eval.dataset import EXPECT_BLOCKED, EvalItem, file_sha256
from services.eval.judge import Judge, JudgePrompt

RESULTS_FILE = "results.jsonl"
RUN_FORMAT = "atalaya-eval-run/1"
DEFAULT_MEMORY_TARGET = topology.target("memory")
#: Longest user or session id the gateway accepts.
MAX_ID = 128


class ResumeMismatch(RuntimeError):
    """The output folder holds a run made with other settings."""


@dataclass(frozen=True)
class RunConfig:
    dataset: Path
    out_dir: Path
    gateway_target: str = DEFAULT_GATEWAY_TARGET
    memory_target: str = DEFAULT_MEMORY_TARGET
    policy: str = ""
    moderation: str | None = None
    model: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = 42
    concurrency: int = 4
    timeout_s: float = 300.0
    judge: bool = True
    judge_target: str = ""
    judge_model: str = ""

    def fingerprint(self, prompt: JudgePrompt | None) -> dict[str, Any]:
        """What must stay the same for a rerun to resume this run."""
        return {
            "dataset_sha256": file_sha256(self.dataset),
            "gateway_target": self.gateway_target,
            "policy": self.policy,
            "moderation": self.moderation,
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
            "judge": self.judge,
            "judge_target": self.judge_target if self.judge else "",
            "judge_model": self.judge_model if self.judge else "",
            "judge_prompt": prompt.ref() if prompt and self.judge else None,
        }


@dataclass
class EvalTurn:
    """What the gateway said for one item."""

    answer: str = ""
    blocked: bool = False
    blocked_stage: str = ""
    blocked_reason: str = ""
    request_id: str = ""
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    model: str = ""
    backend: str = ""
    template: str = ""
    #: Turns of the item's history the gateway put in the prompt.
    history_turns: int = 0


def turn_from(result: TurnResult, latency_ms: float) -> EvalTurn:
    turn = EvalTurn(answer=result.answer, request_id=result.request_id, latency_ms=latency_ms)
    if result.blocked is not None:
        turn.blocked = True
        turn.blocked_stage = stage_name(result.blocked.stage)
        turn.blocked_reason = result.blocked.reason
    done = result.done
    if done is not None:
        turn.ttft_ms = done.timing.phases_ms.get("ttft")
        turn.input_tokens = done.usage.input_tokens
        turn.output_tokens = done.usage.output_tokens
        turn.cost_usd = done.cost_usd if done.HasField("cost_usd") else None
        turn.model = done.model
        turn.backend = BACKEND.name(done.backend) or "unspecified"
        t = done.prompt_template
        turn.template = f"{t.name}@{t.version}" if t.name else ""
        turn.history_turns = done.memory.history_turns
    return turn


def score_record(
    item: EvalItem,
    turn: EvalTurn,
    scores: Sequence[scorers.Score],
    judge_attempts: int = 0,
    judge_raw: Sequence[str] = (),
) -> dict[str, Any]:
    """One item's result, as written to the run's JSON lines."""
    decision = scorers.decide(scores, blocked=turn.blocked)
    guard_pass = None
    if item.expect is not None:
        guard_pass = turn.blocked == (item.expect == EXPECT_BLOCKED)
    return {
        "kind": "result",
        **item.to_json(),
        "status": "scored",
        "error": None,
        **asdict(turn),
        "scores": [s.to_json() for s in scores],
        "score": decision.score,
        "scorer": decision.scorer,
        "explanation": decision.explanation,
        "guard_pass": guard_pass,
        "judge_attempts": judge_attempts,
        "judge_raw": list(judge_raw),
    }


def error_record(item: EvalItem, error: str, request_id: str = "") -> dict[str, Any]:
    return {
        "kind": "result",
        **item.to_json(),
        "status": "error",
        "error": error,
        "request_id": request_id,
        "score": None,
    }


async def score_item(item: EvalItem, turn: EvalTurn, judge: Judge | None) -> dict[str, Any]:
    """Every scorer that applies; the judge only for an answered turn that the
    deterministic scorers did not settle (a number, a match)."""
    names = scorers.scorers_for(item, judge=judge is not None)
    results = [
        scorers.deterministic(name, item, turn.answer, turn.blocked)
        for name in names
        if name != scorers.JUDGE
    ]
    attempts, raw = 0, []
    if judge is not None and scorers.JUDGE in names and not scorers.settled(results, turn.blocked):
        outcome = await judge.judge(item.question, item.ground_truth, turn.answer)
        results.append(outcome.score)
        attempts, raw = outcome.attempts, outcome.raw
    return score_record(item, turn, results, attempts, raw)


def load_records(path: Path) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """The run file's meta line and its latest record per item id."""
    meta: dict[str, Any] | None = None
    records: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return meta, records
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by an interrupted run
        if data.get("kind") == "meta":
            meta = data
        elif data.get("kind") == "result":
            records[str(data["id"])] = data
    return meta, records


class Progress:
    """One updating line on stderr: done/total, errors, elapsed time."""

    def __init__(self, total: int, skipped: int, out: TextIO | None = None) -> None:
        self.total, self.done, self.errors = total, skipped, 0
        self._out = out or sys.stderr
        self._start = time.monotonic()
        self._tty = self._out.isatty()
        self.show()

    def advance(self, ok: bool) -> None:
        self.done += 1
        self.errors += 0 if ok else 1
        self.show()

    def show(self) -> None:
        width = 24
        filled = width * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (width - filled)
        failed = f", {self.errors} failed" if self.errors else ""
        elapsed = time.monotonic() - self._start
        line = f"eval [{bar}] {self.done}/{self.total}{failed}, {elapsed:.1f} s"
        # A terminal gets one line rewritten in place; a log gets a line per item.
        self._out.write("\r" + line if self._tty else line + "\n")
        self._out.flush()

    def close(self) -> None:
        if self._tty:
            self._out.write("\n")
            self._out.flush()


@dataclass
class RunOutcome:
    records: list[dict[str, Any]]
    meta: dict[str, Any]
    skipped: int = 0
    ran: int = 0
    errors: list[str] = field(default_factory=list)


def _ident(*parts: str) -> str:
    return "-".join(parts)[:MAX_ID]


class Runner:
    """Runs items through the gateway and scores them. `judge` is None for
    deterministic scoring only."""

    def __init__(self, config: RunConfig, judge: Judge | None, err: TextIO | None = None) -> None:
        self.config = config
        self.judge = judge
        self._err = err or sys.stderr
        self._tag = uuid.uuid4().hex[:8]
        self._lock = asyncio.Lock()

    def _settings(self, item: EvalItem) -> TurnSettings:
        c = self.config
        return TurnSettings(
            target=c.gateway_target,
            user_id=_ident("eval", self._tag, item.id),
            session_id=_ident("eval", self._tag, item.id),
            policy=c.policy,
            moderation=c.moderation,
            use_memory=bool(item.history),
            remember=False,
            max_tokens=c.max_tokens,
            timeout_s=c.timeout_s,
        )

    async def _turn(self, client: GatewayClient, item: EvalItem) -> EvalTurn:
        settings = self._settings(item)
        request = settings.request(item.question, _ident("eval", self._tag, item.id))
        if self.config.model:
            request.options.model = self.config.model
        if self.config.temperature is not None:
            request.options.temperature = self.config.temperature
        if self.config.seed is not None:
            request.options.seed = self.config.seed
        async with self._history(item, settings):
            for attempt in (1, 2):
                start = time.perf_counter()
                try:
                    result = await client.chat(request, timeout=settings.timeout_s)
                except grpc.aio.AioRpcError as exc:
                    busy = exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    if attempt == 1 and busy:
                        await asyncio.sleep(1.0)
                        continue
                    raise
                break
        if result.done is None:
            raise RuntimeError("the stream ended without `done`")
        return turn_from(result, (time.perf_counter() - start) * 1000)

    @contextlib.asynccontextmanager
    async def _history(self, item: EvalItem, settings: TurnSettings) -> AsyncIterator[None]:
        """The item's history stored as the session's earlier turns, and the
        eval user erased afterwards."""
        if not item.history:
            yield
            return
        async with MemoryClient.connect(self.config.memory_target, timeout_s=30) as memory:
            for i, (user, assistant) in enumerate(item.history_pairs()):
                await memory.append_turn(
                    user_id=settings.user_id,
                    session_id=settings.session_id,
                    request_id=f"history-{i}",
                    messages=[message("user", user), message("assistant", assistant)],
                )
            try:
                yield
            finally:
                await memory.forget_user(settings.user_id)

    async def _one(
        self, client: GatewayClient, item: EvalItem, semaphore: asyncio.Semaphore, results: TextIO
    ) -> dict[str, Any]:
        async with semaphore:
            try:
                turn = await self._turn(client, item)
            except grpc.aio.AioRpcError as exc:
                record = error_record(item, f"{exc.code().name}: {exc.details() or ''}")
            except RuntimeError as exc:
                record = error_record(item, str(exc))
            else:
                record = await score_item(item, turn, self.judge)
        async with self._lock:
            results.write(json.dumps(record, ensure_ascii=False) + "\n")
            results.flush()
        return record

    async def run(self, items: Sequence[EvalItem], *, fresh: bool = False) -> RunOutcome:
        c = self.config
        c.out_dir.mkdir(parents=True, exist_ok=True)
        path = c.out_dir / RESULTS_FILE
        fingerprint = c.fingerprint(self.judge.prompt if self.judge else None)
        if fresh and path.exists():
            path.unlink()
        meta, previous = load_records(path)
        if meta is not None and meta.get("fingerprint") != fingerprint:
            raise ResumeMismatch(
                f"{path} holds a run with other settings or another data set; "
                "use --fresh to start over, or another --out"
            )
        ids = {item.id for item in items}
        kept = {k: v for k, v in previous.items() if k in ids and v.get("status") == "scored"}
        pending = [item for item in items if item.id not in kept]
        if meta is None:
            meta = {
                "kind": "meta",
                "format": RUN_FORMAT,
                "fingerprint": fingerprint,
                "dataset": str(c.dataset),
                "started_at": _now(),
            }
            path.write_text(json.dumps(meta, ensure_ascii=False) + "\n", encoding="utf-8")
        progress = Progress(len(items), len(kept), self._err)
        semaphore = asyncio.Semaphore(c.concurrency)
        new: list[dict[str, Any]] = []
        with path.open("a", encoding="utf-8") as results:
            async with GatewayClient.connect(c.gateway_target, timeout_s=c.timeout_s) as client:
                tasks = [
                    asyncio.create_task(self._one(client, item, semaphore, results))
                    for item in pending
                ]
                try:
                    for task in asyncio.as_completed(tasks):
                        record = await task
                        new.append(record)
                        progress.advance(record["status"] == "scored")
                finally:
                    for task in tasks:
                        task.cancel()
                    progress.close()
        by_id = {**kept, **{r["id"]: r for r in new}}
        ordered = [by_id[item.id] for item in items if item.id in by_id]
        errors = [f"{r['id']}: {r['error']}" for r in ordered if r["status"] != "scored"]
        return RunOutcome(ordered, meta, skipped=len(kept), ran=len(new), errors=errors)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
