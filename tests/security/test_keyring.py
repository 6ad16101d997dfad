"""The key ring: constant-time checks, reload on a changed file, a failed reload keeps the keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmcache_core.security.key_sources import KeySourceError, KeySources
from lmcache_core.security.keyring import ApiKeyRing


class Clock:
    """A hand-driven monotonic clock (the ring's check interval without sleeping)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rewrite(path: Path, text: str) -> None:
    """Replace a key file as an operator should: a new file renamed over the old one."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def test_disabled_ring_accepts_everything() -> None:
    ring = ApiKeyRing.disabled()
    assert not ring.enabled and ring.accepts(None) and ring.accepts("anything")


def test_checks_accept_only_configured_keys(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("file-key")
    ring = ApiKeyRing(KeySources.gather([tmp_path / "k"], env={"LMCACHE_API_KEY": "env-key"}))
    assert ring.enabled and ring.key_count == 2
    assert ring.accepts("file-key") and ring.accepts(b"env-key")
    for wrong in (None, "", "file-ke", "file-key ", "FILE-KEY", "env-keyx"):
        assert not ring.accepts(wrong), wrong
    assert "file-key" not in repr(ring) and "file-key" not in str(ring.status())


def test_a_changed_file_is_reloaded_after_the_interval(tmp_path: Path) -> None:
    path, clock = tmp_path / "k", Clock()
    path.write_text("old")
    ring = ApiKeyRing(KeySources.gather([path], env={}), check_interval=1.0, clock=clock)
    rewrite(path, "new")
    assert ring.accepts("old") and not ring.accepts("new")  # not looked at yet
    clock.now = 1.0
    assert ring.accepts("new") and not ring.accepts("old")
    assert ring.stats.reloads == 1


def test_a_failed_reload_keeps_the_accepted_keys(tmp_path: Path) -> None:
    path, clock = tmp_path / "k", Clock()
    path.write_text("old")
    ring = ApiKeyRing(KeySources.gather([path], env={}), check_interval=1.0, clock=clock)
    rewrite(path, "")
    clock.now = 1.0
    assert ring.accepts("old")
    clock.now = 2.0
    assert ring.accepts("old")
    assert ring.stats.reload_failures == 1  # the same bad file is not retried every second
    path.unlink()
    clock.now = 3.0
    assert ring.accepts("old") and ring.stats.reload_failures == 2
    rewrite(path, "fixed")
    clock.now = 4.0
    assert ring.accepts("fixed") and not ring.accepts("old")


def test_rejections_are_counted_by_transport() -> None:
    ring = ApiKeyRing(KeySources.gather((), env={"LMCACHE_API_KEY": "k"}))
    ring.reject("zmq")
    ring.reject("zmq")
    ring.reject("http")
    assert ring.rejections() == {"zmq": 2, "http": 1}


def test_an_unusable_file_at_start_up_raises(tmp_path: Path) -> None:
    with pytest.raises(KeySourceError):
        ApiKeyRing(KeySources.gather([tmp_path / "absent"], env={}))
