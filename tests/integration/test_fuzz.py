"""A short `make fuzz`: 200 generated requests to every RPC of every service of a
real stack (the simulator for generation), with Hypothesis's fixed seed. No call
may end INTERNAL or UNKNOWN or carry a path, address or stack trace; no service
may exit; all stay SERVING; every row memory stored passes a request's checks."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from loadtests.fuzz.run import StackInfo, Summary, all_rpcs, run, table
from services.common import topology
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.integration

CASES = 200


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("fuzz-stack")) as s:
        yield s


def test_every_rpc_survives_generated_requests(stack: Stack) -> None:
    info = StackInfo(
        stack.state, {n: stack.target(n) for n in topology.NAMES}, stack.state / "stack.log"
    )
    rpcs = all_rpcs()
    summary: Summary = run(
        info,
        rpcs,
        max_cases=CASES,
        max_seconds=None,
        seed=None,
        derandomize=True,
        concurrency=16,
        call_timeout_s=60.0,
        progress=False,
    )
    report = json.dumps(summary.as_dict(), indent=1)[:20000]
    assert summary.passed, f"{table(summary)}\n{report}"
    assert set(summary.rpcs) == {r.name for r in rpcs}
    for name, stats in summary.rpcs.items():
        assert stats.cases == CASES, name
        assert sum(stats.statuses.values()) == CASES, name
    # The cases did reach the services' work, and the store check had rows to read.
    assert sum(s.statuses["OK"] for s in summary.rpcs.values()) > CASES
    assert summary.store is not None and summary.store.rows.get("turns", 0) > 0
    assert summary.health == dict.fromkeys(topology.NAMES, "SERVING")
