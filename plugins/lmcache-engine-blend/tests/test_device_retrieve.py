"""The blend engine's GPU retrieve and CUDA RoPE registration on the CPU, with FAKES.

No GPU here: the "device memory" is CPU tensors handed out by a FAKE importer (the KV
cache and the cos/sin cache of a "CUDA" worker), and the stream is a FAKE (a real thread,
:class:`~lmcache_core.testing.thread_stream.ThreadStream`). Everything between them is the
real engine: the blend gates, the device retrieve (staging, batched re-RoPE, one indexed
write per layer and plane), the transfer ordering (worker event, read locks held until the
copies completed, deadline), and the CUDA cos/sin import. Each case writes the same stored
chunks through a CPU (``cpu_shm``-style) worker and a FAKE-CUDA worker into identical caches
and requires the two caches to be byte for byte equal afterwards.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import torch
from lmcache_engine_blend.engine import BlendEngine, build_engine
from lmcache_engine_default.cuda_workers import CudaRuntime, register_cuda_worker
from lmcache_engine_default.workers import MappedWorker
from torch.utils._python_dispatch import TorchDispatchMode

from lmcache_core.client.cpu_worker import shared_copy
from lmcache_core.config.loading import load_config
from lmcache_core.config.resolution import Selection
from lmcache_core.engine import EngineContext
from lmcache_core.engine.contract import RequestContext
from lmcache_core.engine.token_cache import TokenHashCache
from lmcache_core.hashing import make_hasher
from lmcache_core.observability.bus import EventBus
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.plugin.specs import (
    EngineSpec,
    EvictionPolicySpec,
    PrefetchPolicySpec,
    StorePolicySpec,
)
from lmcache_core.protocol.codec import encode_device_handle
from lmcache_core.protocol.errors import NotSupportedError
from lmcache_core.protocol.types import (
    CBMatchResult,
    WireCacheKey,
)
from lmcache_core.storage.arena import Arena
from lmcache_core.storage.l1 import L1Manager
from lmcache_core.testing.engine_fakes import FakeDeviceImporter, FifoPolicy
from lmcache_core.testing.rope_reference import apply_rope, cos_sin_cache
from lmcache_core.testing.thread_stream import ThreadStream, WorkerEvents
from lmcache_core.transfer.layout import KVFormat, KVLayout
from lmcache_core.transfer.paged import PagedKVCache

CHUNK, BS, NB, LAYERS = 16, 4, 40, 2
HEADS, DIM = 2, 16
MAX_POSITION = 256
UUID = "GPU-fake-0"
CPU_IID, GPU_IID = 21, 22
MIB = 1 << 20
CTX = RequestContext(b"client", "op")


# -- FAKES ----------------------------------------------------------------------------------


@dataclass
class FakeDevice:
    """The FAKE device side: importer, worker events, thread streams."""

    importer: FakeDeviceImporter = field(default_factory=FakeDeviceImporter)
    events: WorkerEvents = field(default_factory=WorkerEvents)
    streams: list[ThreadStream] = field(default_factory=list)

    def stream(self, ordinal: int) -> ThreadStream:
        assert ordinal == 0
        stream = ThreadStream(self.events)
        self.streams.append(stream)
        return stream


# -- the rig --------------------------------------------------------------------------------


@dataclass
class Rig:
    engine: BlendEngine
    l1: L1Manager
    device: FakeDevice
    runtime: CudaRuntime
    keep: list[Any] = field(default_factory=list)

    def call(self, op: str, *args: Any, ctx: RequestContext = CTX) -> Any:
        return self.engine.handlers()[op](ctx, *args)

    def locked(self) -> int:
        return self.l1.usage().locked_objects


def _unused(*_args: Any) -> Any:
    raise AssertionError("the engine builds no other plugin")


@pytest.fixture
def rig() -> Iterator[Rig]:
    policy = FifoPolicy()
    l1 = L1Manager(
        arena=Arena(8 * MIB + 4096, kind="shm"),
        capacity_bytes=8 * MIB,
        init_bytes=8 * MIB,
        align_bytes=4096,
        write_ttl_s=60,
        read_ttl_s=60,
        policy=policy,
        trigger_watermark=0.8,
        eviction_ratio=0.2,
    )
    config = load_config(
        {"l1_size_gb": 0.01, "eviction_policy": "fifo", "chunk_size": CHUNK, "engine_type": "blend"}
    )
    selection = Selection(
        engine=EngineSpec(name="blend", factory=build_engine),
        eviction_policy=EvictionPolicySpec(name="fifo", factory=_unused),
        store_policy=StorePolicySpec(name="default", factory=_unused),
        prefetch_policy=PrefetchPolicySpec(name="default", factory=_unused),
    )
    context = EngineContext(
        config=config,
        registry=PluginRegistry(strict=True),
        selection=selection,
        l1=l1,
        token_cache=TokenHashCache(make_hasher("blake3"), CHUNK),
        l2=None,
        events=EventBus(enabled=False),
    )
    engine = build_engine(context)
    for component in engine.components():
        component.start()
    device = FakeDevice()
    runtime = CudaRuntime(
        importer=device.importer, stream_factory=device.stream, device_uuids=[UUID]
    )
    engine.lmcache_driven._cuda = runtime
    made = Rig(engine, l1, device, runtime)
    yield made
    engine.close()
    for component in reversed(engine.components()):
        component.stop(5.0)
    for stream in device.streams:
        stream.close()
    for _tensor, cleanup in made.keep:
        cleanup()
    l1.close()


# -- the model side: K carries RoPE at its position ------------------------------------------


@dataclass(frozen=True)
class Case:
    """One geometry: layout, RoPE style and registration arguments."""

    name: str
    fmt: KVFormat
    dtype: torch.dtype
    neox: bool = True
    rot_dim: int = DIM
    nope: bool = False
    kv_quant: str = ""
    mla_content: int = 0

    def layout(self) -> KVLayout:
        if self.fmt is KVFormat.MLA:
            return KVLayout(
                KVFormat.MLA, LAYERS, NB, BS, 1, self.mla_content + self.rot_dim, self.dtype
            )
        return KVLayout(self.fmt, LAYERS, NB, BS, HEADS, DIM, self.dtype)

    def rope_args(self) -> tuple[int, list[list[int]]]:
        """``head_size`` and ``group_rot``."""
        if self.fmt is KVFormat.MLA:
            return self.mla_content + self.rot_dim, [[self.mla_content, self.rot_dim]]
        return DIM, []

    def width_offset(self) -> tuple[int, int]:
        if self.fmt is KVFormat.MLA:
            return self.mla_content + self.rot_dim, self.mla_content
        return DIM, 0


CASES = [
    Case("neox-nhd-bf16", KVFormat.NHD, torch.bfloat16, neox=True),
    Case("gptj-nhd-bf16", KVFormat.NHD, torch.bfloat16, neox=False),
    Case("neox-hnd-fp16-partial-rot", KVFormat.HND, torch.float16, neox=True, rot_dim=8),
    Case("mla-group-rot-bf16", KVFormat.MLA, torch.bfloat16, neox=False, rot_dim=8, mla_content=24),
    Case("nope-nhd-bf16", KVFormat.NHD, torch.bfloat16, nope=True),
    Case("fp8-e4m3-k", KVFormat.NHD, torch.float8_e4m3fn, neox=True, kv_quant="fp8_e4m3"),
]


def random_layers(layout: KVLayout, seed: int) -> list[torch.Tensor]:
    """Random bytes everywhere (NaN patterns too), so any stray write shows."""
    gen = torch.Generator().manual_seed(seed)
    nbytes = layout.itemsize
    return [
        torch.randint(
            0,
            256,
            (*layout.layer_shape()[:-1], layout.layer_shape()[-1] * nbytes),
            generator=gen,
            dtype=torch.uint8,
        ).view(layout.dtype)
        for _ in range(layout.num_layers)
    ]


def plane_rows(layer: torch.Tensor, plane: int, layout: KVLayout) -> torch.Tensor:
    """A plane as ``[blocks, block_size, hidden...]`` (a view, for indexing by slot)."""
    if layout.format is KVFormat.MLA:
        return layer
    view = layer[plane]
    return view.transpose(1, 2) if layout.format is KVFormat.HND else view


def slots_of(table: Sequence[int], positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    where = torch.tensor(list(positions))
    return torch.tensor(list(table))[where // BS], where % BS


@dataclass
class Workers:
    """A CPU worker and a FAKE-CUDA worker of one layout, with identical caches."""

    case: Case
    layout: KVLayout
    cache: torch.Tensor
    cpu: list[torch.Tensor]
    gpu: list[torch.Tensor]
    raw_k: torch.Tensor
    raw_v: torch.Tensor
    tokens: list[int]
    hashes: list[bytes]


PROMPT_CHUNKS = 3
SOURCE = list(range(1, 1 + PROMPT_CHUNKS * CHUNK // BS))  # blocks 1..12 hold the prompt
TARGET = list(range(20, 36))  # the new request's 16 blocks (64 tokens)


def wire_key(tokens: list[int], end: int, rid: str) -> WireCacheKey:
    return WireCacheKey(
        model_name="model",
        world_size=1,
        worker_id=0,
        token_ids=msgspec.Raw(msgspec.msgpack.encode(tokens)),
        start=0,
        end=end,
        request_id=rid,
    )


def setup_workers(rig: Rig, case: Case, rows: int = MAX_POSITION) -> Workers:
    """Both workers registered (RoPE too); the prompt stored from the CPU worker."""
    layout = case.layout()
    cpu = random_layers(layout, seed=7)
    engine = rig.engine
    engine.workers.add_mapped(MappedWorker(CPU_IID, "model", 1, layout, PagedKVCache(cpu, layout)))
    engine.liveness.registered(CPU_IID)
    # The prompt: K rotated at positions 0.., as the model wrote it; then stored.
    total = PROMPT_CHUNKS * CHUNK
    gen = torch.Generator().manual_seed(3)
    raw_k = torch.randn(LAYERS, total, layout.hidden, generator=gen, dtype=torch.float64)
    raw_v = torch.randn(LAYERS, total, layout.hidden, generator=gen, dtype=torch.float64)
    cache = cos_sin_cache(rows, case.rot_dim)
    width, offset = case.width_offset()
    k = (
        raw_k
        if case.nope
        else apply_rope(
            raw_k, torch.arange(total), cache, neox=case.neox, head_width=width, offset=offset
        )
    )
    blk, off = slots_of(SOURCE, range(total))
    for index, layer in enumerate(cpu):
        shape = (total, *plane_rows(layer, 0, layout).shape[2:])
        plane_rows(layer, 0, layout)[blk, off] = k[index].to(layout.dtype).view(shape)
        if layout.kv_size == 2:
            plane_rows(layer, 1, layout)[blk, off] = raw_v[index].to(layout.dtype).view(shape)
    tokens = [1000 + i for i in range(total)]
    _, ok = rig.call("store", wire_key(tokens, total, "store"), CPU_IID, [SOURCE], b"")
    assert ok is True
    raw = msgspec.msgpack.encode(tokens)
    hashes = engine.lookups.chunk_keys.tokens.hashes(raw, PROMPT_CHUNKS)
    # The FAKE-CUDA worker: a copy of the CPU worker's cache, "exported" layer by layer.
    gpu = [layer.clone() for layer in cpu]
    records = [rig.device.importer.share(layer)[1] for layer in gpu]
    hints = {"kv_layout": "HND"} if layout.format is KVFormat.HND else {}
    worker = register_cuda_worker(GPU_IID, records, "model", 1, hints, CHUNK, rig.runtime)
    engine.workers.add_mapped(worker)
    engine.liveness.registered(GPU_IID)
    made = Workers(case, layout, cache, cpu, gpu, raw_k, raw_v, tokens, hashes)
    register_rope(rig, made, CPU_IID, cuda=False)
    register_rope(rig, made, GPU_IID, cuda=True)
    return made


def register_rope(rig: Rig, workers: Workers, iid: int, *, cuda: bool, scale: float = 1.0) -> None:
    case = workers.case
    caches = []
    if not case.nope:
        source = workers.cache * scale
        if cuda:
            handle, _ = rig.device.importer.share(source.clone())
            caches.append(encode_device_handle(handle))
        else:
            handle, tensor, cleanup = shared_copy(source)
            rig.keep.append((tensor, cleanup))
            caches.append(encode_device_handle(handle))
    head, group_rot = case.rope_args()
    rig.call("cb_register_rope", iid, caches, head, case.neox, [], group_rot, [], case.kv_quant)


def segments(w: Workers) -> list[CBMatchResult]:
    """Same position, moved back to an unaligned start, and a partial chunk moved ahead."""
    h0, h1, h2 = w.hashes
    return [
        CBMatchResult(old_st=0, old_ed=16, cur_st=0, cur_ed=16, hash=h0),
        CBMatchResult(old_st=32, old_ed=48, cur_st=18, cur_ed=34, hash=h2),
        CBMatchResult(old_st=16, old_ed=26, cur_st=40, cur_ed=50, hash=h1),
    ]


def retrieve(
    rig: Rig, iid: int, segs: list[CBMatchResult], rid: str, event: bytes = b"", **kw: Any
) -> tuple[bytes, bool]:
    key = wire_key([0] * 64, 64, rid)
    event_out, ok = rig.call("cb_retrieve_pre_computed", key, segs, [TARGET], iid, event, **kw)
    return bytes(event_out), bool(ok)


def as_bytes(layers: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [layer.contiguous().view(torch.uint8) for layer in layers]


def written_positions(segs: Sequence[CBMatchResult]) -> list[int]:
    return [p for m in segs for p in range(m.cur_st, m.cur_ed)]


# -- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_fake_cuda_retrieve_writes_the_same_bytes_as_the_cpu_path(rig: Rig, case: Case) -> None:
    w = setup_workers(rig, case)
    before = as_bytes([layer.clone() for layer in w.gpu])
    segs = segments(w)
    assert retrieve(rig, CPU_IID, segs, "cpu") == (b"", True)
    event, ok = retrieve(rig, GPU_IID, segs, "gpu", rig.device.events.make(fired=True))
    assert ok is True and event.startswith(b"thread-event-")  # a server event, freshly recorded
    for got, want in zip(as_bytes(w.gpu), as_bytes(w.cpu), strict=True):
        assert torch.equal(got, want)
    # The written rows are right (K at its new position, V as stored) and nothing else moved.
    positions = written_positions(segs)
    old = [p for m in segs for p in range(m.old_st, m.old_ed)]
    blk, off = slots_of(TARGET, positions)
    width, offset = case.width_offset()
    expected_k = w.raw_k[:, old]
    if not case.nope:
        expected_k = apply_rope(
            expected_k,
            torch.tensor(positions),
            w.cache,
            neox=case.neox,
            head_width=width,
            offset=offset,
        )
    tolerance = 0.13 if case.dtype.itemsize == 1 else 2e-2
    for index, layer in enumerate(w.gpu):
        k = plane_rows(layer, 0, w.layout)[blk, off].reshape(len(positions), -1)
        torch.testing.assert_close(
            k.to(torch.float64), expected_k[index], atol=tolerance * 4, rtol=tolerance
        )
        if w.layout.kv_size == 2:
            v = plane_rows(layer, 1, w.layout)[blk, off].reshape(len(positions), -1)
            assert torch.equal(v, w.raw_v[index, old].to(w.layout.dtype))
    mask = [torch.ones(layer.shape, dtype=torch.bool) for layer in w.gpu]
    for index in range(LAYERS):
        for plane in range(w.layout.kv_size):
            plane_rows(mask[index], plane, w.layout)[blk, off] = False
    for layer, old_bytes, keep in zip(w.gpu, before, mask, strict=True):
        unit = layer.contiguous().view(torch.uint8).view(*keep.shape, -1)
        assert torch.equal(unit[keep], old_bytes.view(*keep.shape, -1)[keep])
    assert rig.locked() == 0


def test_read_locks_are_held_until_the_copies_completed(rig: Rig) -> None:
    w = setup_workers(rig, CASES[0])
    worker_event = rig.device.events.make()  # the worker's forward pass is still running
    result: list[tuple[bytes, bool]] = []
    caller = threading.Thread(
        target=lambda: result.append(retrieve(rig, GPU_IID, segments(w), "r", worker_event))
    )
    caller.start()
    time.sleep(0.3)
    assert not result and rig.locked() == 3  # one read lock per object, held while waiting
    rig.device.events.fire(worker_event)
    caller.join(10)
    assert result and result[0][1] is True
    assert rig.locked() == 0


def test_a_deadline_answers_false_with_the_event_and_releases_after_completion(rig: Rig) -> None:
    w = setup_workers(rig, CASES[0])
    before = as_bytes([layer.clone() for layer in w.gpu])
    worker_event = rig.device.events.make()
    ctx = RequestContext(b"client", "op", time.monotonic() + 0.3)
    event, ok = retrieve(rig, GPU_IID, segments(w), "late", worker_event, ctx=ctx)
    assert ok is False and event.startswith(b"thread-event-")
    assert rig.locked() == 3  # the copies have not run: the objects stay locked
    assert all(torch.equal(a, b) for a, b in zip(as_bytes(w.gpu), before, strict=True))
    rig.device.events.fire(worker_event)
    assert rig.runtime.deferred.drain(10)
    assert rig.locked() == 0 and rig.runtime.failures["retrieve"] == 1


def test_a_missing_object_fails_with_every_slot_untouched(rig: Rig) -> None:
    w = setup_workers(rig, CASES[0])
    before = as_bytes([layer.clone() for layer in w.gpu])
    segs = segments(w)
    segs[2] = CBMatchResult(old_st=16, old_ed=26, cur_st=40, cur_ed=50, hash=b"\x07" * 32)
    event, ok = retrieve(rig, GPU_IID, segs, "missing", rig.device.events.make(fired=True))
    assert ok is False and event  # still a fresh server event
    assert all(torch.equal(a, b) for a, b in zip(as_bytes(w.gpu), before, strict=True))
    assert rig.locked() == 0


def test_a_position_past_the_cos_sin_cache_fails_before_any_write(rig: Rig) -> None:
    w = setup_workers(rig, CASES[1], rows=49)  # the last segment ends at 50
    before = as_bytes([layer.clone() for layer in w.gpu])
    event, ok = retrieve(rig, GPU_IID, segments(w), "far", rig.device.events.make(fired=True))
    assert ok is False and event
    assert all(torch.equal(a, b) for a, b in zip(as_bytes(w.gpu), before, strict=True))
    assert rig.locked() == 0


def test_an_already_applied_retrieve_answers_a_fresh_event(rig: Rig) -> None:
    w = setup_workers(rig, CASES[0])
    segs = segments(w)
    first, ok = retrieve(rig, GPU_IID, segs, "again", rig.device.events.make(fired=True))
    assert ok
    second, ok = retrieve(rig, GPU_IID, segs, "again", rig.device.events.make(fired=True))
    assert ok is True and second.startswith(b"thread-event-") and second != first


def test_several_staging_batches_write_the_same_bytes(rig: Rig) -> None:
    w = setup_workers(rig, CASES[0])
    nbytes = w.layout.object_nbytes(CHUNK)
    rig.engine.retrieves.device.staging_bytes = nbytes  # one chunk per batch
    segs = segments(w)
    assert retrieve(rig, CPU_IID, segs, "cpu")[1]
    assert retrieve(rig, GPU_IID, segs, "gpu", rig.device.events.make(fired=True))[1]
    for got, want in zip(as_bytes(w.gpu), as_bytes(w.cpu), strict=True):
        assert torch.equal(got, want)


def test_cuda_cos_sin_caches_are_copied_normalised_and_their_mapping_released(rig: Rig) -> None:
    w = setup_workers(rig, CASES[0])
    kv_keys = len(rig.runtime.table)
    register_rope(rig, w, GPU_IID, cuda=True, scale=2.0)  # a YaRN-style mscale of 2
    state = rig.engine.ropes.get(GPU_IID)
    assert state is not None and len(state.caches) == 1
    torch.testing.assert_close(state.caches[0], w.cache, atol=1e-6, rtol=1e-6)
    cos_key = list(rig.device.importer.memory)[-1]
    assert cos_key in rig.device.importer.closed  # imported, copied, released
    assert len(rig.runtime.table) == kv_keys
    rig.device.importer.memory[cos_key].zero_()  # the worker reuses its tensor: no effect
    torch.testing.assert_close(state.caches[0], w.cache, atol=1e-6, rtol=1e-6)
    # The re-registered state serves the next retrieve, the same bytes as the CPU path.
    segs = segments(w)
    assert retrieve(rig, CPU_IID, segs, "cpu")[1]
    assert retrieve(rig, GPU_IID, segs, "gpu", rig.device.events.make(fired=True))[1]
    for got, want in zip(as_bytes(w.gpu), as_bytes(w.cpu), strict=True):
        assert torch.equal(got, want)


def test_cuda_cos_sin_caches_for_a_cpu_worker_are_refused(rig: Rig) -> None:
    w = setup_workers(rig, CASES[0])
    handle, _ = rig.device.importer.share(w.cache.clone())
    with pytest.raises(NotSupportedError, match="not on a GPU"):
        rig.call(
            "cb_register_rope", CPU_IID, [encode_device_handle(handle)], DIM, True, [], [], [], ""
        )


def test_a_unified_lookups_locks_are_consumed_by_the_device_retrieve(rig: Rig) -> None:
    w = setup_workers(rig, CASES[0])
    _s, d0, d1 = (w.tokens[i * CHUNK : (i + 1) * CHUNK] for i in range(PROMPT_CHUNKS))
    prompt = [7] * CHUNK + d1 + d0 + [8] * CHUNK  # d1 moved back, d0 ahead
    lookup_key = wire_key(prompt, len(prompt), "unified")
    lookup_key = msgspec.structs.replace(lookup_key, worker_id=None, num_kv_readers=1)
    result = None
    for _ in range(500):
        result = rig.call("cb_unified_lookup", lookup_key, 1)
        if result is not None:
            break
        time.sleep(0.01)
    assert result is not None
    segs = sorted(result.non_prefix_segments, key=lambda m: m.cur_st)
    assert [(m.old_st, m.cur_st) for m in segs] == [(2 * CHUNK, CHUNK), (CHUNK, 2 * CHUNK)]
    assert rig.locked() == 2  # the lookup's locks, stashed in the session
    key = wire_key(prompt, len(prompt), "unified")
    event, ok = rig.call(
        "cb_retrieve_pre_computed", key, segs, [TARGET], GPU_IID, rig.device.events.make(True)
    )
    assert ok is True and event
    assert rig.locked() == 0
    assert retrieve(rig, CPU_IID, segs, "cpu")[1]
    for got, want in zip(as_bytes(w.gpu), as_bytes(w.cpu), strict=True):
        assert torch.equal(got, want)


def test_a_stream_that_takes_no_work_fails_and_releases_the_locks(rig: Rig) -> None:
    w = setup_workers(rig, CASES[0])
    before = as_bytes([layer.clone() for layer in w.gpu])
    assert retrieve(rig, GPU_IID, segments(w)[:1], "warm", rig.device.events.make(True))[1]
    rig.device.streams[0].broken = True  # the FAKE stream refuses work (a device fault)
    event, ok = retrieve(rig, GPU_IID, segments(w)[1:], "broken", rig.device.events.make(True))
    assert ok is False and event
    assert rig.runtime.deferred.drain(10) and rig.locked() == 0
    positions = set(written_positions(segments(w)[1:]))
    blk, off = slots_of(TARGET, sorted(positions))
    for layer, old in zip(w.gpu, before, strict=True):  # nothing of the failed call landed
        now = plane_rows(layer, 0, w.layout)[blk, off].contiguous().view(torch.uint8)
        was = plane_rows(old.view(w.layout.dtype), 0, w.layout)[blk, off]
        assert torch.equal(now, was.contiguous().view(torch.uint8))


def test_cpu_shm_cos_sin_caches_serve_a_cuda_worker_too(rig: Rig) -> None:
    w = setup_workers(rig, CASES[1])
    register_rope(rig, w, GPU_IID, cuda=False)  # replaces the CUDA-registered state
    state = rig.engine.ropes.get(GPU_IID)
    assert state is not None and state.caches[0].device.type == "cpu"
    segs = segments(w)
    assert retrieve(rig, CPU_IID, segs, "cpu")[1]
    assert retrieve(rig, GPU_IID, segs, "gpu", rig.device.events.make(True))[1]
    for got, want in zip(as_bytes(w.gpu), as_bytes(w.cpu), strict=True):
        assert torch.equal(got, want)


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops run under it (on the FAKE stream's thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def test_the_device_work_does_not_grow_with_tokens_or_chunks(rig: Rig) -> None:
    """One gather, one rotation, one write per layer and plane, whatever the request's size.

    The DMAs are one per run of adjacent objects in the arena, so they (and their run views)
    are left out of the comparison.
    """
    w = setup_workers(rig, CASES[0])
    assert retrieve(rig, GPU_IID, segments(w)[1:2], "warm", rig.device.events.make(True))[1]
    stream = rig.device.streams[0]
    counted: list[_OpCounter] = []
    plain_submit = stream.submit

    def submit(work: Any) -> None:
        def run() -> None:
            counter = _OpCounter()
            with counter:
                work()
            counted.append(counter)

        plain_submit(run)

    stream.submit = submit  # type: ignore[method-assign]
    one = [CBMatchResult(old_st=32, old_ed=48, cur_st=16, cur_ed=32, hash=w.hashes[2])]
    assert retrieve(rig, GPU_IID, one, "one", rig.device.events.make(True))[1]
    three = [
        CBMatchResult(old_st=0, old_ed=16, cur_st=16, cur_ed=32, hash=w.hashes[0]),
        CBMatchResult(old_st=16, old_ed=32, cur_st=32, cur_ed=48, hash=w.hashes[1]),
        CBMatchResult(old_st=32, old_ed=45, cur_st=48, cur_ed=61, hash=w.hashes[2]),
    ]
    assert retrieve(rig, GPU_IID, three, "three", rig.device.events.make(True))[1]
    small, large = (dict(c.ops) for c in counted)
    for dma in ("copy_", "as_strided"):  # the DMAs and their run views
        assert large.pop(dma, 0) >= small.pop(dma, 0)
    assert small == large
    assert small["index_copy_"] == LAYERS * 2  # one write per layer and plane
