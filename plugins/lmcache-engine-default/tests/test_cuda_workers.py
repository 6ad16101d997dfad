"""The engine's CUDA lmcache_driven path on the CPU, with FAKES for the device.

No GPU here: the "device memory" is CPU tensors handed out by a FAKE importer, and the
stream is a FAKE (a real thread, :class:`~lmcache_core.testing.thread_stream.ThreadStream`).
Everything between them is the real engine: registration checks, lazy import on first use,
L1 reservations committed only after the copy completed, read locks held until it completed,
skip_first_n_tokens, release off the request thread on unregister.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from default_engine_rig import CHUNK, Rig, tokens, wire_key
from lmcache_engine_default.cuda_workers import CudaRuntime, register_cuda_worker

from lmcache_core.protocol.errors import BadRequestError
from lmcache_core.testing.engine_fakes import FakeDeviceImporter
from lmcache_core.testing.thread_stream import ThreadStream, WorkerEvents
from lmcache_core.transfer.cuda_handles import CudaTensorRecord, TensorView

NB, BS, HEADS, DIM, LAYERS = 24, 4, 2, 16, 2  # 4 blocks per 16-token chunk
UUID = "GPU-fake-0"
IID = 11


class Device:
    """The FAKE device side: KV tensors, importer, worker events, streams."""

    def __init__(self) -> None:
        self.layers = [
            torch.randint(0, 256, (2, NB, BS, HEADS, DIM * 2), dtype=torch.uint8).view(
                torch.bfloat16
            )
            for _ in range(LAYERS)
        ]
        keys = [bytes([i + 1]) * 64 for i in range(LAYERS)]
        self.importer = FakeDeviceImporter(dict(zip(keys, self.layers, strict=True)))
        self.events = WorkerEvents()
        self.streams: list[ThreadStream] = []
        self.records = [
            CudaTensorRecord(
                "cuda_raw",
                TensorView(torch.bfloat16, tuple(t.shape), tuple(t.stride()), 0, UUID),
                None,
                key,
                0,
                t.numel() * 2,
            )
            for key, t in zip(keys, self.layers, strict=True)
        ]

    def stream(self, ordinal: int) -> ThreadStream:
        assert ordinal == 0
        stream = ThreadStream(self.events)
        self.streams.append(stream)
        return stream


@pytest.fixture
def device(rig: Rig) -> Iterator[Device]:
    dev = Device()
    runtime = CudaRuntime(importer=dev.importer, stream_factory=dev.stream, device_uuids=[UUID])
    rig.engine.lmcache_driven._cuda = runtime
    worker = register_cuda_worker(
        IID, dev.records, "model", 1, {"kv_layout": "NHD"}, CHUNK, runtime
    )
    rig.engine.workers.add_mapped(worker)
    rig.engine.liveness.registered(IID)
    yield dev
    for stream in dev.streams:
        stream.close()


def blocks(layer: torch.Tensor, ids: list[int]) -> torch.Tensor:
    return layer[:, ids].contiguous().view(torch.uint8)


def test_first_transfer_imports_then_round_trip_is_exact(rig: Rig, device: Device) -> None:
    assert device.importer.opened == []  # registration imports nothing
    ids = tokens(2, seed=40)
    key = wire_key(ids, 0, 2 * CHUNK, "r")
    source, target = [1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16]
    event, ok = rig.call("store", key, IID, [source], device.events.make(fired=True))
    assert ok is True and event.startswith(b"thread-event-")
    assert len(device.importer.opened) == LAYERS
    assert rig.l1.usage().resident_objects == 2
    rig.call("lookup", wire_key(ids, 0, 2 * CHUNK, "r", worker_id=None), 1)
    event, ok = rig.call("retrieve", key, IID, [target], device.events.make(fired=True), 0)
    assert ok is True and event
    for layer in device.layers:
        assert torch.equal(blocks(layer, target), blocks(layer, source))
    assert rig.l1.usage().locked_objects == 0
    assert rig.engine.status()["cuda"]["imported_allocations"] == LAYERS


def test_store_commits_only_after_the_worker_event_and_copy(rig: Rig, device: Device) -> None:
    key = wire_key(tokens(1, seed=41), 0, CHUNK, "r")
    worker_event = device.events.make()  # the forward pass has not finished yet
    result: list[Any] = []
    caller = threading.Thread(
        target=lambda: result.append(rig.call("store", key, IID, [[1, 2, 3, 4]], worker_event))
    )
    caller.start()
    time.sleep(0.3)
    assert not result and rig.l1.usage().resident_objects == 0  # reserved, never visible
    device.events.fire(worker_event)
    caller.join(10)
    assert result[0][1] is True and rig.l1.usage().resident_objects == 1


def test_retrieve_skips_the_prefix_and_releases_locks(rig: Rig, device: Device) -> None:
    ids = tokens(2, seed=42)
    key = wire_key(ids, 0, 2 * CHUNK, "r")
    source, target = [1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16]
    assert rig.call("store", key, IID, [source], device.events.make(fired=True))[1]
    before = [layer.clone() for layer in device.layers]
    rig.call("lookup", wire_key(ids, 0, 2 * CHUNK, "r", worker_id=None), 1)
    skip = 6  # ends inside the second block
    assert rig.call("retrieve", key, IID, [target], device.events.make(fired=True), skip)[1]
    for layer, old in zip(device.layers, before, strict=True):

        def rows(t: torch.Tensor, ids: list[int]) -> torch.Tensor:
            return t[:, ids].reshape(2, -1, HEADS * DIM).view(torch.uint8)  # bytes (NaNs too)

        got = rows(layer, target)
        assert torch.equal(got[:, :skip], rows(old, target)[:, :skip])
        assert torch.equal(got[:, skip:], rows(old, source)[:, skip:])
    assert rig.l1.usage().locked_objects == 0


def test_bad_block_ids_are_a_bad_request_and_nothing_stays_reserved(
    rig: Rig, device: Device
) -> None:
    key = wire_key(tokens(1, seed=43), 0, CHUNK, "r")
    with pytest.raises(BadRequestError, match="outside"):
        rig.call("store", key, IID, [[1, 2, 3, NB]], device.events.make(fired=True))
    assert rig.l1.usage().resident_objects == 0
    key2 = wire_key(tokens(1, seed=44), 0, CHUNK, "r2")
    assert rig.call("store", key2, IID, [[1, 2, 3, 4]], device.events.make(fired=True))[1]


def test_an_unknown_worker_event_fails_the_store_cleanly(rig: Rig, device: Device) -> None:
    key = wire_key(tokens(1, seed=45), 0, CHUNK, "r")
    _, ok = rig.call("store", key, IID, [[1, 2, 3, 4]], b"never-exported")
    assert ok is False
    runtime = rig.engine.lmcache_driven._cuda
    assert runtime is not None and runtime.deferred.drain(10)
    assert rig.l1.usage().resident_objects == 0 and runtime.failures["store"] == 1


def test_unregister_releases_the_mappings_off_the_request_thread(rig: Rig, device: Device) -> None:
    key = wire_key(tokens(1, seed=46), 0, CHUNK, "r")
    assert rig.call("store", key, IID, [[1, 2, 3, 4]], device.events.make(fired=True))[1]
    rig.call("unregister_kv_cache", IID)
    runtime = rig.engine.lmcache_driven._cuda
    assert runtime is not None and runtime.releaser.wait_idle(10)
    assert sorted(device.importer.closed) == sorted(device.importer.opened)
    assert len(runtime.table) == 0
    assert rig.call("store", key, IID, [[1, 2, 3, 4]], b"")[1] is False


def test_an_unsupported_dtype_is_refused_at_registration_naming_the_shape(device: Device) -> None:
    runtime = CudaRuntime(
        importer=device.importer, stream_factory=device.stream, device_uuids=[UUID]
    )
    try:
        bad = [
            CudaTensorRecord(
                "cuda_raw",
                TensorView(torch.float32, r.view.shape, r.view.stride, 0, UUID),
                None,
                r.raw_handle,
                0,
                r.range_nbytes * 2,
            )
            for r in device.records
        ]
        with pytest.raises(
            BadRequestError, match=r"float32 for tensors of shape \[2, 24, 4, 2, 16\]"
        ):
            register_cuda_worker(12, bad, "model", 1, {}, CHUNK, runtime)
    finally:
        runtime.close()
