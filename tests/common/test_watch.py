"""Files re-read when they change: what counts as a change, and how often it is looked for."""

from __future__ import annotations

import os
from pathlib import Path

from services.common.watch import WatchedFiles, file_signature


def test_a_rewrite_a_replacement_or_a_removal_is_a_change(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("one")
    watch = WatchedFiles(path)
    changed, signature = watch.poll()
    assert changed and signature == file_signature([path])  # never read yet
    watch.seen(signature)
    assert watch.poll() == (False, None)
    path.write_text("two, longer")
    changed, signature = watch.poll()
    assert changed and signature is not None
    watch.seen(signature)
    # A Kubernetes volume swaps a symlink: same size, another inode.
    (tmp_path / "next").write_text("two, longer")
    os.replace(tmp_path / "next", path)
    assert watch.poll()[0]
    path.unlink()
    assert watch.poll() == (True, None)


def test_an_unrecorded_read_is_retried_and_looks_respect_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text("{}")
    now = [0.0]
    watch = WatchedFiles(path, check_interval_s=1.0, clock=lambda: now[0])
    assert watch.poll()[0]  # read, but broken: not recorded with seen()
    assert watch.poll() == (False, None)  # not due yet
    now[0] += 1.0
    assert watch.poll()[0]  # due, still unrecorded: tried again
    watch.seen_now()
    now[0] += 1.0
    assert watch.poll() == (False, None)  # due, unchanged
    assert watch.poll(force=True)[0]  # a forced look reads anyway
