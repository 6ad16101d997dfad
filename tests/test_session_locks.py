"""A session's lock ledger: what it records, gives back and forgets (fast paths included)."""

from __future__ import annotations

from lmcache_core.engine.sessions import Session
from lmcache_core.engine.token_cache import TokenHashCache
from lmcache_core.hashing import make_hasher
from lmcache_core.storage.keys import ObjectKey

A, B, C, D = (ObjectKey(h, "m", 0) for h in (b"a", b"b", b"c", b"d"))


def session() -> Session:
    return Session("r", TokenHashCache(make_hasher("builtin"), 16).new_request(), 0.0)


def test_a_fresh_session_records_each_key_once_per_lock() -> None:
    s = session()
    s.take_locks([A, B], 2, deadline=5.0)
    assert s.locks == {A: (2, 5.0), B: (2, 5.0)}


def test_a_repeated_key_is_counted_per_occurrence() -> None:
    s = session()
    s.take_locks([A, B, A], 1, deadline=5.0)  # the one-pass path cannot count this
    assert s.locks == {A: (2, 5.0), B: (1, 5.0)}
    s.take_locks(iter([C]), 1, deadline=3.0)  # any iterable, onto held locks
    s.take_locks([A], 1, deadline=9.0)  # the earliest deadline is kept
    assert s.locks == {A: (3, 5.0), B: (1, 5.0), C: (1, 3.0)}


def test_disjoint_keys_onto_held_locks_are_added_and_overlapping_ones_counted() -> None:
    s = session()
    s.take_locks([A], 1, deadline=5.0)  # the blend engine's prefix leg
    s.take_locks([B, C], 2, deadline=4.0)  # then its sparse leg: none held yet
    assert s.locks == {A: (1, 5.0), B: (2, 4.0), C: (2, 4.0)}
    s.take_locks([C, D], 1, deadline=9.0)  # C is held: counted, its earliest deadline kept
    assert s.locks == {A: (1, 5.0), B: (2, 4.0), C: (3, 4.0), D: (1, 9.0)}


def test_give_back_returns_live_locks_and_forgets_expired_ones() -> None:
    s = session()
    s.take_locks([A, B], 2, deadline=5.0)
    s.take_locks([C], 1, deadline=1.0)
    assert s.give_back([A, C, ObjectKey(b"x", "m", 0)], 1, now=2.0) == {A: 1}  # C expired
    assert s.locks == {A: (1, 5.0), B: (2, 5.0)}
    assert s.give_back([A, B], 5) == {A: 1, B: 2}  # never more than held
    assert not s.locks
