"""The one table of prepared engine_driven transfers."""

from __future__ import annotations

from default_engine_rig import wire_key
from lmcache_engine_default.pending import Direction, Pending, PendingKey, PendingTransfers

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l1 import Reservation


def obj(name: str) -> ObjectKey:
    return ObjectKey(name.encode(), "model", 0)


def test_the_key_names_worker_request_window_and_direction() -> None:
    key = wire_key([1] * 32, 16, 32, "r1")
    store = PendingKey.of(7, key, Direction.STORE)
    assert store == (7, "r1", 16, 32, Direction.STORE)
    assert store.instance_id == 7 and store.request_id == "r1"
    assert store != PendingKey.of(7, key, Direction.RETRIEVE)  # both may be pending at once
    assert store != PendingKey.of(8, key, Direction.STORE)


def test_put_replaces_and_hands_back_the_previous_transfer() -> None:
    table = PendingTransfers()
    key = PendingKey(1, "r", 0, 16, Direction.RETRIEVE)
    assert table.put(key, Pending(locked=[obj("a")])) is None
    previous = table.put(key, Pending(locked=[obj("b")]))
    assert previous is not None and previous.locked == [obj("a")]
    assert len(table) == 1
    taken = table.take(key)
    assert taken is not None and taken.locked == [obj("b")]
    assert table.take(key) is None  # taken once
    assert len(table) == 0


def test_take_instance_collects_one_workers_holdings_only() -> None:
    table = PendingTransfers()
    staged = Reservation(obj("s"), 0, 10, 1)
    table.put(PendingKey(1, "r", 0, 16, Direction.STORE), Pending([staged], [obj("o")]))
    table.put(PendingKey(1, "q", 0, 16, Direction.RETRIEVE), Pending(locked=[obj("l")]))
    table.put(PendingKey(2, "r", 0, 16, Direction.RETRIEVE), Pending(locked=[obj("x")]))
    held = table.take_instance(1)
    assert (held.staged, held.others, held.locked) == ([staged], [obj("o")], [obj("l")])
    assert len(table) == 1
    assert table.take_instance(1) == Pending()
    rest = table.take_all()
    assert rest.locked == [obj("x")] and len(table) == 0
