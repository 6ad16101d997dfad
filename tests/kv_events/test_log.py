"""The replay log: sequence, cursors, loss, model filter, token bindings, bounds."""

from __future__ import annotations

import msgspec
import pytest

from lmcache_core.kv_events.log import KVEventLog
from lmcache_core.protocol.kv_event_records import MEDIUM_L1, KVEventBatch, l2_medium
from lmcache_core.protocol.types import pack_token_blob

H = [bytes([i]) * 8 for i in range(10)]


def raw(tokens: list[int]) -> bytes:
    """Tokens as a request carries them (a msgpack array)."""
    return msgspec.msgpack.encode(tokens)


def seqs(batch: KVEventBatch) -> list[int]:
    return [record.seq for record in batch.events]


def test_records_in_order_with_tokens_and_parents() -> None:
    log = KVEventLog(100)
    log.bind_raw(H[:3], raw([70000 + t for t in range(12)]), 4)
    log.stored(MEDIUM_L1, "m", H[:3])
    log.removed(l2_medium(0, "fs"), "m", H[:2])
    batch = log.read("m", 0, 10)
    assert batch.enabled and not batch.lost and batch.next_cursor == 4
    assert seqs(batch) == [1, 2, 3, 4]
    first, second, third, removed = batch.events
    assert (first.kind, first.medium, first.block_hashes) == ("stored", "CPU", [H[0]])
    assert first.parent_block_hash is None and first.token_ids == [70000, 70001, 70002, 70003]
    assert second.parent_block_hash == H[0] and second.token_ids == [70004, 70005, 70006, 70007]
    assert third.parent_block_hash == H[1] and third.token_ids == [70008, 70009, 70010, 70011]
    assert (removed.kind, removed.medium) == ("removed", "L2:1:fs")
    assert removed.block_hashes == H[:2] and removed.token_ids == []
    assert removed.parent_block_hash is None


def test_an_unbound_store_has_no_tokens_and_is_counted() -> None:
    log = KVEventLog(10)
    log.stored(MEDIUM_L1, "m", [H[5]])
    (record,) = log.read("m", 0, 10).events
    assert record.token_ids == [] and record.parent_block_hash is None
    assert log.status()["unbound_stores"] == 1


def test_cursor_paging_and_model_filter() -> None:
    log = KVEventLog(100)
    for index in range(6):
        log.stored(MEDIUM_L1, "a" if index % 2 == 0 else "b", [H[index]])
    page = log.read("a", 0, 2)
    assert seqs(page) == [1, 3] and page.next_cursor == 3
    page = log.read("a", page.next_cursor, 2)
    assert seqs(page) == [5] and page.next_cursor == 6
    assert seqs(log.read("a", 6, 2)) == [] and log.read("a", 6, 2).next_cursor == 6
    assert seqs(log.read("other", 0, 10)) == [] and log.read("other", 0, 10).next_cursor == 6


def test_a_wrapped_log_reports_loss() -> None:
    log = KVEventLog(3)
    for index in range(5):
        log.stored(MEDIUM_L1, "m", [H[index]])
    behind = log.read("m", 0, 10)
    assert behind.lost and seqs(behind) == [3, 4, 5]
    assert not log.read("m", 2, 10).lost  # seq 3 is the next one, and it is kept


def test_a_cursor_beyond_the_log_is_another_incarnation() -> None:
    log = KVEventLog(10)
    log.stored(MEDIUM_L1, "m", [H[0]])
    batch = log.read("m", 99, 10)
    assert batch.lost and batch.next_cursor == 1 and batch.events == []


def test_a_lost_marker_withdraws_what_came_before() -> None:
    log = KVEventLog(10)
    log.stored(MEDIUM_L1, "m", [H[0]])
    log.lost()
    log.stored(MEDIUM_L1, "m", [H[1]])
    batch = log.read("m", 0, 10)
    assert batch.lost and [r.block_hashes for r in batch.events] == [[H[1]]]
    assert not log.read("m", 2, 10).lost  # a reader past the marker lost nothing
    assert log.status()["lost_markers"] == 1


def test_disabled_and_closed_logs() -> None:
    off = KVEventLog(0)
    off.stored(MEDIUM_L1, "m", [H[0]])
    assert off.read("m", 0, 1) == KVEventBatch(False, off.incarnation, 0, False, [])
    log = KVEventLog(4)
    log.close()
    assert not log.read("m", 0, 1).enabled


def test_bounds() -> None:
    with pytest.raises(ValueError, match="capacity"):
        KVEventLog(-1)
    log = KVEventLog(4, max_bindings=2)
    for bad in ((-1, 1), (0, 0), (0, 1025)):
        with pytest.raises(ValueError, match="max_events"):
            log.read("m", *bad)
    log.bind_raw(H[:3], raw(list(range(3))), 1)
    assert log.status()["bound_chunks"] == 2 and not log.is_bound(H[0]) and log.is_bound(H[2])
    for index in range(10):
        log.stored(MEDIUM_L1, "m", [H[index]])
    assert log.status()["log_depth"] == 4


def test_bindings_of_two_requests_decode_each_once() -> None:
    log = KVEventLog(10)
    first, second = raw([1, 2, 3, 4]), raw([1, 2, 9, 9])
    log.bind_raw(H[:2], first, 2)
    log.bind_raw([H[0], H[5]], second, 2)  # the shared first chunk keeps its binding
    log.stored(MEDIUM_L1, "m", [H[0], H[1], H[5]])
    records = log.read("m", 0, 10).events
    assert [r.token_ids for r in records] == [[1, 2], [3, 4], [9, 9]]
    assert [r.parent_block_hash for r in records] == [None, H[0], H[0]]


def test_a_chunk_bound_to_a_uint32_blob_reports_its_tokens() -> None:
    """Our client's blob token form (``pack_token_blob``) binds like the list form."""
    log = KVEventLog(10)
    log.bind_raw(H[:2], bytes(pack_token_blob([70000, 2, 3, 4])), 2)
    log.stored(MEDIUM_L1, "m", H[:2])
    records = log.read("m", 0, 10).events
    assert [r.token_ids for r in records] == [[70000, 2], [3, 4]]
