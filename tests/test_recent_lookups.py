"""The ring of recent lookup explanations: readers wait for entries announced as coming."""

from __future__ import annotations

import threading
import time

import pytest

from lmcache_core.engine import recent_lookups
from lmcache_core.engine.recent_lookups import RecentLookups


def test_a_reader_waits_for_an_expected_entry() -> None:
    ring: RecentLookups[str] = RecentLookups(4)
    ring.expect()
    writer = threading.Timer(0.05, lambda: (ring.add("r", "explained"), ring.settle()))
    writer.start()
    started = time.monotonic()
    try:
        assert ring.get("r") == "explained"  # not None: the reader waited for it
    finally:
        writer.join()
    assert time.monotonic() - started >= 0.04
    assert ring.newest(5) == ["explained"]


def test_an_entry_that_never_comes_costs_a_reader_one_bounded_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(recent_lookups, "SETTLE_SECONDS", 0.05)
    ring: RecentLookups[str] = RecentLookups(4)
    ring.expect()
    started = time.monotonic()
    assert ring.get("r") is None
    assert time.monotonic() - started < 2.0
    ring.settle()  # the work failed: settled without an entry
    ring.settle()  # more settles than expects never go below zero
    ring.expect()
    ring.settle()
    assert ring.newest(5) == []
