"""API keys for service-to-service callers at the edge.

A key is `atk_<id>_<secret>`: `id` (12 hex characters) names the record, `secret`
is 32 random bytes (secrets.token_urlsafe). The key itself is shown once, when it is
made; the store keeps only its SHA-256, with the tenant, user and scopes it is bound
to. A fast hash is enough here, and deliberate: the key carries 256 bits of
randomness, so no dictionary or brute-force attack on a stolen hash is possible, and
slow password hashes (bcrypt, scrypt, argon2) would only add milliseconds to every
call without making the hash any harder to reverse. The stored hash is compared in
constant time.

The store is one JSON file (the chart mounts it from a Secret), rewritten atomically
(a temporary file in the same folder, then rename) under a lock file by `atalaya
keys`, and re-read by the gateway when it changes on disk."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.common.identity import API_KEY_PREFIX, Identity
from services.common.watch import WatchedFiles

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ID_HEX_CHARS = 12
SECRET_BYTES = 32
_KEY = re.compile(rf"^{API_KEY_PREFIX}(?P<id>[0-9a-f]{{{ID_HEX_CHARS}}})_[A-Za-z0-9_-]{{43}}$")


@dataclass(frozen=True)
class ApiKey:
    """One stored key: what it is bound to, never the key itself."""

    id: str
    name: str
    tenant: str
    user: str = ""
    scopes: tuple[str, ...] = ()
    created: str = ""  # ISO 8601, UTC
    revoked: bool = False
    sha256: str = field(default="", repr=False)

    def identity(self) -> Identity:
        return Identity(self.tenant, self.user, frozenset(self.scopes), "api_key")

    def public(self) -> dict[str, Any]:
        """The record without its hash, for listings."""
        out = asdict(self)
        del out["sha256"]
        out["scopes"] = list(self.scopes)
        return out


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh (id, key)."""
    key_id = secrets.token_hex(ID_HEX_CHARS // 2)
    return key_id, f"{API_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"


def key_id(key: str) -> str | None:
    """The record id a well-formed key names; None for anything else."""
    match = _KEY.match(key)
    return match.group("id") if match else None


class ApiKeyStoreError(Exception):
    """The key file cannot be read or written (the message names the file, for
    operators; never shown to callers)."""


def _parse(text: str) -> dict[str, ApiKey]:
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise ValueError(f"expected an object with version {FORMAT_VERSION}")
    keys: dict[str, ApiKey] = {}
    for item in data.get("keys", []):
        record = ApiKey(
            id=str(item["id"]),
            name=str(item.get("name", "")),
            tenant=str(item["tenant"]),
            user=str(item.get("user", "")),
            scopes=tuple(str(s) for s in item.get("scopes", [])),
            created=str(item.get("created", "")),
            revoked=bool(item.get("revoked", False)),
            sha256=str(item["sha256"]),
        )
        if not record.tenant or len(record.sha256) != 64:
            raise ValueError(f"key {record.id!r} needs a tenant and a sha256")
        keys[record.id] = record
    return keys


def _dump(keys: Iterable[ApiKey]) -> str:
    items = [{**asdict(k), "scopes": list(k.scopes)} for k in keys]
    return json.dumps({"version": FORMAT_VERSION, "keys": items}, indent=2) + "\n"


class ApiKeyStore:
    """The keys in `path`. `verify` re-reads the file when it has changed (checked
    at most every `check_interval_s`); a file that cannot be parsed keeps the keys
    read before it, and says so in the log."""

    def __init__(
        self,
        path: Path,
        *,
        check_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._watch = WatchedFiles(path, check_interval_s=check_interval_s, clock=clock)
        self._keys: dict[str, ApiKey] = {}

    # ------------------------------------------------------------------ reading

    def records(self) -> list[ApiKey]:
        """Every record, oldest first (read from disk now)."""
        self._reload(force=True)
        return list(self._keys.values())  # the file keeps them in the order made

    def _reload(self, *, force: bool = False) -> None:
        changed, signature = self._watch.poll(force=force)
        if not changed:
            return
        if signature is None:
            if self._keys:
                log.warning("api key file is gone: no keys", extra={"path": str(self.path)})
            self._keys = {}
            self._watch.seen(None)
            return
        try:
            keys = _parse(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if force:
                raise ApiKeyStoreError(f"cannot read {self.path}: {exc}") from exc
            log.error(
                "api key file unreadable: keeping the keys read before",
                extra={"path": str(self.path), "reason": type(exc).__name__},
            )
            self._watch.seen(signature)  # do not re-read it until it changes again
            return
        self._keys = keys
        self._watch.seen(signature)
        log.info("api keys loaded", extra={"path": str(self.path), "count": len(keys)})

    def verify(self, key: str) -> tuple[ApiKey | None, str]:
        """The record of a valid, unrevoked key and "", or None and a reason code
        for the log (malformed, unknown_key, revoked)."""
        record_id = key_id(key)
        if record_id is None:
            return None, "malformed"
        self._reload()
        record = self._keys.get(record_id)
        if record is None or not hmac.compare_digest(record.sha256, digest(key)):
            return None, "unknown_key"
        if record.revoked:
            return None, "revoked"
        return record, ""

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, ApiKey]]:
        """The current keys, under an exclusive lock; what the block leaves in the
        dict is written back atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                keys = _parse(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
            except (ValueError, KeyError, TypeError) as exc:
                raise ApiKeyStoreError(f"cannot read {self.path}: {exc}") from exc
            before = dict(keys)
            yield keys
            if keys != before:
                self._write(keys.values())
            self._keys = keys

    def _write(self, keys: Iterable[ApiKey]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                os.fchmod(out.fileno(), 0o600)
                out.write(_dump(keys))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def create(
        self, *, tenant: str, name: str, scopes: Iterable[str] = (), user: str = ""
    ) -> tuple[ApiKey, str]:
        """A new record and its key (the only time the key exists in the clear)."""
        if not tenant:
            raise ValueError("a key needs a tenant")
        with self._locked() as keys:
            key_id_, key = new_key()
            while key_id_ in keys:
                key_id_, key = new_key()
            record = ApiKey(
                id=key_id_,
                name=name,
                tenant=tenant,
                user=user,
                scopes=tuple(sorted(set(scopes))),
                created=datetime.now(UTC).isoformat(timespec="seconds"),
                sha256=digest(key),
            )
            keys[record.id] = record
        return record, key

    def revoke(self, record_id: str) -> ApiKey | None:
        """The revoked record; None when there is no such id."""
        with self._locked() as keys:
            record = keys.get(record_id)
            if record is None:
                return None
            keys[record_id] = record = replace(record, revoked=True)
        return record
