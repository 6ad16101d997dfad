"""The transport strategies: the shared L1 pool, or inline bytes."""

from __future__ import annotations

from default_engine_rig import Rig
from lmcache_engine_default.transport import InlineTransport, SharedPoolTransport, transport_for

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.transfer.layout import layout_from_engine_driven

LAYOUT = layout_from_engine_driven(4, 2, 32, "float16", False, 16)
NBYTES = LAYOUT.object_nbytes(16)


def objects(rig: Rig, count: int) -> list[ObjectKey]:
    keys = [ObjectKey(f"k{i}".encode(), "model", 0) for i in range(count)]
    reservations = [r for r in rig.l1.reserve(keys, NBYTES) if r is not None]
    for value, reservation in enumerate(reservations, 1):
        rig.l1.buffer(reservation).fill_(value)
    rig.l1.commit(reservations)
    return keys


def test_a_shared_l1_gets_the_pool_transport(rig: Rig) -> None:
    transport = transport_for(rig.l1, 16)
    assert isinstance(transport, SharedPoolTransport)
    segment = rig.l1.shared_segment()
    assert segment is not None
    reply = transport.registration_reply()
    assert (reply.shm_name, reply.pool_size) == (segment.name, segment.size_bytes)
    assert transport.holds_read_locks
    assert transport.missing_data_error() is None


def test_pool_slots_point_at_the_objects(rig: Rig) -> None:
    transport = transport_for(rig.l1, 16)
    keys = objects(rig, 2)
    reply = transport.retrieve_reply(keys, LAYOUT)
    assert reply.success and reply.data == b""
    slots = reply.context["slots"]
    assert [s["offset"] for s in slots] == rig.l1.offsets(keys)
    assert {s["length"] for s in slots} == {NBYTES}
    assert slots[0]["shape"] == list(LAYOUT.object_shape(16)) and slots[0]["dtype"] == "float16"
    reservations = [r for r in rig.l1.reserve([ObjectKey(b"new", "model", 0)], NBYTES) if r]
    context = transport.store_context(LAYOUT, reservations, NBYTES)
    assert [s["offset"] for s in context["slots"]] == [reservations[0].offset]
    rig.l1.abort(reservations)


def test_a_private_l1_gets_inline_bytes(inline_rig: Rig) -> None:
    transport = transport_for(inline_rig.l1, 16)
    assert isinstance(transport, InlineTransport)
    assert not transport.holds_read_locks
    reply = transport.registration_reply()
    assert (reply.shm_name, reply.pool_size) == ("", 0)
    assert transport.missing_data_error() is not None
    assert transport.store_context(LAYOUT, [], NBYTES) == {"object_nbytes": NBYTES}
    keys = objects(inline_rig, 2)
    retrieved = transport.retrieve_reply(keys, LAYOUT)
    assert retrieved.success and retrieved.context == {"object_nbytes": NBYTES}
    assert retrieved.data == bytes([1]) * NBYTES + bytes([2]) * NBYTES
