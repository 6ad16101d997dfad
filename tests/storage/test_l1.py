"""The L1 manager: states, dedupe, all-or-nothing, eviction, TTLs, temporary objects.

And the calls engines need: lock the usable prefix, pin without an access, wait
until resident, the shared segment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
import torch

from lmcache_core.plugin import PluginKind
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.storage.arena import Arena
from lmcache_core.storage.errors import L1ClosedError, L1FullError, ReservationExpired
from lmcache_core.storage.eviction import EvictionPolicy, EvictionSettings
from lmcache_core.storage.keys import ObjectKey, prefix_chunks
from lmcache_core.storage.l1 import L1Manager, Reservation
from lmcache_core.storage.l2.adapter import L2AdapterV1
from lmcache_core.storage.l2.tier import L2Tier
from tests.storage.doubles import (
    KIB,
    MIB,
    FakeClock,
    FifoPolicyDouble,
    NeverEvictDouble,
    check_l1,
    chunks,
    key,
    make_l1,
)

OBJ = 64 * KIB  # 16 objects fill the default 1 MiB L1


def store(l1: L1Manager, keys: list[ObjectKey], value: int = 1, nbytes: int = OBJ) -> None:
    """Reserve, fill with ``value``, commit: what the store path does."""
    reservations = l1.reserve(keys, nbytes)
    filled = [r for r in reservations if r is not None]
    for reservation in filled:
        l1.buffer(reservation).fill_(value)
    l1.commit(filled)


def lru() -> EvictionPolicy:
    settings = EvictionSettings(trigger_watermark=0.8, eviction_ratio=0.2, capacity_bytes=MIB)
    policy: EvictionPolicy = PluginRegistry(strict=True).build(
        PluginKind.EVICTION_POLICY, "LRU", settings
    )
    return policy


# -- staging and commit ------------------------------------------------------------


def test_staged_objects_are_invisible_until_commit() -> None:
    l1 = make_l1()
    a = chunks("a", 3)
    reservations = l1.reserve(a, 1000)
    assert all(isinstance(r, Reservation) for r in reservations)
    assert l1.contains(a) == [False] * 3
    assert l1.lock_for_read(a) == [False] * 3
    with pytest.raises(KeyError):
        l1.read_view(a[0])
    assert l1.usage().staged_objects == 3
    for index, reservation in enumerate(reservations):
        assert reservation is not None
        assert reservation.nbytes == 1000 and reservation.offset % 4096 == 0
        l1.buffer(reservation).fill_(index + 1)
    l1.commit([r for r in reservations if r is not None])
    assert l1.contains(a) == [True] * 3
    assert l1.read_view(a[2]).tolist() == [3] * 1000
    assert [view[0].item() for view in l1.read_views(a)] == [1, 2, 3]
    with pytest.raises(KeyError):
        l1.read_views([a[0], key("missing")])
    usage = l1.usage()
    assert (usage.resident_objects, usage.staged_objects, usage.used_bytes) == (3, 0, 3 * 4096)
    check_l1(l1)


def test_buffer_by_offset_and_arena_offsets_are_absolute() -> None:
    l1 = make_l1()
    (reservation,) = l1.reserve([key("x")], 10)
    assert reservation is not None
    l1.buffer(reservation.offset, 10).fill_(4)
    assert l1.arena.view(reservation.offset, 10).tolist() == [4] * 10
    with pytest.raises(ValueError, match="nbytes"):
        l1.buffer(reservation.offset)


def test_commit_tells_the_policy_in_the_given_order() -> None:
    policy = FifoPolicyDouble()
    l1 = make_l1(policy=policy)
    a = chunks("a", 4)
    reservations = [r for r in l1.reserve(a, OBJ) if r is not None]
    assert policy.stored == []  # staged objects are not tracked
    l1.commit(reservations)
    assert policy.stored == [a]


def test_reserve_dedupes_resident_staged_and_repeated_keys() -> None:
    l1 = make_l1()
    a, b = chunks("a", 2), chunks("b", 2)
    store(l1, a)
    staged = l1.reserve(b, OBJ)
    again = l1.reserve([a[0], b[0], key("c"), key("c"), a[1]], OBJ)
    assert [r is None for r in again] == [True, True, False, True, True]
    assert again[2] is not None and again[2].key == key("c")
    assert all(r is not None for r in staged)
    assert l1.reserve([], OBJ) == []
    assert l1.usage().staged_objects == 3
    check_l1(l1)


def test_abort_frees_staged_objects() -> None:
    l1 = make_l1()
    reservations = [r for r in l1.reserve(chunks("a", 4), OBJ) if r is not None]
    assert l1.abort(reservations[:3]) == 3
    assert l1.abort(reservations[:3]) == 0  # already gone: ignored
    assert l1.usage().staged_objects == 1
    with pytest.raises(ReservationExpired):
        l1.commit(reservations[:1])
    l1.commit(reservations[3:])
    assert l1.contains([reservations[3].key]) == [True]
    check_l1(l1)


def test_bad_sizes_and_counts_are_rejected() -> None:
    l1 = make_l1()
    with pytest.raises(ValueError):
        l1.reserve([key("a")], 0)
    with pytest.raises(ValueError):
        l1.lock_for_read([key("a")], readers=0)
    with pytest.raises(ValueError):
        l1.unlock([key("a")], readers=0)
    with pytest.raises(ValueError):
        l1.commit([], temporary=True)


# -- memory pressure ----------------------------------------------------------------


def test_batch_is_all_or_nothing_under_pressure() -> None:
    l1 = make_l1(policy=NeverEvictDouble())
    store(l1, chunks("a", 10))
    before = l1.usage()
    with pytest.raises(L1FullError) as raised:
        l1.reserve(chunks("b", 7), OBJ)  # 6 fit, 7 do not
    assert raised.value.requested_bytes == 7 * OBJ
    assert raised.value.free_bytes == 6 * OBJ
    assert l1.usage() == before
    assert l1.reserve(chunks("b", 6), OBJ)[5] is not None
    check_l1(l1)


def test_object_larger_than_the_tier_is_refused() -> None:
    l1 = make_l1()
    with pytest.raises(L1FullError, match="whole L1"):
        l1.reserve([key("big")], 2 * MIB)


def test_lazy_limit_grows_before_anything_is_evicted() -> None:
    policy = FifoPolicyDouble()
    l1 = make_l1(init=4 * OBJ, policy=policy)
    assert l1.usage().limit_bytes == 4 * OBJ
    store(l1, chunks("a", 4))
    store(l1, chunks("b", 3))
    usage = l1.usage()
    assert usage.limit_bytes == 7 * OBJ and usage.resident_objects == 7
    assert policy.removed == []
    store(l1, chunks("c", 9))
    assert l1.usage().limit_bytes == MIB and policy.removed == []
    store(l1, chunks("d", 1))  # now full: the oldest goes
    assert policy.removed == [[key("a0")]]
    check_l1(l1)


def test_eviction_keeps_locked_objects_and_follows_lru_prefix_order() -> None:
    l1 = make_l1(policy=lru())
    a, b, c, d = chunks("a", 4), chunks("b", 4), chunks("c", 4), chunks("d", 4)
    for request in (a, b, c, d):
        store(l1, request)
    assert l1.usage().used_bytes == l1.capacity_bytes
    assert l1.lock_for_read(a[:2]) == [True, True]  # a lookup holds a's prefix
    # LRU order now: a3 a2 | b3 b2 b1 b0 | c3.. | d3.. | a1 a0 (locked), later chunks first.
    store(l1, chunks("e", 3))
    assert l1.contains(a) == [True, True, False, False]
    assert l1.contains(b) == [True, True, True, False]
    store(l1, chunks("f", 4))
    assert l1.contains(b) == [False] * 4
    assert l1.contains(c) == [True, True, True, False]
    # 12 more: 14 unlocked objects, 12 go in LRU order; the locked prefix survives.
    store(l1, chunks("g", 12))
    assert l1.contains(a) == [True, True, False, False]
    assert l1.contains(c + chunks("d", 4) + chunks("e", 3)) == [False] * 11
    assert l1.contains(chunks("f", 4)) == [True, True, False, False]
    assert l1.usage().used_bytes <= l1.capacity_bytes
    check_l1(l1)


def test_nothing_is_evicted_when_eviction_cannot_make_room() -> None:
    policy = FifoPolicyDouble()
    l1 = make_l1(policy=policy)
    locked, loose = chunks("l", 10), chunks("u", 6)
    store(l1, locked)
    store(l1, loose)
    l1.lock_for_read(locked)
    with pytest.raises(L1FullError):
        l1.reserve(chunks("n", 7), OBJ)
    assert l1.contains(loose) == [True] * 6  # not destroyed for nothing
    assert policy.removed == []
    l1.reserve(chunks("n", 6), OBJ)
    assert l1.contains(loose) == [False] * 6
    check_l1(l1)


def test_full_error_when_everything_is_locked_or_staged() -> None:
    l1 = make_l1()
    store(l1, chunks("a", 8))
    l1.lock_for_read(chunks("a", 8))
    l1.reserve(chunks("s", 8), OBJ)
    with pytest.raises(L1FullError):
        l1.reserve([key("x")], 1)
    assert l1.usage().resident_objects == 8 and l1.usage().staged_objects == 8


def test_noop_policy_never_evicts() -> None:
    noop = PluginRegistry(strict=True).build(
        PluginKind.EVICTION_POLICY, "noop", EvictionSettings(0.8, 0.2, MIB)
    )
    l1 = make_l1(policy=noop)
    store(l1, chunks("a", 16))
    with pytest.raises(L1FullError):
        l1.reserve([key("b")], OBJ)
    assert l1.maybe_evict() == 0
    assert l1.usage().resident_objects == 16


def test_eviction_copes_with_fragmentation() -> None:
    policy = FifoPolicyDouble()
    l1 = make_l1(policy=policy)
    small = chunks("s", 16)
    store(l1, small)
    l1.lock_for_read(small[1::2])  # every other object locked: no two free neighbours
    with pytest.raises(L1FullError):
        l1.reserve([key("big")], 2 * OBJ)
    assert l1.contains(small[0::2]) == [True] * 8
    l1.unlock([small[1]])
    (reservation,) = l1.reserve([key("big")], 2 * OBJ)
    assert reservation is not None
    assert l1.contains(small[:2]) == [False, False]
    check_l1(l1)


def test_maybe_evict_frees_ratio_of_capacity_above_watermark() -> None:
    l1 = make_l1(policy=lru(), watermark=0.5, ratio=0.25)
    store(l1, chunks("a", 8))
    assert l1.maybe_evict() == 0  # exactly at the watermark: not above
    store(l1, chunks("b", 4))
    l1.lock_for_read([key("a7")])
    freed = l1.maybe_evict()
    assert freed == 4 * OBJ  # 0.25 MiB
    assert l1.contains(chunks("a", 8)) == [True] * 3 + [False] * 4 + [True]
    assert l1.usage().used_bytes == 8 * OBJ
    check_l1(l1)


# -- read locks ------------------------------------------------------------------------


def test_read_lock_expires_after_its_ttl() -> None:
    clock = FakeClock()
    l1 = make_l1(clock=clock, read_ttl=300)
    a = chunks("a", 2)
    store(l1, a)
    assert l1.lock_for_read([*a, key("missing")], readers=2) == [True, True, False]
    assert l1.usage().locked_objects == 2
    assert l1.delete(a) == 0
    clock.advance(299)
    assert l1.expire() == 0
    assert l1.delete(a) == 0
    clock.advance(2)
    assert l1.expire() == 4  # two keys, two readers each
    assert l1.usage().locked_objects == 0
    assert l1.delete(a) == 2


def test_each_grant_has_its_own_deadline() -> None:
    clock = FakeClock()
    l1 = make_l1(clock=clock, read_ttl=300)
    a = key("a")
    store(l1, [a])
    l1.lock_for_read([a])
    clock.advance(200)
    l1.lock_for_read([a])  # does not extend the first reader's lock
    clock.advance(101)
    assert l1.expire() == 1
    assert l1.delete([a]) == 0  # the second grant still holds
    clock.advance(200)
    assert l1.expire() == 1
    assert l1.delete([a]) == 1


def test_late_unlock_of_an_expired_reader_does_not_eat_a_new_lock() -> None:
    clock = FakeClock()
    l1 = make_l1(clock=clock, read_ttl=300)
    a = key("a")
    store(l1, [a])
    l1.lock_for_read([a])  # reader 1, then silent past its TTL
    clock.advance(310)
    l1.expire()
    l1.lock_for_read([a])  # reader 2
    clock.advance(10)
    l1.unlock([a])  # reader 1's late unlock
    assert l1.usage().locked_objects == 1
    assert l1.delete([a]) == 0  # reader 2 is still protected
    l1.unlock([a])  # reader 2
    assert l1.delete([a]) == 1


def test_unlock_never_goes_below_zero() -> None:
    l1 = make_l1()
    a = key("a")
    store(l1, [a])
    l1.unlock([a, key("missing")], readers=5)
    l1.lock_for_read([a], readers=3)
    l1.unlock([a], readers=10)
    assert l1.usage().locked_objects == 0
    l1.lock_for_read([a])
    assert l1.usage().locked_objects == 1
    check_l1(l1)


def test_lock_and_touch_tell_the_policy_about_hits_only() -> None:
    policy = FifoPolicyDouble()
    l1 = make_l1(policy=policy)
    a = chunks("a", 3)
    store(l1, a)
    l1.lock_for_read([a[0], key("x"), a[1]])
    l1.touch([key("y"), a[2]])
    l1.touch([key("z")])
    assert policy.accessed == [[a[0], a[1]], [a[2]]]


# -- write reservations -------------------------------------------------------------


def test_expired_reservation_is_freed_and_cannot_commit() -> None:
    clock = FakeClock()
    l1 = make_l1(clock=clock, write_ttl=600)
    reservations = [r for r in l1.reserve(chunks("a", 2), OBJ) if r is not None]
    clock.advance(601)
    assert l1.expire() == 2
    assert l1.usage().staged_objects == 0 and l1.usage().used_bytes == 0
    with pytest.raises(ReservationExpired) as raised:
        l1.commit(reservations)
    assert raised.value.keys == [r.key for r in reservations]
    assert l1.contains(chunks("a", 2)) == [False, False]


def test_commit_after_the_deadline_fails_even_before_expire_runs() -> None:
    clock = FakeClock()
    l1 = make_l1(clock=clock, write_ttl=10)
    live = l1.reserve([key("live")], OBJ)[0]
    clock.advance(5)
    late = l1.reserve([key("late")], OBJ)[0]
    clock.advance(6)
    assert live is not None and late is not None
    with pytest.raises(ReservationExpired) as raised:
        l1.commit([live, late])
    assert raised.value.keys == [key("live")]
    # Nothing was committed; the expired one was freed, the live one is still staged.
    assert l1.contains([key("late")]) == [False]
    assert l1.usage().staged_objects == 1
    l1.commit([late])
    assert l1.contains([key("late")]) == [True]
    check_l1(l1)


def test_an_expired_reservation_can_be_taken_over_and_the_old_writer_is_refused() -> None:
    clock = FakeClock()
    l1 = make_l1(clock=clock, write_ttl=10)
    old = l1.reserve([key("a")], OBJ)[0]
    assert l1.reserve([key("a")], OBJ) == [None]  # live: dedupe
    clock.advance(11)
    new = l1.reserve([key("a")], OBJ)[0]
    assert old is not None and new is not None
    assert new.offset == old.offset  # the same extent, reused
    with pytest.raises(ReservationExpired):
        l1.commit([old])
    l1.commit([new])
    assert l1.contains([key("a")]) == [True]
    check_l1(l1)


# -- temporary objects ------------------------------------------------------------------


def test_temporary_commit_is_freed_after_its_last_reader() -> None:
    policy = FifoPolicyDouble()
    l1 = make_l1(policy=policy)
    reservations = [r for r in l1.reserve(chunks("p", 2), OBJ) if r is not None]
    l1.commit(reservations, readers=2, temporary=True)
    assert l1.usage().temporary_objects == 2
    assert l1.usage().locked_objects == 2
    l1.unlock(chunks("p", 2))
    assert l1.contains(chunks("p", 2)) == [True, True]
    l1.unlock(chunks("p", 2))
    assert l1.contains(chunks("p", 2)) == [False, False]
    assert policy.removed == [chunks("p", 2)]
    assert l1.usage().used_bytes == 0


def test_mark_temporary_frees_unread_objects_now_and_read_ones_later() -> None:
    l1 = make_l1()
    a, b = key("a"), key("b")
    store(l1, [a, b])
    l1.lock_for_read([b])
    assert l1.mark_temporary([a, b, key("missing")]) == 2
    assert l1.contains([a, b]) == [False, True]
    l1.unlock([b])
    assert l1.contains([b]) == [False]
    check_l1(l1)


def test_temporary_object_is_freed_when_its_readers_expire() -> None:
    clock = FakeClock()
    l1 = make_l1(clock=clock, read_ttl=30)
    (reservation,) = l1.reserve([key("t")], OBJ)
    assert reservation is not None
    l1.commit([reservation], readers=1, temporary=True)
    clock.advance(31)
    assert l1.expire() == 1
    assert l1.contains([key("t")]) == [False]
    check_l1(l1)


# -- delete, clear, close -------------------------------------------------------------------


def test_delete_spares_locked_objects_unless_forced() -> None:
    policy = FifoPolicyDouble()
    l1 = make_l1(policy=policy)
    a = chunks("a", 3)
    store(l1, a)
    l1.lock_for_read([a[1]])
    staged = l1.reserve([key("s")], OBJ)
    assert l1.delete([*a, key("s"), key("missing")]) == 2
    assert l1.contains(a) == [False, True, False]
    assert l1.delete([a[1]], force=True) == 1
    assert policy.removed == [[a[0], a[2]], [a[1]]]
    assert l1.usage().staged_objects == 1 and staged[0] is not None
    check_l1(l1)


def test_clear_and_clear_force() -> None:
    clock = FakeClock()
    l1 = make_l1(clock=clock, write_ttl=100)
    store(l1, chunks("a", 4))
    l1.lock_for_read(chunks("a", 2))
    l1.reserve([key("expiring")], OBJ)
    clock.advance(50)
    live = l1.reserve([key("live")], OBJ)[0]
    clock.advance(51)
    assert l1.clear() == 3  # two unlocked objects and the expired stage
    assert l1.contains(chunks("a", 4)) == [True, True, False, False]
    assert l1.clear(force=True) == 2
    assert l1.usage().resident_objects == 0
    assert l1.usage().staged_objects == 1  # a live writer's extent is never freed
    assert live is not None
    l1.commit([live])
    check_l1(l1)


def test_close_is_idempotent_and_refuses_writes() -> None:
    l1 = make_l1()
    store(l1, chunks("a", 2))
    view = l1.read_view(key("a0"))
    l1.close()
    l1.close()
    assert l1.closed and l1.arena.closed
    assert view.tolist()[:3] == [1, 1, 1]  # views handed out stay valid
    with pytest.raises(L1ClosedError):
        l1.reserve([key("b")], OBJ)
    assert l1.contains([key("a0")]) == [False]
    assert l1.usage().used_bytes == 0
    assert l1.maybe_evict() == 0 and l1.expire() == 0


def test_large_alignment_aligns_addresses() -> None:
    align = 2 * MIB
    l1 = make_l1(capacity=8 * MIB, align=align, arena_size=10 * MIB)
    reservations = l1.reserve(chunks("a", 3), 100)
    for reservation in reservations:
        assert reservation is not None
        assert (l1.arena.data_ptr() + reservation.offset) % align == 0
    assert l1.usage().used_bytes == 3 * align
    with pytest.raises(L1FullError):
        l1.reserve(chunks("b", 2), 1)


def test_capacity_must_fit_the_arena() -> None:
    arena = Arena(MIB, kind="anonymous")
    with pytest.raises(ValueError, match="capacity_bytes"):
        L1Manager(
            arena=arena,
            capacity_bytes=2 * MIB,
            init_bytes=MIB,
            align_bytes=4096,
            write_ttl_s=1,
            read_ttl_s=1,
            policy=FifoPolicyDouble(),
            trigger_watermark=0.8,
            eviction_ratio=0.2,
        )
    arena.close()


def test_shared_memory_objects_are_readable_at_their_offset() -> None:
    arena = Arena(2 * MIB, kind="shm")
    l1 = L1Manager(
        arena=arena,
        capacity_bytes=MIB,
        init_bytes=MIB,
        align_bytes=4096,
        write_ttl_s=60,
        read_ttl_s=60,
        policy=FifoPolicyDouble(),
        trigger_watermark=0.8,
        eviction_ratio=0.2,
    )
    path = arena.path
    assert path is not None
    try:
        (reservation,) = l1.reserve([key("x")], 3)
        assert reservation is not None
        l1.buffer(reservation).copy_(torch.tensor([1, 2, 3], dtype=torch.uint8))
        l1.commit([reservation])
        with path.open("rb") as segment:  # what another process sees
            segment.seek(reservation.offset)
            assert segment.read(3) == b"\x01\x02\x03"
    finally:
        l1.close()
    assert not path.exists()


# -- engine-facing calls: lock_prefix, pin, wait_resident, shared_segment ----------


def ranked(request: str, n: int, width: int) -> list[ObjectKey]:
    """Chunk-major keys of ``n`` chunks over ``width`` ranks (what a lookup builds)."""
    return [key(f"{request}{i}", rank) for i in range(n) for rank in range(width)]


def test_prefix_chunks_counts_whole_leading_chunks() -> None:
    assert prefix_chunks([], 2) == 0
    assert prefix_chunks([True] * 6, 2) == 3
    assert prefix_chunks([True, True, True, False, True, True], 2) == 1  # chunk 1 lacks a rank
    assert prefix_chunks([False, True], 1) == 0
    with pytest.raises(ValueError):
        prefix_chunks([True], 0)


def test_lock_prefix_locks_exactly_the_prefix_present_for_every_rank() -> None:
    clock = FakeClock()
    policy = FifoPolicyDouble()
    l1 = make_l1(policy=policy, clock=clock, read_ttl=10)
    flat = ranked("a", 4, 2)
    missing = flat[3]  # rank 1 of chunk 1: the gap
    store(l1, [k for k in flat if k != missing])
    assert l1.lock_prefix(flat, 2, readers=2) == 1
    # Only chunk 0's keys were locked and reported as accessed: nothing past the gap.
    assert policy.accessed == [flat[:2]]
    assert l1.usage().locked_objects == 2
    assert l1.delete(flat[2:]) == 5  # unlocked: free to go
    assert l1.delete(flat[:2]) == 0  # locked
    l1.unlock(flat[:2], 2)
    assert l1.usage().locked_objects == 0
    check_l1(l1)


def test_try_lock_prefix_locks_the_prefix_reports_the_rest_and_never_waits() -> None:
    policy = FifoPolicyDouble()
    l1 = make_l1(policy=policy)
    flat = ranked("a", 4, 2)
    missing = flat[3]  # rank 1 of chunk 1: the gap
    store(l1, [k for k in flat if k != missing])
    assert l1.try_lock_prefix(flat, 2, readers=2) == (1, [1, 0, 1, 1, 1, 1])
    assert policy.accessed == [flat[:2]]  # what lock_prefix would lock and report
    assert l1.usage().locked_objects == 2
    l1.unlock(flat[:2], 2)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with l1._lock:  # another thread inside the manager right now
            held.set()
            release.wait(5.0)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(5.0)
        assert l1.try_lock_prefix(flat, 2) is None  # answered at once, nothing locked
    finally:
        release.set()
        thread.join()
    assert l1.usage().locked_objects == 0
    with pytest.raises(ValueError):
        l1.try_lock_prefix(flat, 1, readers=0)
    check_l1(l1)


def test_lock_prefix_grants_expire_like_read_locks() -> None:
    clock = FakeClock()
    l1 = make_l1(clock=clock, read_ttl=10)
    flat = ranked("a", 2, 1)
    store(l1, flat)
    assert l1.lock_prefix(flat, 1) == 2
    clock.advance(11)
    l1.expire()
    assert l1.usage().locked_objects == 0
    assert l1.lock_prefix([key("none")], 1) == 0
    assert l1.lock_prefix([], 1) == 0
    with pytest.raises(ValueError):
        l1.lock_prefix(flat, 1, readers=0)
    with pytest.raises(ValueError):
        l1.lock_prefix(flat, 0)


def test_a_lookup_with_a_gap_does_not_refresh_chunks_past_the_gap_in_the_lru() -> None:
    """Fails with the old lookup (lock every present chunk, then unlock past the gap)."""
    policy = lru()
    l1 = make_l1(policy=policy)
    a = chunks("a", 4)
    store(l1, [a[0], a[2], a[3]])  # a1 was evicted: a gap
    b = chunks("b", 2)
    store(l1, b)  # more recent than all of a
    assert l1.lock_prefix(a, 1) == 1
    l1.unlock([a[0]])
    # a2 and a3 are useless to the request: they stay the oldest, a0 is the newest.
    assert list(policy.candidates()) == [a[3], a[2], b[1], b[0], a[0]]


def test_pin_locks_without_counting_an_access() -> None:
    clock = FakeClock()
    policy = FifoPolicyDouble()
    l1 = make_l1(policy=policy, clock=clock, read_ttl=10)
    a = chunks("a", 2)
    store(l1, a)
    assert l1.pin([a[0], key("x"), a[1]]) == [True, False, True]
    assert policy.accessed == []
    assert l1.delete(a) == 0  # pinned objects are not freed
    l1.unlock(a)
    assert l1.usage().locked_objects == 0
    l1.pin(a)
    clock.advance(11)
    l1.expire()
    assert l1.delete(a) == 2  # pins expire like read locks
    with pytest.raises(ValueError):
        l1.pin(a, readers=0)


class DictAdapter(L2AdapterV1):
    """The smallest L2 adapter: objects in a dict."""

    def __init__(self) -> None:
        super().__init__("dict", num_workers=1)
        self.objects: dict[ObjectKey, bytes] = {}

    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        self.objects[key] = b"".join(parts)

    def _exists(self, key: ObjectKey) -> bool:
        return key in self.objects

    def _get(self, key: ObjectKey, size: int) -> bytes | None:
        return self.objects.get(key)

    def _remove(self, key: ObjectKey) -> bool:
        return self.objects.pop(key, None) is not None


class EverywhereKept:
    keep_in_l1 = True

    def targets(self, count: int) -> range:
        return range(count)


class FirstHolder:
    temporary = False

    def choose(self, holders: Sequence[int]) -> int:
        return holders[0]


def test_the_l2_store_thread_does_not_reorder_the_l1_lru() -> None:
    """Fails when the L2 store pins through ``lock_for_read`` (an access per key)."""
    policy = lru()
    l1 = make_l1(policy=policy)
    adapter = DictAdapter()
    adapter.start()
    tier = L2Tier([adapter], l1, EverywhereKept(), FirstHolder(), max_in_flight=1, timeout_s=5)
    try:
        a, b = chunks("a", 2), chunks("b", 2)
        store(l1, a, nbytes=OBJ)
        store(l1, b, nbytes=OBJ)  # b is more recent than a
        assert tier.store_now(a, OBJ) == [True, True]
        assert set(adapter.objects) == set(a)
        assert list(policy.candidates()) == [a[1], a[0], b[1], b[0]]  # a is still the oldest
        assert l1.usage().locked_objects == 0  # the pins were released
    finally:
        adapter.close()


class EveryOther(EverywhereKept):
    """An admitting store policy (a stand-in for ``frequency``): admits every other key."""

    def __init__(self) -> None:
        self.asked: list[list[ObjectKey]] = []

    def admit(self, keys: Sequence[ObjectKey]) -> list[bool]:
        self.asked.append(list(keys))
        return [index % 2 == 0 for index in range(len(keys))]


def test_an_admitting_store_policy_decides_which_keys_reach_l2() -> None:
    l1 = make_l1(policy=lru())
    adapter = DictAdapter()
    adapter.start()
    policy = EveryOther()
    tier = L2Tier([adapter], l1, policy, FirstHolder(), max_in_flight=1, timeout_s=5)
    try:
        a = chunks("a", 4)
        store(l1, a, nbytes=OBJ)
        assert tier.store_now(a, OBJ) == [True, False, True, False]
        assert policy.asked == [a]
        assert set(adapter.objects) == {a[0], a[2]}
        assert tier.stats.not_admitted == 2
        assert tier.stats.stored_keys == 2 and tier.stats.store_failures == 0
        assert l1.contains(a) == [True] * 4  # L1 keeps every key
        assert l1.usage().locked_objects == 0
    finally:
        adapter.close()


def test_wait_resident_answers_at_once_for_resident_or_unwritten_keys() -> None:
    l1 = make_l1()
    a = chunks("a", 2)
    store(l1, a)
    assert l1.wait_resident([], 5.0)
    assert l1.wait_resident(a, 5.0)
    started = time.monotonic()
    assert not l1.wait_resident([a[0], key("nobody writes this")], 5.0)
    assert time.monotonic() - started < 1.0


def waiting(
    l1: L1Manager, keys: list[ObjectKey], timeout: float
) -> tuple[threading.Thread, list[bool]]:
    """A thread blocked in ``wait_resident``; its answer lands in the returned list."""
    answer: list[bool] = []
    thread = threading.Thread(target=lambda: answer.append(l1.wait_resident(keys, timeout)))
    thread.start()
    deadline = time.monotonic() + 5.0
    while not l1._waiters and time.monotonic() < deadline:  # until it sleeps on the condition
        time.sleep(0.001)
    assert l1._waiters == 1
    return thread, answer


def test_wait_resident_wakes_on_the_other_writers_commit() -> None:
    l1 = make_l1()
    a = chunks("a", 2)
    reservations = [r for r in l1.reserve(a, OBJ) if r is not None]
    thread, answer = waiting(l1, a, 30.0)
    l1.commit(reservations[:1])
    time.sleep(0.05)
    assert thread.is_alive()  # a1 is still staged
    started = time.monotonic()
    l1.commit(reservations[1:])
    thread.join(5.0)
    assert answer == [True] and time.monotonic() - started < 1.0


def test_a_key_seen_resident_counts_even_if_it_goes_again() -> None:
    l1 = make_l1()
    a = chunks("a", 2)
    first, second = (r for r in l1.reserve(a, OBJ) if r is not None)
    thread, answer = waiting(l1, a, 30.0)
    l1.commit([first])
    deadline = time.monotonic() + 5.0
    while l1._waiters == 0 and time.monotonic() < deadline:  # it re-checked and sleeps again
        time.sleep(0.001)
    time.sleep(0.05)
    assert l1.delete([a[0]]) == 1  # a0 seen, then gone (skip_l1, eviction...)
    l1.commit([second])
    thread.join(5.0)
    assert answer == [True]


def test_wait_resident_gives_up_when_the_writer_aborts_or_expires() -> None:
    clock = FakeClock()
    l1 = make_l1(clock=clock, write_ttl=10)
    a = chunks("a", 2)
    reservations = [r for r in l1.reserve(a, OBJ) if r is not None]
    thread, answer = waiting(l1, a[:1], 30.0)
    l1.abort(reservations[:1])
    thread.join(5.0)
    assert answer == [False]
    thread, answer = waiting(l1, a[1:], 30.0)
    clock.advance(11)
    l1.expire()
    thread.join(5.0)
    assert answer == [False]


def test_wait_resident_times_out_and_ends_on_close() -> None:
    l1 = make_l1()
    (reservation,) = l1.reserve([key("slow")], OBJ)
    started = time.monotonic()
    assert not l1.wait_resident([key("slow")], 0.05)
    assert 0.05 <= time.monotonic() - started < 1.0
    thread, answer = waiting(l1, [key("slow")], 30.0)
    l1.close()
    thread.join(5.0)
    assert answer == [False]
    assert reservation is not None


def test_shared_segment_and_offsets() -> None:
    private = make_l1()
    assert private.shared_segment() is None
    arena = Arena(2 * MIB, kind="shm")
    l1 = L1Manager(
        arena=arena,
        capacity_bytes=MIB,
        init_bytes=MIB,
        align_bytes=4096,
        write_ttl_s=60,
        read_ttl_s=60,
        policy=FifoPolicyDouble(),
        trigger_watermark=0.8,
        eviction_ratio=0.2,
    )
    try:
        segment = l1.shared_segment()
        assert segment is not None and segment.size_bytes == 2 * MIB
        assert arena.path is not None and arena.path.name == segment.name
        a = chunks("a", 2)
        reservations = [r for r in l1.reserve(a, 3) if r is not None]
        for value, reservation in enumerate(reservations, 1):
            l1.buffer(reservation).fill_(value)
        l1.commit(reservations)
        assert l1.offsets(a) == [r.offset for r in reservations]
        with arena.path.open("rb") as mapped:  # what the worker sees at those offsets
            for value, offset in enumerate(l1.offsets(a), 1):
                mapped.seek(offset)
                assert mapped.read(3) == bytes([value]) * 3
        with pytest.raises(KeyError):
            l1.offsets([key("missing")])
    finally:
        l1.close()
