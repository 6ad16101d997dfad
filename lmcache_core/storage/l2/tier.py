"""The L2 tier: the cascade of adapters behind L1, its store and prefetch controllers.

* Store: after a store commits to L1, :meth:`L2Tier.submit_store` queues the keys;
  the store controller thread read-locks them in L1, writes them to the policy's
  adapters and, for a buffer-mode policy, drops them from L1 once every target
  holds them. The queue is bounded: when it is full the keys stay L1-only and are
  counted, never blocking a worker.
* Prefetch: :meth:`L2Tier.prefetch` finds the longest run of chunks every rank of
  which some adapter holds, reserves L1 for them, loads them, and commits them
  read-locked (temporary or kept, per the prefetch policy). Every adapter call is
  bounded by ``timeout_s``: a slow or hung adapter counts as a miss. With
  :attr:`Retention.SEGMENTED` it also keeps the chunks past a gap (a lookup miss
  or a failed load), read-locked, for an engine that reuses them in place
  (the blend engine's segmented prefix, ``docs/segmented-prefix.md``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
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
from lmcache_core.observability.miss_causes import MissCause
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
from lmcache_core.storage.namespace_index import NamespaceIndex
from lmcache_core.storage.removal_history import RemovalHistory

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
    prefetch_deadline_misses: int = 0
    """Prefetches that found no in-flight slot before their request's deadline."""
    evicted_keys: int = 0


def _bytes_of(tensor: Any) -> memoryview:
    """A writable byte view of a uint8 L1 tensor (zero copy)."""
    return memoryview(tensor.numpy())


def _left(deadline: float) -> float | None:
    """Seconds until ``deadline`` (``time.monotonic()``), at least 0; None (no bound) for inf."""
    return None if deadline == math.inf else max(0.0, deadline - time.monotonic())


def _answer(
    future: Future[list[bool]], count: int, timeout: float, stats: L2Stats
) -> tuple[list[bool] | None, MissCause | None]:
    """The adapter's answer and what went wrong with the call as a whole.

    The answer is None when it did not come within ``timeout`` (cause ``l2_timeout``);
    all False with cause ``l2_load_failed`` when the adapter raised or answered
    nonsense; the cause is None when it answered.
    """
    try:
        result = future.result(timeout=timeout)
    except FutureTimeout:
        stats.adapter_timeouts += 1
        return None, MissCause.L2_TIMEOUT
    except Exception:  # an adapter failure is a miss, logged
        logger.warning("L2 adapter call failed", exc_info=True)
        return [False] * count, MissCause.L2_LOAD_FAILED
    if len(result) != count:
        return [False] * count, MissCause.L2_LOAD_FAILED
    return result, None


def _outcome(
    future: Future[list[bool]], count: int, timeout: float, stats: L2Stats
) -> tuple[list[bool], MissCause | None]:
    """Per key, whether the call succeeded (all False when it timed out), and the cause."""
    answer, cause = _answer(future, count, timeout, stats)
    return ([False] * count if answer is None else answer), cause


def _results(future: Future[list[bool]], count: int, timeout: float, stats: L2Stats) -> list[bool]:
    return _outcome(future, count, timeout, stats)[0]


def _unlock_when_done(
    adapter: L2AdapterV1, keys: list[ObjectKey]
) -> Callable[[Future[list[bool]]], None]:
    """A done-callback releasing the pins a lookup that answered too late took."""

    def unlock(future: Future[list[bool]]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        found = future.result()
        adapter.unlock([k for k, hit in zip(keys, found, strict=False) if hit])

    return unlock


class Retention(Enum):
    """Which loaded chunks :meth:`L2Tier.prefetch` keeps in L1 (read-locked).

    Attributes:
        PREFIX: Only the leading run: a chunk is worthless past a gap, so the
            chunks after the first one missing in L2 are not loaded, and those
            after the first failed load are loaded but dropped (the default).
        SEGMENTED: Every chunk whose every rank loaded (or was already in L1),
            gaps and all: an engine that reuses a chunk at its own position
            (the blend engine's ``--enable-segmented-prefix``) recomputes only
            the gap. The hit count stays the leading run.
    """

    PREFIX = "prefix"
    SEGMENTED = "segmented"


class PrefetchResult(NamedTuple):
    """What :meth:`L2Tier.prefetch` brought into L1.

    Attributes:
        chunks: Leading chunks now in L1 and read-locked (the hit count, also
            with :attr:`Retention.SEGMENTED`).
        keys_by_adapter: Per adapter (cascade order), how many objects of the
            retained chunks it supplied (empty when nothing was loaded). Objects
            another writer put into L1 meanwhile count for no adapter.
        misses: Per chunk asked for, None if it is among ``chunks``, else why it
            is not when L2 knows (a failed, timed-out or corrupt load, no room in
            L1, a gap before it: also a chunk retained past a gap), or ``None``
            too when no adapter holds it (the caller's history decides). Empty:
            nothing is known.
        found: Per chunk asked for, whether every one of its ranks is now in L1
            and read-locked by this prefetch (``readers`` locks each), which the
            caller must release; empty when nothing was retained. With
            ``PREFIX`` it is the leading run only; with ``SEGMENTED`` it may be
            gapped (``True, True, False, True``).
    """

    chunks: int
    keys_by_adapter: tuple[int, ...]
    misses: tuple[MissCause | None, ...] = ()
    found: tuple[bool, ...] = ()

    @property
    def post_gap(self) -> tuple[int, ...]:
        """Indices of the retained chunks past the leading run (``SEGMENTED`` only)."""
        return tuple(i for i in range(self.chunks, len(self.found)) if self.found[i])

    def retained_keys(self, chunks: Sequence[Sequence[ObjectKey]]) -> list[ObjectKey]:
        """The keys of every retained chunk of ``chunks`` (the prefetch's argument)."""
        return [
            key for chunk, kept in zip(chunks, self.found, strict=False) if kept for key in chunk
        ]


Removed = Callable[[list[ObjectKey], str], None]
"""``removed(keys, reason)``: keys an adapter's eviction deleted, and why."""


def _ignore(_keys: list[ObjectKey], _reason: str) -> None:
    """The default :data:`Removed`: nobody keeps a history."""


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

    def enforce(self, adapter: L2AdapterV1, removed: Removed | None = None) -> int:
        """Quotas first (isolated policies), then the capacity watermark.

        Above the watermark, delete ``eviction_ratio`` of the capacity in policy
        order. Pinned keys (being loaded) are skipped by the adapter. Returns
        keys deleted; ``removed(keys, reason)`` hears them (reason ``quota`` or
        ``eviction``).
        """
        return len(self.enforce_keys(adapter, removed))

    def enforce_keys(self, adapter: L2AdapterV1, removed: Removed | None = None) -> list[ObjectKey]:
        """:meth:`enforce`, returning the keys deleted (the KV event stream reports them)."""
        with self.lock:
            return self._enforce(adapter, removed or _ignore)

    def _enforce(self, adapter: L2AdapterV1, removed: Removed) -> list[ObjectKey]:
        quota_deleted = self._enforce_quotas(adapter, removed)
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
        removed(deleted, "eviction")
        return quota_deleted + deleted

    def _enforce_quotas(self, adapter: L2AdapterV1, removed: Removed) -> list[ObjectKey]:
        """Per-salt quota eviction of an isolated policy (even without a capacity)."""
        policy = self.policy
        if not isinstance(policy, IsolatedEvictionPolicy):
            return []
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
        removed(deleted, "quota")
        return deleted


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
        self.removals: RemovalHistory | None = None
        """Where L2 evictions are remembered, for miss explanations (set by the server);
        adapter ``i`` is tier ``i + 1``."""
        self.namespaces: NamespaceIndex | None = None
        """Seeded with what the adapters hold at start (those with an eviction block)."""

    # -- component ---------------------------------------------------------------------

    def start(self) -> None:
        """Seed the eviction policies with what the adapters hold; start the store controller."""
        for adapter, eviction in zip(self.adapters, self.evictions, strict=True):
            if eviction is not None:
                held = adapter.keys()
                eviction.stored(held)
                if self.namespaces is not None:
                    self.namespaces.add(held)
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
        removals = self.removals
        deleted = eviction.enforce_keys(
            adapter,
            None
            if removals is None
            else lambda keys, reason: removals.record(keys, index + 1, reason, time.time()),
        )
        evicted = len(deleted)
        self.stats.evicted_keys += evicted
        if evicted and self.events is not None and self.events.has_subscribers(L2KeysEvicted.type):
            self.events.publish(
                L2KeysEvicted(
                    l2_name=adapter.name,
                    adapter_index=index,
                    key_count=evicted,
                    keys=tuple(deleted),
                )
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
                self._publish_transfer(L2StoreCompleted, index, results, nbytes, started, held)
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
        keys: Sequence[ObjectKey] = (),
    ) -> None:
        """One adapter's store or load result, with its duration since submit.

        A store's record lists the keys stored (``keys`` are the batch's, in
        ``results`` order).
        """
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
                keys=tuple(k for k, ok in zip(keys, results, strict=False) if ok),
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
        self,
        chunks: Sequence[Sequence[ObjectKey]],
        nbytes: int,
        readers: int,
        deadline: float = math.inf,
        *,
        retention: Retention = Retention.PREFIX,
    ) -> PrefetchResult:
        """Load the longest prefix of ``chunks`` (each: its keys for every rank) into L1.

        Every chunk lists the same number of ranks (at least one).

        The loaded objects are committed with ``readers`` read locks each. With
        ``retention=Retention.SEGMENTED`` every chunk found for every rank (in
        an adapter, or already in L1) is loaded, and each one whose every rank
        loaded is kept and locked too, past any gap; :attr:`PrefetchResult.found`
        says which. Either way the caller owns the locks of the retained chunks
        (:meth:`PrefetchResult.retained_keys`, ``readers`` each) and releases
        them with :meth:`L1Manager.unlock`, or they expire after the read TTL.

        Args:
            chunks: The keys of each chunk, for every rank.
            nbytes: Bytes of one object.
            readers: Read locks each loaded object is committed with.
            deadline: ``time.monotonic()`` at which every wait of this prefetch
                ends (the lookup's request deadline): the in-flight slot, each
                adapter's lookup and each load; what has not answered by then is a
                miss. Each adapter call is also bounded by ``timeout_s``.
            retention: Which loaded chunks to keep: the leading run, or
                (segmented) every one, past any gap.

        Returns:
            How many leading chunks are now in L1 and locked, which adapter
            each of their objects came from, and which chunks were retained.
        """
        if not chunks or not self.adapters:
            return PrefetchResult(0, ())
        if not self._in_flight.acquire(timeout=_left(deadline)):
            self.stats.prefetch_deadline_misses += 1
            return PrefetchResult(0, (), (MissCause.L2_TIMEOUT,) * len(chunks))
        flat = [k for chunk in chunks for k in chunk]
        try:
            with self._counted_prefetch():
                # Submitted together, so the adapters look up in parallel within the budget.
                futures = [a.submit_lookup_and_lock(flat) for a in self.adapters]
                answered_by = self._lookups_end(deadline)
                answers = [
                    _answer(f, len(flat), max(0.0, answered_by - time.monotonic()), self.stats)
                    for f in futures
                ]
                found = [[False] * len(flat) if a is None else a for a, _ in answers]
                # A key no adapter reports may still be in one that could not answer.
                trouble = next((cause for _, cause in answers if cause is not None), None)
                try:
                    return self._load_prefix(
                        chunks, flat, found, nbytes, readers, deadline, trouble, retention
                    )
                finally:
                    for adapter, future, (answer, _) in zip(
                        self.adapters, futures, answers, strict=True
                    ):
                        if answer is not None:
                            adapter.unlock([k for k, hit in zip(flat, answer, strict=True) if hit])
                        else:  # it may still pin what it finds: release that when it answers
                            future.add_done_callback(_unlock_when_done(adapter, flat))
        finally:
            self._in_flight.release()

    def _lookups_end(self, deadline: float) -> float:
        """When the adapters' lookups stop being waited for: half of what is left, at most.

        A slow adapter must not spend the whole budget: the hits of the adapters
        that answered in time still need the other half to load.
        """
        now = time.monotonic()
        return now + min(self.timeout_s, max(0.0, (deadline - now) / 2))

    def _call_timeout(self, deadline: float) -> float:
        """How long the next adapter call may take: ``timeout_s``, cut at the deadline."""
        return max(0.0, min(self.timeout_s, deadline - time.monotonic()))

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

    def _load_failures(
        self,
        chunks: Sequence[Sequence[ObjectKey]],
        positions: Sequence[int],
        loaded: dict[ObjectKey, bool],
        by_adapter: dict[int, list[ObjectKey]],
        trouble: dict[int, MissCause | None],
    ) -> dict[int, MissCause]:
        """Why each chunk of ``chunks`` at ``positions`` with a failed load failed.

        By the first failed key of the chunk: its adapter's call timed out or
        failed as a whole, else the adapter says whether the object was corrupt.
        Keys not loaded here (another writer put them in L1) count as loaded; a
        key found only in L1 that left it before its reservation (segmented
        retention) was evicted.
        """
        chooser = {k: i for i, keys in by_adapter.items() for k in keys}
        failures: dict[int, MissCause] = {}
        for position in positions:
            failed = [k for k in chunks[position] if not loaded.get(k, k not in chooser)]
            if not failed:
                continue
            index = chooser.get(failed[0])
            if index is None:
                failures[position] = MissCause.EVICTED
                continue
            failures[position] = trouble[index] or (
                MissCause.L2_CORRUPT
                if self.adapters[index].was_corrupt(failed[0])
                else MissCause.L2_LOAD_FAILED
            )
        return failures

    def _load_staged(
        self,
        staged: dict[ObjectKey, Reservation],
        holders: dict[ObjectKey, list[int]],
        nbytes: int,
        deadline: float,
    ) -> tuple[
        dict[ObjectKey, bool],
        dict[int, list[ObjectKey]],
        list[tuple[Future[list[bool]], list[ObjectKey]]],
        dict[int, MissCause | None],
    ]:
        """Load the reserved keys, each from one adapter that holds it, within the deadline.

        Returns:
            Per key whether it loaded, the keys each adapter was asked for, the
            loads still running past their wait (writing into their buffers), and
            per adapter what went wrong with its call as a whole.
        """
        by_adapter: dict[int, list[ObjectKey]] = {}
        loaded: dict[ObjectKey, bool] = {}
        for key in staged:
            if holders[key]:
                by_adapter.setdefault(self.prefetch_policy.choose(holders[key]), []).append(key)
            else:  # segmented: it was in L1 only, and left it before the reservation
                loaded[key] = False
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
        load_trouble: dict[int, MissCause | None] = {}
        for index, (keys, future) in zip(by_adapter, futures, strict=True):
            results, load_trouble[index] = _outcome(
                future, len(keys), self._call_timeout(deadline), self.stats
            )
            if not future.done():
                late.append((future, keys))  # timed out: still writing into its buffers
            self._publish_transfer(L2LoadCompleted, index, results, nbytes, started)
            loaded.update(zip(keys, results, strict=True))
            eviction = self.evictions[index]
            if eviction is not None:  # a hit keeps the key in the adapter's LRU
                eviction.accessed([k for k, ok in zip(keys, results, strict=True) if ok])
        return loaded, by_adapter, late, load_trouble

    def _load_prefix(
        self,
        chunks: Sequence[Sequence[ObjectKey]],
        flat: list[ObjectKey],
        found: list[list[bool]],
        nbytes: int,
        readers: int,
        deadline: float,
        trouble: MissCause | None,
        retention: Retention,
    ) -> PrefetchResult:
        holders = {
            key: [i for i in range(len(self.adapters)) if found[i][pos]]
            for pos, key in enumerate(flat)
        }
        candidates = self._candidates(chunks, flat, holders, retention)
        count = len(candidates)
        # A chunk L2 holds, or (segmented) one found in L1 past the gap.
        held = [all(holders[k] for k in chunk) for chunk in chunks]
        for index in candidates:
            held[index] = True
        failures: dict[int, MissCause] = {}

        def result(
            good: int,
            sources: tuple[int, ...] = (),
            lost: tuple[MissCause, Sequence[int]] | None = None,
            found: tuple[bool, ...] = (),
        ) -> PrefetchResult:
            if lost is not None:  # the chunks ``lost[1]`` all failed for ``lost[0]``
                failures.update(dict.fromkeys(lost[1], lost[0]))
            return PrefetchResult(
                good, sources, _chunk_misses(held, good, failures, trouble), found
            )

        if not count:
            return result(0)
        if time.monotonic() >= deadline:  # no time left to load what L2 holds
            return result(0, lost=(MissCause.L2_TIMEOUT, candidates))
        wanted = [k for i in candidates for k in chunks[i]]
        try:
            reservations = self.l1.reserve(wanted, nbytes)
        except L1FullError:
            self.stats.prefetch_failures += count
            if self.events is not None and self.events.has_subscribers(L2PrefetchFailed.type):
                self.events.publish(L2PrefetchFailed(reason="l1_oom", key_count=len(wanted)))
            return result(0, lost=(MissCause.L1_FULL, candidates))
        staged = {r.key: r for r in reservations if r is not None}
        loaded, by_adapter, late, load_trouble = self._load_staged(
            staged, holders, nbytes, deadline
        )
        # Chunks whose every key is in L1 now (a key not staged was there already).
        complete = [all(loaded.get(k, k not in staged) for k in chunks[i]) for i in candidates]
        kept = _kept(candidates, complete, retention)
        good = _leading_run(kept)
        failures.update(
            self._load_failures(
                chunks, [i for i in candidates if i >= good], loaded, by_adapter, load_trouble
            )
        )
        keep = {k for i in kept for k in chunks[i]}
        commit = [staged[k] for k in wanted if k in staged and k in keep]
        self._abort_unkept(staged, keep, late)
        try:
            self.l1.commit(commit, readers=readers, temporary=self.prefetch_policy.temporary)
        except ReservationExpired:  # the load outlived the write TTL
            self.stats.prefetch_failures += len(kept)
            return result(0, lost=(MissCause.L2_TIMEOUT, kept))
        # Keys already in L1 (someone else stored them meanwhile) need their locks too.
        already = [k for i in kept for k in chunks[i] if k not in staged]
        if already and not all(self.l1.lock_for_read(already, readers)):
            self.l1.unlock([r.key for r in commit], readers)  # another writer still holds one
            self.stats.prefetch_failures += len(kept)
            return result(0, lost=(MissCause.BEING_WRITTEN, kept))
        self.stats.prefetched_chunks += len(kept)
        self.stats.prefetch_failures += count - len(kept)
        sources = {index: sum(1 for k in keys if k in keep) for index, keys in by_adapter.items()}
        kept_set = set(kept)
        return result(
            good,
            tuple(sources.get(i, 0) for i in range(len(self.adapters))),
            found=tuple(i in kept_set for i in range(len(chunks))) if kept else (),
        )

    def _candidates(
        self,
        chunks: Sequence[Sequence[ObjectKey]],
        flat: list[ObjectKey],
        holders: dict[ObjectKey, list[int]],
        retention: Retention,
    ) -> list[int]:
        """Indices of the chunks to load: the leading run found, or (segmented) every one."""
        width = len(chunks[0])
        if retention is Retention.PREFIX:
            return list(range(prefix_chunks([bool(holders[k]) for k in flat], width)))
        # Past a gap, a chunk another writer already put in L1 is as good as a loaded one.
        in_l1 = self.l1.contains(flat)
        present = [bool(holders[k]) or resident for k, resident in zip(flat, in_l1, strict=True)]
        return [i for i in range(len(chunks)) if all(present[i * width : (i + 1) * width])]


def _kept(candidates: list[int], complete: list[bool], retention: Retention) -> list[int]:
    """The candidate chunks to keep: the loaded leading run, or (segmented) every loaded one."""
    if retention is Retention.SEGMENTED:
        return [i for i, ok in zip(candidates, complete, strict=True) if ok]
    try:
        return candidates[: complete.index(False)]
    except ValueError:
        return candidates


def _leading_run(kept: list[int]) -> int:
    """How many chunks from index 0 are kept without a gap (``kept`` is ascending)."""
    run = 0
    for index in kept:
        if index != run:
            break
        run += 1
    return run


def _chunk_misses(
    held: list[bool], good: int, failures: dict[int, MissCause], trouble: MissCause | None
) -> tuple[MissCause | None, ...]:
    """Per chunk of a prefetch, what L2 knows of why it is not loaded (see PrefetchResult)."""
    misses: list[MissCause | None] = [None] * len(held)
    for position in range(good, len(held)):
        cause = failures.get(position)
        if cause is None and held[position]:
            cause = MissCause.PREFIX_GAP  # held by L2, but behind a chunk that is not
        misses[position] = cause if cause is not None else trouble
    return tuple(misses)
