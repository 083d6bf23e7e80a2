"""Files re-read when they change on disk: certificates that cert-manager rotates,
the API keys and JWKS files a Secret or ConfigMap mounts. One answer to "has it
changed since I last read it?" for all of them.

A change is any difference in (inode, size, mtime) of any of the files. stat follows
symlinks, so a Kubernetes volume's atomic swap of its `..data` link counts even
when size and mtime happen to match. Hand-written because a watcher library
(inotify) misses those symlink swaps inside projected volumes and needs a thread;
a stat per look is cheap and works on every filesystem."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

Signature = tuple[tuple[int, int, int], ...]


def file_signature(paths: Sequence[Path]) -> Signature | None:
    """What changes when any of `paths` is replaced or rewritten; None when one is
    missing or unreadable."""
    try:
        stats = [os.stat(p) for p in paths]
    except OSError:
        return None
    return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)


class WatchedFiles:
    """Files and the state they were in when last read. `poll()` says whether they
    differ now, looking at most every `check_interval_s` (0: at every call); the
    reader then records the state it read with `seen()` (good or bad: a broken file
    is not re-read until it changes again) or leaves it unrecorded to retry at the
    next look."""

    def __init__(
        self,
        *paths: Path,
        check_interval_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.paths = paths
        self._check_interval_s = check_interval_s
        self._clock = clock
        self._checked_at: float | None = None
        self._seen: Signature | None = None
        self._read_once = False

    def poll(self, *, force: bool = False) -> tuple[bool, Signature | None]:
        """(True, the files' signature now) when a look is due (or `force`) and they
        differ from the state last seen (None: one is missing); else (False, None)."""
        now = self._clock()
        due = self._checked_at is None or now - self._checked_at >= self._check_interval_s
        if not (due or force):
            return False, None
        self._checked_at = now
        signature = file_signature(self.paths)
        if self._read_once and signature == self._seen and not force:
            return False, None
        return True, signature

    def seen(self, signature: Signature | None) -> None:
        """Record the state just read."""
        self._seen = signature
        self._read_once = True

    def seen_now(self) -> None:
        """Record the files' present state (a reader that has just read them)."""
        self.seen(file_signature(self.paths))
