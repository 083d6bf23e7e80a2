"""Embedding + memory as real processes over real gRPC, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import psycopg
import pytest
from atalaya.memory.v1 import memory_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.client import EmbeddingClient, MemoryClient
from services.client.memory import message
from services.common.server import LIVENESS
from tests.integration.conftest import MemoryFactory
from tests.support.polling import async_wait_until
from tests.support.postgres import TestPostgres
from tests.support.processes import (
    NOT_SERVING,
    SERVING,
    ServiceProcess,
    free_port,
    health_status,
    wait_for_status,
)

pytestmark = pytest.mark.integration


async def test_real_model_recall_finds_the_relevant_memory(
    memory_proc: MemoryFactory, fresh_dsn: str
) -> None:
    memory = memory_proc(fresh_dsn)
    async with MemoryClient.connect(memory.target) as client:
        stored = await client.remember(
            user_id="ana",
            request_id="r-1",
            texts=[
                "My daughter is allergic to peanuts.",
                "I work as a nurse on night shifts.",
                "Our team moved the release to March.",
            ],
        )
        assert len(stored.memory_ids) == 3
        assert stored.usage.input_tokens > 0
        found = await client.recall(user_id="ana", text="food allergies in my family", k=3)
    assert next(m.text for m in found.memories) == "My daughter is allergic to peanuts."
    scores = [m.score for m in found.memories]
    assert scores == sorted(scores, reverse=True)
    assert {"embed", "search"} <= set(found.timing.phases_ms)


async def test_acknowledged_writes_survive_kill_9(
    memory_proc: MemoryFactory, fresh_dsn: str
) -> None:
    memory = memory_proc(fresh_dsn)
    async with MemoryClient.connect(memory.target) as client:
        turn = await client.append_turn(
            user_id="u",
            session_id="s",
            request_id="t-1",
            messages=[message("user", "hola"), message("assistant", "¡Hola!")],
        )
        assert turn.created
        stored = await client.remember(user_id="u", request_id="m-1", texts=["I live in Quito"])
    memory.kill9()

    restarted = memory_proc(fresh_dsn, port=memory.port)
    async with MemoryClient.connect(restarted.target) as client:
        # The new process is SERVING; a connection opened while the kernel is still
        # tearing down the killed one's can be reset once, so the first read retries.
        async def history_read() -> memory_pb2.GetHistoryResponse | None:
            try:
                return await client.get_history(user_id="u", session_id="s")
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                return None

        history = await async_wait_until(
            history_read, interval_s=0.25, message="the restarted memory stayed unavailable"
        )
        found = await client.recall(user_id="u", text="where do I live?", k=1)
    assert [m.content for m in history.turns[0].messages] == ["hola", "¡Hola!"]
    assert found.memories[0].memory_id == stored.memory_ids[0]


async def test_a_memory_process_reads_and_erases_its_callers_tenant_only(
    memory_proc: MemoryFactory, fresh_dsn: str
) -> None:
    memory = memory_proc(fresh_dsn)
    async with MemoryClient.connect(memory.target) as client:  # anonymous: tenant "default"
        for i in range(2):
            await client.append_turn(
                user_id="u", session_id="s", request_id=f"t-{i}", messages=[message("user", "x")]
            )
        # The same user and session in another tenant, written past the service.
        async with await psycopg.AsyncConnection.connect(fresh_dsn) as conn:
            await conn.execute(
                "INSERT INTO sessions (tenant, user_id, session_id, turn_count)"
                " VALUES ('acme', 'u', 's', 5)"
            )
        history = await client.get_history(user_id="u", session_id="s")
        assert history.total_turns == 2
        erased = await client.forget_user("u")
        assert (erased.deleted_sessions, erased.deleted_turns) == (1, 2)
    async with await psycopg.AsyncConnection.connect(fresh_dsn) as conn:
        cur = await conn.execute("SELECT tenant, turn_count FROM sessions")
        assert await cur.fetchall() == [("acme", 5)]


async def test_postgres_outage_is_unavailable_and_not_serving_then_recovers(
    memory_proc: MemoryFactory, tmp_path: Path
) -> None:
    pg = TestPostgres(tmp_path / "own-pg")
    dsn = pg.start()
    try:
        memory = memory_proc(dsn, pool_timeout_s="1")
        async with MemoryClient.connect(memory.target) as client:
            await client.append_turn(
                user_id="u", session_id="s", request_id="t-1", messages=[message("user", "1")]
            )
            pg.stop()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.get_history(user_id="u", session_id="s", timeout=10)
            # UNAVAILABLE from the service, not DEADLINE_EXCEEDED: it failed fast.
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert err.value.details() == "database unavailable"
            wait_for_status(memory.target, NOT_SERVING, timeout_s=10)

            pg.start()
            wait_for_status(memory.target, SERVING, timeout_s=20)
            history = await client.get_history(user_id="u", session_id="s")
            assert history.total_turns == 1
            turn = await client.append_turn(
                user_id="u", session_id="s", request_id="t-2", messages=[message("user", "2")]
            )
            assert turn.turn_index == 1
    finally:
        pg.stop()


def lone_memory(dsn: str, log: Path, **env: str) -> ServiceProcess:
    """A memory process (not started) whose embedding service is nowhere: its
    readiness follows the database only."""
    port = free_port()
    return ServiceProcess(
        "services.memory",
        port,
        {
            "ATALAYA_MEMORY_PORT": str(port),
            "ATALAYA_MEMORY_DSN": dsn,
            "ATALAYA_MEMORY_EMBEDDING__TARGET": "127.0.0.1:9",
            "ATALAYA_MEMORY_GRACE_PERIOD_S": "2",
            "ATALAYA_MEMORY_READINESS_INTERVAL_S": "0.3",
            **{f"ATALAYA_MEMORY_{k.upper()}": v for k, v in env.items()},
        },
        log,
    )


async def health_of(target: str, service: str) -> str | None:
    """The status name of `service` at `target`; None while nothing answers."""
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.aio.AioRpcError:
            return None
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


async def test_memory_started_before_postgresql_waits_for_it(tmp_path: Path) -> None:
    pg = TestPostgres(tmp_path / "late-pg")
    dsn = pg.start()  # the data directory and its DSN; then the server goes down
    pg.stop()
    memory = lone_memory(
        dsn, tmp_path / "memory.log", db_startup_timeout_s="120", db_retry_max_backoff_s="0.5"
    )
    starting = asyncio.create_task(asyncio.to_thread(memory.start, 120.0))  # until SERVING
    try:

        async def alive() -> bool:
            return await health_of(memory.target, LIVENESS) == SERVING

        await async_wait_until(alive, timeout_s=60, message=memory.log_tail)

        def retrying() -> bool:
            return memory.logs().count("database not reachable yet") >= 2

        await async_wait_until(retrying, timeout_s=30, message=memory.log_tail)
        waiting = (await health_of(memory.target, ""), await health_of(memory.target, LIVENESS))
        assert not starting.done()

        await asyncio.to_thread(pg.start)
        await starting
        assert await health_of(memory.target, LIVENESS) == SERVING
        async with MemoryClient.connect(memory.target) as client:
            turn = await client.append_turn(
                user_id="u", session_id="s", request_id="t-1", messages=[message("user", "hi")]
            )
    finally:
        memory.stop()  # a start still waiting then sees the process exit
        await asyncio.gather(starting, return_exceptions=True)
        pg.stop()
    assert waiting == (NOT_SERVING, SERVING)
    assert turn.created
    assert '"msg": "database reached"' in memory.logs()


def test_memory_exits_when_postgresql_stays_away_past_its_startup_window(
    tmp_path: Path,
) -> None:
    # No server's socket in tmp_path; the password must not reach the logs.
    missing = f"postgresql://postgres:pw-never-logged@/postgres?host={tmp_path}"
    memory = lone_memory(missing, tmp_path / "memory.log", db_startup_timeout_s="1")
    with pytest.raises(RuntimeError, match="exited early"):
        memory.start(60)
    assert memory.proc is not None
    assert memory.proc.returncode == 1
    logs = memory.logs()
    assert "database not reachable yet" in logs
    assert "database not reachable within the startup window" in logs
    assert "pw-never-logged" not in logs


async def test_embedding_outage_fails_embedding_calls_only(
    memory_proc: MemoryFactory, fresh_dsn: str
) -> None:
    dead = "127.0.0.1:9"  # nothing listens on the discard port
    memory = memory_proc(fresh_dsn, embedding=dead, embedding__timeout_s="1")
    assert health_status(memory.target) == SERVING  # readiness follows the database only
    async with MemoryClient.connect(memory.target) as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.remember(user_id="u", request_id="m-1", texts=["x"], timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert err.value.details() == "embedding service is unavailable"
        turn = await client.append_turn(
            user_id="u", session_id="s", request_id="t-1", messages=[message("user", "hi")]
        )
        assert turn.created


async def test_embedding_process_serves_the_real_model(embedding_proc: ServiceProcess) -> None:
    async with EmbeddingClient.connect(embedding_proc.target) as client:
        result = await client.embed(["A cat sits on the mat.", "Un gato en la alfombra."])
    assert result.vectors.shape == (2, 384)
    assert result.model == "sentence-transformers/all-MiniLM-L6-v2"


def test_sigterm_drains_and_exits_cleanly(memory_proc: MemoryFactory, fresh_dsn: str) -> None:
    memory = memory_proc(fresh_dsn)
    assert memory.stop() == 0
    logs = memory.logs()
    assert '"msg": "draining"' in logs
    assert '"msg": "stopped"' in logs
