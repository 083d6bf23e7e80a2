"""The API key store on a real file: keys made, verified, revoked; only hashes on
disk; the file rewritten atomically and re-read when another process changes it."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest

from services.common.api_keys import ApiKeyStore, ApiKeyStoreError, key_id
from services.common.identity import API_KEY_PREFIX, Identity


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_new_key_verifies_and_names_its_tenant_user_and_scopes(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path / "keys.json")
    record, key = store.create(tenant="acme", user="bot", scopes=["b", "a", "a"], name="ingest")
    assert key.startswith(API_KEY_PREFIX) and key_id(key) == record.id
    assert record.scopes == ("a", "b") and record.created
    found, reason = store.verify(key)
    assert (found, reason) == (record, "")
    assert record.identity() == Identity("acme", "bot", frozenset({"a", "b"}), "api_key")


def test_only_the_hash_is_stored_and_the_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    record, key = ApiKeyStore(path).create(tenant="acme", name="ingest")
    text = path.read_text()
    assert key not in text and key.split("_", 2)[2] not in text
    assert json.loads(text)["keys"][0]["sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".keys.json.")] == []
    public = record.public()
    assert "sha256" not in public and key not in json.dumps(public)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"), "unknown_key"),  # wrong secret
        (lambda k: API_KEY_PREFIX + "0" * 12 + k[16:], "unknown_key"),  # another id
        (lambda k: k + "x", "malformed"),
        (lambda k: k.replace(API_KEY_PREFIX, "xyz_"), "malformed"),
        (lambda k: "", "malformed"),
    ],
)
def test_wrong_keys_are_refused_with_a_reason(tmp_path: Path, mutate: object, reason: str) -> None:
    store = ApiKeyStore(tmp_path / "keys.json")
    _, key = store.create(tenant="acme", name="n")
    assert callable(mutate)
    assert store.verify(mutate(key)) == (None, reason)


def test_a_revoked_key_is_refused(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path / "keys.json", check_interval_s=0)
    record, key = store.create(tenant="acme", name="n")
    other, other_key = store.create(tenant="acme", name="m")
    revoked = store.revoke(record.id)
    assert revoked is not None and revoked.revoked
    assert store.verify(key) == (None, "revoked")
    assert store.verify(other_key) == (other, "")
    assert store.revoke("nope") is None
    assert [k.revoked for k in store.records()] == [True, False]


def test_the_gateway_sees_keys_made_and_revoked_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    clock = Clock()
    gateway = ApiKeyStore(path, check_interval_s=1.0, clock=clock)
    cli = ApiKeyStore(path)
    record, key = cli.create(tenant="acme", name="n")
    assert gateway.verify(key)[0] == record  # first use reads the file
    cli.revoke(record.id)
    assert gateway.verify(key)[0] == record  # checked at most once a second
    clock.now += 1.0
    assert gateway.verify(key) == (None, "revoked")
    path.unlink()
    clock.now += 1.0
    assert gateway.verify(key) == (None, "unknown_key")


def test_an_unreadable_file_keeps_the_keys_read_before(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    clock = Clock()
    gateway = ApiKeyStore(path, check_interval_s=1.0, clock=clock)
    record, key = ApiKeyStore(path).create(tenant="acme", name="n")
    assert gateway.verify(key)[0] == record
    path.write_text("{ not json")
    clock.now += 1.0
    assert gateway.verify(key)[0] == record
    with pytest.raises(ApiKeyStoreError):
        ApiKeyStore(path).records()  # the CLI says so instead
    with pytest.raises(ApiKeyStoreError):
        ApiKeyStore(path).create(tenant="acme", name="n")


def test_a_missing_file_has_no_keys(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path / "absent.json")
    assert store.records() == []
    assert store.verify(API_KEY_PREFIX + "0" * 12 + "_" + "a" * 43) == (None, "unknown_key")
    with pytest.raises(ValueError, match="tenant"):
        store.create(tenant="", name="n")
