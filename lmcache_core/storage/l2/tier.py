"""The L2 tier: the cascade of adapters behind L1, its store and prefetch controllers.

* Store: after a store commits to L1, :meth:`L2Tier.submit_store` queues the keys;
  the store controller thread read-locks them in L1, writes them to the policy's
  adapters and, for a buffer-mode policy, drops them from L1 once every target
  holds them. The queue is bounded: when it is full the keys stay L1-only and are
  counted, never blocking a worker.
* Prefetch: :meth:`L2Tier.prefetch` finds the longest run of chunks every rank of
  which some adapter holds, reserves L1 for them, loads them, and commits them
  read-locked (temporary or kept, per the prefetch policy). Every adapter call is
  bounded by ``timeout_s``: a slow or hung adapter counts as a miss.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from lmcache_core.background import BackgroundLoop, WorkQueue
from lmcache_core.lifecycle import Health
from lmcache_core.observability.events import (
    L2KeysEvicted,
    L2LoadCompleted,
    L2PrefetchFailed,
    L2StoreCompleted,
    L2StoreSubmitted,
    count_per_salt,
)
from lmcache_core.storage.errors import L1FullError, ReservationExpired
from lmcache_core.storage.eviction import (
    EvictionPolicy,
    IsolatedEvictionPolicy,
    quota_eviction_targets,
)
from lmcache_core.storage.keys import ObjectKey, prefix_chunks
from lmcache_core.storage.l1 import L1Manager, Reservation
from lmcache_core.storage.l2.adapter import L2AdapterV1
from lmcache_core.storage.l2.policies import AdmittingStorePolicy, PrefetchPolicy, StorePolicy

if TYPE_CHECKING:
    from lmcache_core.observability.bus import EventBus

logger = logging.getLogger("lmcache.l2")

STORE_QUEUE_DEPTH = 1024
DEFAULT_TIMEOUT_S = 5.0
EVICTION_INTERVAL_S = 1.0
"""Period of the eviction cycle of adapters with an ``eviction`` block (besides each store)."""


@dataclass
class L2Stats:
    """Counters for ``/status``."""

    store_batches: int = 0
    stored_keys: int = 0
    store_failures: int = 0
    store_dropped: int = 0
    prefetched_chunks: int = 0
    prefetch_failures: int = 0
    not_admitted: int = 0
    adapter_timeouts: int = 0
    evicted_keys: int = 0


def _bytes_of(tensor: Any) -> memoryview:
    """A writable byte view of a uint8 L1 tensor (zero copy)."""
    return memoryview(tensor.numpy())


def _results(future: Future[list[bool]], count: int, timeout: float, stats: L2Stats) -> list[bool]:
    try:
        result = future.result(timeout=timeout)
    except FutureTimeout:
        stats.adapter_timeouts += 1
        return [False] * count
    except Exception:  # an adapter failure is a miss, logged
        logger.warning("L2 adapter call failed", exc_info=True)
        return [False] * count
    return result if len(result) == count else [False] * count


class PrefetchResult(NamedTuple):
    """What :meth:`L2Tier.prefetch` brought into L1.

    Attributes:
        chunks: Leading chunks now in L1 and read-locked.
        keys_by_adapter: Per adapter (cascade order), how many objects of those
            chunks it supplied (empty when nothing was loaded). Objects another
            writer put into L1 meanwhile count for no adapter.
    """

    chunks: int
    keys_by_adapter: tuple[int, ...]


@dataclass
class AdapterEviction:
    """One adapter's ``eviction`` block: its policy and when and how much it evicts."""

    policy: EvictionPolicy
    trigger_watermark: float
    eviction_ratio: float
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """The policy contract allows one caller at a time; the store thread and the
    prefetch threads both reach this policy, so every call goes through here."""

    def stored(self, keys: Sequence[ObjectKey]) -> None:
        """Keys the adapter now holds (prefix order)."""
        with self.lock:
            self.policy.on_stored(keys)

    def accessed(self, keys: Sequence[ObjectKey]) -> None:
        """Keys loaded from the adapter (a hit keeps them longer)."""
        with self.lock:
            self.policy.on_accessed(keys)

    def enforce(self, adapter: L2AdapterV1) -> int:
        """Quotas first (isolated policies), then the capacity watermark.

        Above the watermark, delete ``eviction_ratio`` of the capacity in policy
        order. Pinned keys (being loaded) are skipped by the adapter. Returns
        keys deleted.
        """
        with self.lock:
            return self._enforce(adapter)

    def _enforce(self, adapter: L2AdapterV1) -> int:
        quota_deleted = self._enforce_quotas(adapter)
        usage = adapter.usage()
        capacity = usage.capacity_bytes
        if not capacity or usage.used_bytes <= self.trigger_watermark * capacity:
            return quota_deleted
        target = usage.used_bytes - max(self.eviction_ratio * capacity, 1)
        deleted: list[ObjectKey] = []
        for key in self.policy.candidates():
            if adapter.used_bytes <= target:
                break
            if adapter.delete([key]):
                deleted.append(key)
        self.policy.on_removed(deleted)
        return quota_deleted + len(deleted)

    def _enforce_quotas(self, adapter: L2AdapterV1) -> int:
        """Per-salt quota eviction of an isolated policy (even without a capacity)."""
        policy = self.policy
        if not isinstance(policy, IsolatedEvictionPolicy):
            return 0
        targets = quota_eviction_targets(
            policy, adapter.usage().by_salt, self.trigger_watermark, self.eviction_ratio
        )
        deleted: list[ObjectKey] = []
        for salt, target in targets.items():
            freed = 0
            for key in policy.salt_candidates(salt):
                if freed >= target:
                    break
                if key.cache_salt != salt:
                    continue  # a policy's mistake must not cost another salt its data
                before = adapter.used_bytes
                if adapter.delete([key]):
                    deleted.append(key)
                    # Only this thread stores or deletes, so the drop is this key's size.
                    freed += max(before - adapter.used_bytes, 1)
        policy.on_removed(deleted)
        return len(deleted)


class L2Tier:
    """The adapters (cascade order) with their store and prefetch controllers.

    Args:
        adapters: Started adapters, in ``--l2-adapter`` order.
        l1: The L1 tier they serve.
        store_policy: From ``--l2-store-policy``.
        prefetch_policy: From ``--l2-prefetch-policy``.
        max_in_flight: ``--l2-prefetch-max-in-flight``: concurrent prefetches.
        timeout_s: Bound on every adapter call made for a lookup or a store.
        evictions: Per adapter, its ``eviction`` block's policy and settings (None: the
            adapter has none, and a store that does not fit simply fails).
    """

    name = "l2"

    def __init__(
        self,
        adapters: Sequence[L2AdapterV1],
        l1: L1Manager,
        store_policy: StorePolicy,
        prefetch_policy: PrefetchPolicy,
        *,
        max_in_flight: int,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        evictions: Sequence[AdapterEviction | None] = (),
    ) -> None:
        self.adapters = list(adapters)
        for adapter in self.adapters:
            # A failed load's L1 reservation is aborted, never read: loads may go
            # straight into it (no temporary buffer, no copy).
            adapter.buffers_are_scratch = True
        self.evictions = list(evictions) or [None] * len(self.adapters)
        self.l1 = l1
        self.store_policy = store_policy
        self.prefetch_policy = prefetch_policy
        self.timeout_s = timeout_s
        self.stats = L2Stats()
        self._in_flight = threading.BoundedSemaphore(max_in_flight)
        self._prefetching = 0
        self._prefetch_count_lock = threading.Lock()
        self._queue: WorkQueue[tuple[list[ObjectKey], int]] = WorkQueue(STORE_QUEUE_DEPTH)
        self._last_cycle = time.monotonic()
        # Waits for store batches; with none, wakes every eviction interval anyway.
        self._store_controller = BackgroundLoop(
            "L2 store",
            self._store_tick,
            interval_s=EVICTION_INTERVAL_S,
            thread_name="lmcache-l2-store",
            trigger=self._queue,
            error_log_interval_s=1.0,
            log=logger,
        )
        self.events: EventBus | None = None
        """Where L2 store, load and eviction results are published (set by the server)."""

    # -- component ---------------------------------------------------------------------

    def start(self) -> None:
        """Seed the eviction policies with what the adapters hold; start the store controller."""
        for adapter, eviction in zip(self.adapters, self.evictions, strict=True):
            if eviction is not None:
                eviction.stored(adapter.keys())
        self._last_cycle = time.monotonic()
        self._store_controller.start()

    def stop(self, timeout: float) -> None:
        """Finish queued stores (bounded), then close every adapter."""
        if not self._store_controller.stop(timeout):
            logger.warning("L2 store queue did not drain before shutdown")
        for adapter in self.adapters:
            try:
                adapter.close()
            except Exception:
                logger.exception("closing L2 adapter %s failed", adapter.name)

    def health(self) -> Health:
        """Healthy while the store controller runs and every adapter says so."""
        sick = [a.name for a in self.adapters if not a.status().get("is_healthy", False)]
        detail = f"{len(self.adapters)} adapters" + (f"; unhealthy: {sick}" if sick else "")
        health = self._store_controller.health(detail, stopped="store controller stopped")
        return Health(health.ok and not sick, health.detail)

    def store_queue_depth(self) -> int:
        """Store batches waiting for the store controller (a metrics gauge)."""
        return self._queue.qsize()

    def prefetches_in_flight(self) -> int:
        """Prefetches asking or loading from the adapters now (at most ``max_in_flight``)."""
        return self._prefetching

    def status(self) -> dict[str, Any]:
        """Counters and each adapter's status."""
        return {"stats": vars(self.stats), "adapters": [a.status() for a in self.adapters]}

    # -- store ----------------------------------------------------------------------------

    def submit_store(self, keys: list[ObjectKey], nbytes: int) -> None:
        """Queue keys just committed to L1 for the L2 store (never blocks)."""
        if not keys:
            return
        if not self._queue.put_nowait((keys, nbytes)):
            self.stats.store_dropped += len(keys)

    def _store_tick(self) -> None:
        """One batch from the queue (if any), then the eviction cycle when it is due."""
        item = self._queue.get_nowait()
        try:
            if item is not None:
                self.store_now(*item)
        finally:
            # Quotas change at run time: eviction also runs without stores.
            if time.monotonic() - self._last_cycle >= EVICTION_INTERVAL_S:
                self._last_cycle = time.monotonic()
                self.evict_cycle()

    def evict_cycle(self) -> int:
        """One eviction cycle of every adapter with an ``eviction`` block; returns keys deleted.

        Runs on the store controller's thread (which is the only one storing to
        or deleting from the adapters); an adapter's failure is logged and the
        others still run.
        """
        total = 0
        for index, eviction in enumerate(self.evictions):
            if eviction is None:
                continue
            try:
                total += self._enforce_eviction(index, eviction)
            except Exception:
                logger.exception("L2 eviction of adapter #%d failed", index + 1)
        return total

    def _enforce_eviction(self, index: int, eviction: AdapterEviction) -> int:
        """Enforce one adapter's eviction block, count and publish it; returns keys deleted."""
        adapter = self.adapters[index]
        evicted = eviction.enforce(adapter)
        self.stats.evicted_keys += evicted
        if evicted and self.events is not None and self.events.has_subscribers(L2KeysEvicted.type):
            self.events.publish(
                L2KeysEvicted(l2_name=adapter.name, adapter_index=index, key_count=evicted)
            )
        return evicted

    def store_now(self, keys: list[ObjectKey], nbytes: int) -> list[bool]:
        """Write ``keys`` from L1 to the policy's adapters; per key, stored everywhere."""
        wanted = keys
        if isinstance(self.store_policy, AdmittingStorePolicy):
            flags = self.store_policy.admit(keys)
            wanted = [k for k, ok in zip(keys, flags, strict=True) if ok]
            self.stats.not_admitted += len(keys) - len(wanted)
        # Pinned, not locked for read: copying to L2 is no use of the object, and
        # must not reorder the L1 eviction policy behind the engine's back.
        present = self.l1.pin(wanted)
        held = [k for k, ok in zip(wanted, present, strict=True) if ok]
        started = time.monotonic()
        try:
            views = [_bytes_of(self.l1.read_view(k)) for k in held]
            stored = {k: True for k in held}
            targets = list(self.store_policy.targets(len(self.adapters)))
            futures = [
                (self.adapters[i], self.adapters[i].submit_store(held, views)) for i in targets
            ]
            if (
                self.events is not None
                and held
                and self.events.has_subscribers(L2StoreSubmitted.type)
            ):
                per_salt = count_per_salt(held)
                for index in targets:
                    self.events.publish(
                        L2StoreSubmitted(
                            l2_name=self.adapters[index].name,
                            adapter_index=index,
                            key_count=len(held),
                            total_bytes=len(held) * nbytes,
                            key_count_per_salt=per_salt,
                        )
                    )
            for index, (_adapter, future) in zip(targets, futures, strict=True):
                results = _results(future, len(held), self.timeout_s, self.stats)
                self._publish_transfer(L2StoreCompleted, index, results, nbytes, started)
                for key, ok in zip(held, results, strict=True):
                    stored[key] = stored[key] and ok
                eviction = self.evictions[index]
                if eviction is not None:
                    eviction.stored([k for k, ok in zip(held, results, strict=True) if ok])
                    self._enforce_eviction(index, eviction)
        finally:
            self.l1.unlock(held, 1)
        self.stats.store_batches += 1
        done = [k for k, ok in stored.items() if ok and targets]
        self.stats.stored_keys += len(done)
        self.stats.store_failures += len(held) - len(done)
        if not self.store_policy.keep_in_l1 and done:
            self.l1.delete(done)
        return [stored.get(k, False) for k in keys]

    def _publish_transfer(
        self,
        record: type[L2StoreCompleted | L2LoadCompleted],
        index: int,
        results: list[bool],
        nbytes: int,
        started: float,
    ) -> None:
        """One adapter's store or load result, with its duration since submit."""
        if self.events is None or not self.events.has_subscribers(record.type):
            return
        succeeded = sum(results)
        name, failed = self.adapters[index].name, len(results) - succeeded
        duration = time.monotonic() - started
        # One constructor per record (their count fields differ), so mypy checks both.
        event: L2StoreCompleted | L2LoadCompleted
        if record is L2StoreCompleted:
            event = L2StoreCompleted(
                l2_name=name,
                adapter_index=index,
                succeeded_count=succeeded,
                failed_count=failed,
                bytes_transferred=succeeded * nbytes,
                duration_s=duration,
            )
        else:
            event = L2LoadCompleted(
                l2_name=name,
                adapter_index=index,
                loaded_count=succeeded,
                failed_count=failed,
                bytes_transferred=succeeded * nbytes,
                duration_s=duration,
            )
        self.events.publish(event)

    # -- prefetch ---------------------------------------------------------------------------

    def prefetch(
        self, chunks: Sequence[Sequence[ObjectKey]], nbytes: int, readers: int
    ) -> PrefetchResult:
        """Load the longest prefix of ``chunks`` (each: its keys for every rank) into L1.

        Every chunk lists the same number of ranks (at least one).

        The loaded objects are committed with ``readers`` read locks each.

        Returns:
            How many leading chunks are now in L1 and locked, and which adapter
            each of their objects came from.
        """
        if not chunks or not self.adapters:
            return PrefetchResult(0, ())
        flat = [k for chunk in chunks for k in chunk]
        with self._in_flight, self._counted_prefetch():
            found = [
                _results(a.submit_lookup_and_lock(flat), len(flat), self.timeout_s, self.stats)
                for a in self.adapters
            ]
            try:
                return self._load_prefix(chunks, flat, found, nbytes, readers)
            finally:
                for adapter, hits in zip(self.adapters, found, strict=True):
                    adapter.unlock([k for k, hit in zip(flat, hits, strict=True) if hit])

    @contextmanager
    def _counted_prefetch(self) -> Iterator[None]:
        with self._prefetch_count_lock:
            self._prefetching += 1
        try:
            yield
        finally:
            with self._prefetch_count_lock:
                self._prefetching -= 1

    def _abort_unkept(
        self,
        staged: dict[ObjectKey, Reservation],
        keep: set[ObjectKey],
        late: list[tuple[Future[list[bool]], list[ObjectKey]]],
    ) -> None:
        """Abort the reservations not kept; those of late loads once the load finished."""
        still_written = {k for _, keys in late for k in keys}
        self.l1.abort([r for k, r in staged.items() if k not in keep and k not in still_written])
        for future, keys in late:
            # A load that timed out may still write into its reservations: they are freed
            # (and their memory reused) only once it finished, never under its writes.
            future.add_done_callback(self._aborter([staged[k] for k in keys]))

    def _aborter(self, reservations: list[Reservation]) -> Callable[[Future[list[bool]]], None]:
        def abort(_: Future[list[bool]]) -> None:
            self.l1.abort(reservations)

        return abort

    def _load_prefix(
        self,
        chunks: Sequence[Sequence[ObjectKey]],
        flat: list[ObjectKey],
        found: list[list[bool]],
        nbytes: int,
        readers: int,
    ) -> PrefetchResult:
        nothing = PrefetchResult(0, ())
        holders = {
            key: [i for i in range(len(self.adapters)) if found[i][pos]]
            for pos, key in enumerate(flat)
        }
        count = prefix_chunks([bool(holders[k]) for k in flat], len(chunks[0]))
        if not count:
            return nothing
        wanted = [k for chunk in chunks[:count] for k in chunk]
        try:
            reservations = self.l1.reserve(wanted, nbytes)
        except L1FullError:
            self.stats.prefetch_failures += count
            if self.events is not None and self.events.has_subscribers(L2PrefetchFailed.type):
                self.events.publish(L2PrefetchFailed(reason="l1_oom", key_count=len(wanted)))
            return nothing
        staged = {r.key: r for r in reservations if r is not None}
        by_adapter: dict[int, list[ObjectKey]] = {}
        for key in staged:
            by_adapter.setdefault(self.prefetch_policy.choose(holders[key]), []).append(key)
        loaded: dict[ObjectKey, bool] = {}
        started = time.monotonic()
        futures = [
            (
                keys,
                self.adapters[i].submit_load(
                    keys, [_bytes_of(self.l1.buffer(staged[k])) for k in keys]
                ),
            )
            for i, keys in by_adapter.items()
        ]
        late: list[tuple[Future[list[bool]], list[ObjectKey]]] = []
        for index, (keys, future) in zip(by_adapter, futures, strict=True):
            results = _results(future, len(keys), self.timeout_s, self.stats)
            if not future.done():
                late.append((future, keys))  # timed out: still writing into its buffers
            self._publish_transfer(L2LoadCompleted, index, results, nbytes, started)
            loaded.update(zip(keys, results, strict=True))
            eviction = self.evictions[index]
            if eviction is not None:  # a hit keeps the key in the adapter's LRU
                eviction.accessed([k for k, ok in zip(keys, results, strict=True) if ok])
        good = 0  # chunks, in order, whose every key is in L1 now
        for chunk in chunks[:count]:
            if not all(loaded.get(k, k not in staged) for k in chunk):
                break
            good += 1
        keep = {k for chunk in chunks[:good] for k in chunk}
        commit = [staged[k] for k in wanted if k in staged and k in keep]
        self._abort_unkept(staged, keep, late)
        try:
            self.l1.commit(commit, readers=readers, temporary=self.prefetch_policy.temporary)
        except ReservationExpired:
            self.stats.prefetch_failures += good
            return nothing
        # Keys already in L1 (someone else stored them meanwhile) need their locks too.
        already = [k for k in keep if k not in staged]
        if already and not all(self.l1.lock_for_read(already, readers)):
            self.l1.unlock([r.key for r in commit], readers)  # another writer still holds one
            self.stats.prefetch_failures += good
            return nothing
        self.stats.prefetched_chunks += good
        self.stats.prefetch_failures += count - good
        sources = {index: sum(1 for k in keys if k in keep) for index, keys in by_adapter.items()}
        return PrefetchResult(good, tuple(sources.get(i, 0) for i in range(len(self.adapters))))
