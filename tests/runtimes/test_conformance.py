"""One conformance suite, run on every runtime (tests/runtimes/conftest.py): the
same requests give the same answers and the same error codes as the plain
grpc.aio services."""

from __future__ import annotations

import numpy as np
import pytest

from tests.runtimes.runtimes import Failure, Runtime

pytestmark = pytest.mark.integration

TEXTS = ["Atalaya means watchtower.", "The gateway streams tokens to the client."]
CARD = "My card number is 4111 1111 1111 1111, can you store it?"


@pytest.mark.parametrize("normalize", [True, False], ids=["normalized", "raw"])
async def test_embed_gives_the_same_vectors(
    runtime: Runtime, reference: Runtime, normalize: bool
) -> None:
    expected = await reference.embed(TEXTS, normalize=normalize)
    got = await runtime.embed(TEXTS, normalize=normalize)
    assert got.shape == expected.shape == (2, 384)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


async def test_classify_flags_pii_as_s7(runtime: Runtime) -> None:
    verdict = await runtime.classify(CARD, policy="pii")
    assert (verdict.verdict, verdict.categories, verdict.decided_by) == ("unsafe", ("S7",), "pii")


async def test_classify_answers_like_the_grpc_service(runtime: Runtime, reference: Runtime) -> None:
    for text in ("What is the capital of France?", CARD):
        assert await runtime.classify(text, policy="fast") == await reference.classify(
            text, policy="fast"
        )


async def _failure(coro: object) -> Failure:
    with pytest.raises(Failure) as info:
        await coro  # type: ignore[misc]
    return info.value


async def test_an_empty_embed_is_invalid_argument(runtime: Runtime, reference: Runtime) -> None:
    expected = await _failure(reference.embed([], normalize=True))
    got = await _failure(runtime.embed([], normalize=True))
    assert got.code == expected.code == "INVALID_ARGUMENT"
    assert got.http_status in (None, 400)
    assert got.message == expected.message  # the core's own words, on every runtime


async def test_an_empty_classify_is_invalid_argument(runtime: Runtime) -> None:
    got = await _failure(runtime.classify("", policy="fast"))
    assert got.code == "INVALID_ARGUMENT" and got.http_status in (None, 400)


async def test_an_unknown_policy_is_not_found(runtime: Runtime, reference: Runtime) -> None:
    expected = await _failure(reference.classify("hello", policy="no-such-policy"))
    got = await _failure(runtime.classify("hello", policy="no-such-policy"))
    assert got.code == expected.code == "NOT_FOUND"
    assert got.http_status in (None, 404)
