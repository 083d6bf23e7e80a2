"""The caller's identity: who may act for whom, what is forwarded, and that an RPC's
identity does not leak into another task."""

from __future__ import annotations

import asyncio

import pytest

from services.common import identity
from services.common.identity import ADMIN_SCOPE, ON_BEHALF_SCOPE, Identity


def test_a_user_acts_only_for_itself() -> None:
    ana = Identity("t1", "ana", frozenset({"chat"}), "jwt")
    assert ana.may_act_for("ana") and not ana.may_act_for("bob")
    assert not ana.is_admin


def test_admin_and_on_behalf_scopes_may_name_any_user() -> None:
    for scope in (ADMIN_SCOPE, ON_BEHALF_SCOPE):
        caller = Identity("t1", "", frozenset({scope}), "api_key")
        assert caller.may_act_for("bob")
    assert Identity("t1", "", frozenset({ADMIN_SCOPE}), "jwt").is_admin


def test_an_identity_needs_a_tenant_and_a_known_method() -> None:
    with pytest.raises(ValueError, match="tenant"):
        Identity("", "ana")
    with pytest.raises(ValueError, match="method"):
        Identity("t1", "ana", method="password")


def test_metadata_forwards_tenant_user_and_sorted_scopes() -> None:
    caller = Identity("t1", "ana", frozenset({"b", "a"}), "jwt")
    assert dict(caller.metadata()) == {
        identity.TENANT_KEY: "t1",
        identity.USER_KEY: "ana",
        identity.SCOPES_KEY: "a b",
    }


async def test_acting_as_is_scoped_to_the_block_and_the_task() -> None:
    ana = Identity("t1", "ana", method="jwt")
    seen: list[Identity] = []

    async def other_task() -> None:
        seen.append(identity.current())

    assert identity.current() is identity.ANONYMOUS
    with identity.acting_as(ana):
        assert identity.current() is ana
        task = asyncio.create_task(other_task())  # copies the context: still ana
        await task
    await asyncio.create_task(other_task())  # created after the block
    assert seen == [ana, identity.ANONYMOUS]
    assert identity.current() is identity.ANONYMOUS
