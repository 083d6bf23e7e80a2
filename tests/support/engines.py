"""Reading an engine's stream in tests."""

from __future__ import annotations

from services.engines.base import Delta, Engine, Finish, GenerationRequest


async def collect_events(engine: Engine, request: GenerationRequest) -> tuple[list[Delta], Finish]:
    """Every Delta of a stream and its Finish; fails if the stream breaks the
    contract (no Finish, or anything after it)."""
    deltas: list[Delta] = []
    finish: Finish | None = None
    async for event in engine.generate(request):
        assert finish is None, "nothing may follow the Finish"
        if isinstance(event, Delta):
            deltas.append(event)
        else:
            finish = event
    assert finish is not None, "the stream ended without a Finish"
    return deltas, finish
