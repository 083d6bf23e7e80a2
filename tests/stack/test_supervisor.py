"""services.stack.supervisor over small real children (tests.support.health_server,
a grpc.health.v1 server that notes its start and stop in a shared file): start in
order, each once the one before is SERVING; restart of a crashed child with a
doubling backoff that resets once it is back; stop in reverse order, also on
Ctrl-C. Everything waits for what the supervisor says or the children note."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from services.common.health import check
from services.common.process import free_port
from services.stack.config import ProcessSpec
from services.stack.supervisor import Supervisor

NAMES = ("first", "second", "third")
WAIT_S = 60.0


class Lines:
    """Every line the supervisor writes, and a way to wait for one."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._waiters: list[tuple[str, int, asyncio.Future[int]]] = []

    def __call__(self, line: str) -> None:
        self.seen.append(line)
        index = len(self.seen) - 1
        for waiter in list(self._waiters):
            text, since, future = waiter
            if index >= since and text in line and not future.done():
                future.set_result(index)
                self._waiters.remove(waiter)

    async def wait_for(self, text: str, since: int = 0) -> int:
        """The index of the first line at or after `since` that contains `text`."""
        for index in range(since, len(self.seen)):
            if text in self.seen[index]:
                return index
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append((text, since, future))
        return await asyncio.wait_for(future, WAIT_S)

    def said(self) -> list[str]:
        """The supervisor's own lines, without their prefix."""
        return [
            line.removeprefix("stack     | ") for line in self.seen if line.startswith("stack ")
        ]


class Children:
    """Specs of stand-in services on free ports, and what they noted."""

    def __init__(self, tmp_path: Path) -> None:
        self.events = tmp_path / "events"
        self.crash = tmp_path / "crash"  # while it exists, "second" exits at once
        self.specs = [
            ProcessSpec(
                name=name,
                module="tests.support.health_server",
                port=(port := free_port()),
                env={
                    "HEALTH_NAME": name,
                    "HEALTH_PORT": str(port),
                    "HEALTH_EVENTS": str(self.events),
                    "HEALTH_CRASH": str(self.crash) if name == "second" else "",
                },
                start_timeout_s=WAIT_S,
            )
            for name in NAMES
        ]

    def noted(self) -> list[str]:
        """ "start <name>" and "stop <name>", in the order they happened."""
        lines = self.events.read_text().splitlines() if self.events.exists() else []
        return [" ".join(line.split()[:2]) for line in lines]

    def pid(self, name: str) -> int:
        starts = [line.split() for line in self.events.read_text().splitlines()]
        return int([s for s in starts if s[:2] == ["start", name]][-1][2])


@pytest.fixture
def children(tmp_path: Path) -> Children:
    return Children(tmp_path)


async def test_starts_in_order_once_each_is_serving_and_stops_in_reverse(
    children: Children,
) -> None:
    lines = Lines()
    supervisor = Supervisor(children.specs, out=lines)
    try:
        await supervisor.start()
        for spec in children.specs:
            assert check(spec.target).serving
        # Each child's own output arrives prefixed with its name, its JSON log pretty.
        for name in NAMES:
            line = lines.seen[await lines.wait_for(f"{name:<10}| ")]
            assert line == f"{name:<10}| 00:00:00.000 INFO    serving"
    finally:
        await supervisor.stop()

    assert children.noted() == [*(f"start {n}" for n in NAMES), *(f"stop {n}" for n in NAMES[::-1])]
    targets = {s.name: s.target for s in children.specs}
    assert lines.said() == [
        line
        for name in NAMES
        for line in (f"starting {name} on {targets[name]}", f"{name} SERVING on {targets[name]}")
    ]


async def test_a_line_longer_than_the_buffer_comes_out_whole_in_pieces(
    children: Children,
) -> None:
    # Without the pieces, the pump stopped at the long line and the child blocked on
    # its next write once the pipe was full: a service logging one long line hung.
    size = 1 << 20
    first = children.specs[0]
    spec = ProcessSpec(
        first.name, first.module, first.port, env={**first.env, "HEALTH_LONG_LINE": str(size)}
    )
    lines = Lines()
    supervisor = Supervisor([spec], out=lines)
    try:
        await supervisor.start()
        serving = await lines.wait_for("INFO    serving")
    finally:
        await supervisor.stop()
    pieces = [line.removeprefix(f"{first.name:<10}| ") for line in lines.seen[:serving]]
    assert "".join(p for p in pieces if set(p) == {"x"}) == "x" * size


async def test_restarts_a_crashed_child_with_a_doubling_backoff(children: Children) -> None:
    lines = Lines()
    supervisor = Supervisor(children.specs, out=lines, first_backoff_s=0.05, max_backoff_s=0.2)
    second = children.specs[1]
    await supervisor.start()
    try:
        children.crash.touch()
        mark = len(lines.seen)
        os.kill(children.pid("second"), signal.SIGKILL)
        capped = await lines.wait_for("restarting in 0.2s", since=mark)
        await lines.wait_for("restarting in 0.2s", since=capped + 1)
        children.crash.unlink()
        await lines.wait_for("second is back", since=mark)
        assert lines.said()[-8:] == [
            "second exited with code -9; restarting in 0.05s",
            "second exited with code 3 while starting",
            "second exited with code 3; restarting in 0.1s",
            "second exited with code 3 while starting",
            "second exited with code 3; restarting in 0.2s",
            "second exited with code 3 while starting",
            "second exited with code 3; restarting in 0.2s",
            f"second is back: SERVING on {second.target}",
        ]
        assert check(second.target).serving

        # Back and SERVING: the next crash waits the first backoff again.
        mark = len(lines.seen)
        os.kill(children.pid("second"), signal.SIGKILL)
        await lines.wait_for("second is back", since=mark)
        assert lines.said()[-2:] == [
            "second exited with code -9; restarting in 0.05s",
            f"second is back: SERVING on {second.target}",
        ]
    finally:
        await supervisor.stop()
    noted = children.noted()
    assert noted[-3:] == ["stop third", "stop second", "stop first"]
    assert noted.count("start first") == 1 and noted.count("start third") == 1


async def test_ctrl_c_drains_in_reverse_order(children: Children) -> None:
    lines = Lines()
    supervisor = Supervisor(children.specs, out=lines)
    running = asyncio.create_task(supervisor.run())
    await lines.wait_for("Ctrl-C stops the stack")
    os.kill(os.getpid(), signal.SIGINT)  # the handler run() installed takes it
    assert await asyncio.wait_for(running, WAIT_S) == 0
    assert children.noted()[3:] == ["stop third", "stop second", "stop first"]
    said = lines.said()
    assert said[said.index("all services SERVING:") :] == [
        "all services SERVING:",
        *(f"  {s.name:<10} {s.target}" for s in children.specs),
        "Ctrl-C stops the stack",
        "stopping",
        "stopped",
    ]
