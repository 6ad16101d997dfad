"""An exact offline model of one replay: what hit ratio the server *should* reach.

It follows the request loop of the replay (lookup, retrieve of the hit, store of
the missed chunks, ``end_session``) against a model of L1 with the server's
rules, independent of the server's code except for the eviction policy plugin,
which it drives through the same calls the L1 manager makes, in the same order:

* lookup: ``on_accessed`` with the L1 hit prefix (``lock_prefix``); an L2 hit
  beyond it is loaded into L1 (``on_stored``) when an L2 is modelled;
* retrieve: ``on_accessed`` with the hit chunks (``lock_for_read``);
* store: the missed chunks not resident are placed, evicting *just enough* in
  policy order when they do not fit (``make_room``); then ``on_stored``;
* ``end_session``: ``on_accessed`` with the hit chunks again (``touch``);
* the L1 controller's watermark round after the request: above
  ``trigger_watermark * capacity`` it evicts in policy order until at least
  ``eviction_ratio * capacity`` bytes are freed.

Objects all have one size, so L1 holds ``capacity // aligned size`` of them.
The server's controller runs every 0.1 s instead of after each request; the
replay's ``--sync-eviction`` option waits for it so that both see the same
order of events (see :mod:`lmcache_bench_trace.engine_client`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field

from lmcache_bench_trace.trace import TraceRequest
from lmcache_core.storage.eviction import EvictionPolicy
from lmcache_core.storage.keys import ObjectKey

GIB = 1 << 30


def l1_capacity_bytes(l1_size_gb: float, align_bytes: int = 4096) -> int:
    """The L1 capacity the server derives from ``--l1-size-gb`` (rounded down to the alignment)."""
    return int(l1_size_gb * GIB) & ~(align_bytes - 1)


def aligned(nbytes: int, align_bytes: int = 4096) -> int:
    """An object's footprint in L1."""
    return (nbytes + align_bytes - 1) & ~(align_bytes - 1)


@dataclass
class SimSettings:
    """What the modelled server is configured with.

    Attributes:
        capacity_bytes: L1 capacity (see :func:`l1_capacity_bytes`).
        object_bytes: One chunk's KV bytes (before alignment).
        align_bytes: ``--l1-align-bytes``.
        trigger_watermark: ``--eviction-trigger-watermark``.
        eviction_ratio: ``--eviction-ratio``.
        chunk_size: ``--chunk-size`` (tokens).
        l2_capacity_chunks: Model an L2 holding this many chunks (LRU); None: no L2;
            0: an unbounded L2.
        l2_admit_after: Store a chunk to L2 only at its N-th store into L1 (the
            ``frequency`` store policy's threshold); 1: every chunk (``default``).
    """

    capacity_bytes: int
    object_bytes: int
    align_bytes: int = 4096
    trigger_watermark: float = 0.8
    eviction_ratio: float = 0.2
    chunk_size: int = 256
    l2_capacity_chunks: int | None = None
    l2_admit_after: int = 1


@dataclass
class SimResult:
    """Totals of a simulated replay (token counts; ratios over ``input_tokens``)."""

    requests: int = 0
    input_tokens: int = 0
    l1_hit_tokens: int = 0
    l2_hit_tokens: int = 0
    stored_chunks: int = 0
    evicted_chunks: int = 0
    watermark_rounds: int = 0
    l2_stored_chunks: int = 0
    per_request_hits: list[int] = field(default_factory=list)

    @property
    def hit_ratio(self) -> float:
        """Token-level hit ratio, all tiers."""
        return (self.l1_hit_tokens + self.l2_hit_tokens) / max(1, self.input_tokens)

    @property
    def l1_hit_ratio(self) -> float:
        """Token-level hit ratio served from L1."""
        return self.l1_hit_tokens / max(1, self.input_tokens)

    @property
    def l2_hit_ratio(self) -> float:
        """Token-level hit ratio served from L2."""
        return self.l2_hit_tokens / max(1, self.input_tokens)


class _ModelL2:
    """An L2 of whole chunks with LRU eviction by count (0: unbounded)."""

    def __init__(self, capacity_chunks: int) -> None:
        self.capacity = capacity_chunks
        self._keys: OrderedDict[ObjectKey, None] = OrderedDict()

    def __contains__(self, key: ObjectKey) -> bool:
        return key in self._keys

    def store(self, keys: Iterable[ObjectKey]) -> int:
        count = 0
        for key in keys:
            if key not in self._keys:
                count += 1
            self._keys[key] = None
            self._keys.move_to_end(key)
        while self.capacity and len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return count

    def touch(self, keys: Iterable[ObjectKey]) -> None:
        for key in keys:
            if key in self._keys:
                self._keys.move_to_end(key)


class Simulator:
    """The model of one server under a replay, one request at a time.

    Args:
        settings: The modelled configuration.
        policy: A fresh eviction policy instance (built from the same plugin the
            server runs, e.g. ``LRU`` or ``ARC``).
        key_of: Maps a chunk id (see :meth:`TraceRequest.chunk_ids`) to the key
            the policy sees.
    """

    def __init__(
        self,
        settings: SimSettings,
        policy: EvictionPolicy,
        key_of: Callable[[int], ObjectKey] | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.key_of = key_of or _default_key
        self.slot_bytes = aligned(settings.object_bytes, settings.align_bytes)
        self.slots = settings.capacity_bytes // self.slot_bytes
        if self.slots <= 0:
            raise ValueError("the modelled L1 cannot hold a single chunk")
        self.resident: set[ObjectKey] = set()
        self.result = SimResult()
        self.l2 = (
            _ModelL2(settings.l2_capacity_chunks)
            if settings.l2_capacity_chunks is not None
            else None
        )
        self._store_counts: dict[ObjectKey, int] = {}

    def run(self, requests: Iterable[TraceRequest]) -> SimResult:
        """Replay every request in order; returns the totals."""
        for request in requests:
            self.request(request)
        return self.result

    def request(self, request: TraceRequest) -> int:
        """One request; returns its hit chunks (all tiers)."""
        keys = [self.key_of(c) for c in request.chunk_ids(self.settings.chunk_size)]
        result = self.result
        result.requests += 1
        result.input_tokens += request.input_length
        l1_hit = 0
        while l1_hit < len(keys) and keys[l1_hit] in self.resident:
            l1_hit += 1
        if l1_hit:
            self.policy.on_accessed(keys[:l1_hit])
        hit = l1_hit
        if self.l2 is not None and hit < len(keys):
            hit = self._prefetch(keys, l1_hit)
        chunk = self.settings.chunk_size
        result.l1_hit_tokens += l1_hit * chunk
        result.l2_hit_tokens += (hit - l1_hit) * chunk
        result.per_request_hits.append(hit)
        if hit:
            self.policy.on_accessed(keys[:hit])  # the retrieve's lock_for_read
        self._store(keys[hit:])
        if hit:
            self.policy.on_accessed(keys[:hit])  # end_session's touch
        self._watermark_round()
        return hit

    # -- the modelled L1 -------------------------------------------------------------

    def _candidates(self, protected: set[ObjectKey]) -> Generator[ObjectKey, None, None]:
        """The policy's order, skipping keys we do not hold (dropped from it afterwards)."""
        stale: list[ObjectKey] = []
        try:
            for key in self.policy.candidates():
                if key not in self.resident:
                    stale.append(key)
                elif key not in protected:
                    yield key
        finally:
            if stale:
                self.policy.on_removed(stale)

    def _evict(self, victims: list[ObjectKey]) -> None:
        for key in victims:
            self.resident.discard(key)
        if victims:
            self.policy.on_removed(victims)
            self.result.evicted_chunks += len(victims)

    def _place(self, fresh: list[ObjectKey], protected: set[ObjectKey]) -> bool:
        """Room for ``fresh``: evict just enough in policy order; False (nothing evicted) if not."""
        need = len(self.resident) + len(fresh) - self.slots
        if len(fresh) > self.slots:
            return False
        if need > 0:
            victims: list[ObjectKey] = []
            candidates = self._candidates(protected)
            for key in candidates:
                victims.append(key)
                if len(victims) == need:
                    break
            candidates.close()
            if len(victims) < need:
                return False
            self._evict(victims)
        self.resident.update(fresh)
        return True

    def _store(self, missed: list[ObjectKey]) -> None:
        seen: set[ObjectKey] = set()
        fresh = []
        for key in missed:
            if key not in self.resident and key not in seen:
                seen.add(key)
                fresh.append(key)
        if not fresh or not self._place(fresh, set()):
            return  # the server refuses the whole batch (L1FullError): nothing stored
        self.policy.on_stored(fresh)
        self.result.stored_chunks += len(fresh)
        if self.l2 is not None:
            self._store_l2(fresh)

    def _store_l2(self, fresh: list[ObjectKey]) -> None:
        assert self.l2 is not None
        threshold = self.settings.l2_admit_after
        admitted = []
        for key in fresh:
            if threshold <= 1:
                admitted.append(key)
                continue
            count = self._store_counts.get(key, 0) + 1
            self._store_counts[key] = count
            if count >= threshold:
                admitted.append(key)
        self.result.l2_stored_chunks += self.l2.store(admitted)

    def _prefetch(self, keys: list[ObjectKey], l1_hit: int) -> int:
        """Load the L2 prefix beyond the L1 hit into L1; returns the total hit."""
        assert self.l2 is not None
        end = l1_hit
        while end < len(keys) and keys[end] in self.l2:
            end += 1
        loaded = keys[l1_hit:end]
        if not loaded:
            return l1_hit
        # The L1 hit is read-locked while the L2 prefix is loaded next to it.
        if not self._place(loaded, set(keys[:l1_hit])):
            return l1_hit
        self.l2.touch(loaded)
        self.policy.on_stored(loaded)
        return end

    def _watermark_round(self) -> None:
        settings = self.settings
        used = len(self.resident) * self.slot_bytes
        if used <= settings.trigger_watermark * settings.capacity_bytes:
            return
        target = settings.eviction_ratio * settings.capacity_bytes
        if target <= 0:
            return
        self.result.watermark_rounds += 1
        victims: list[ObjectKey] = []
        freed = 0
        candidates = self._candidates(set())
        for key in candidates:
            victims.append(key)
            freed += self.slot_bytes
            if freed >= target:
                break
        candidates.close()
        self._evict(victims)


def _default_key(chunk_id: int) -> ObjectKey:
    return ObjectKey(chunk_id.to_bytes(8, "little"), "trace", 0)
