"""The ``fault_inject`` L2 adapter: another adapter whose chosen loads fail on purpose.

A test aid (never for production), configured as upstream LMCache's:
``{"type": "fault_inject", "inner": {...}, "rate": 0.25, "seed": 7}``. Every call
goes straight to the wrapped ``inner`` adapter except loads: a dropped key is
still found by lookup (and pinned), but its load returns False and its buffer is
left untouched, the "present at lookup, failed at load" hole in a cached prefix
that a real backend produces only on an I/O error. It makes the segmented-prefix
retention of the prefetch controller testable.

A key of a load batch of ``n`` keys is dropped when any of these holds:

* its position is in ``gap_indices`` (0 is the batch's first key);
* its position is ``round((1 - r) * (n - 1))`` for an ``r`` in ``gap_tail_ratios``
  (0 is the last key, 0.5 the middle, 1 the first), so one setting makes a
  mid-prefix gap whatever the prompt length;
* the blake2b hash (8 bytes, big-endian) of
  ``"{seed}:{chunk_hash hex}:{model}:{kv_rank}:{object_group_id}:{salt}"``,
  modulo 10**6, is below ``rate`` * 10**6: upstream's rule, so a seed drops the
  same keys here as there, on every load, whatever the order or the thread.

Positions count within each submitted batch, so a positional gap follows the
batch, not the key. Usage, capacity, pins and deletes are the inner adapter's
(upstream reported a capacity of 0; this one reports the inner's, so an eviction
block works through the wrapper).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from pydantic import ValidationError

from lmcache_core.plugin import L2AdapterSpec, PluginKind
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, L2Usage
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_l2_fault_inject.config import FaultInjectConfig

logger = logging.getLogger("lmcache.l2.fault_inject")

HASH_BUCKETS = 1_000_000
"""The rate's resolution: a key's hash modulo this is compared with rate * this."""


class FaultInjectL2Adapter(L2AdapterV1):
    """Wraps ``inner``; fails the loads of the keys its settings choose.

    Args:
        inner: The adapter every call is delegated to (built, not necessarily started).
        rate: Fraction of keys whose loads fail (by key hash, see the module).
        seed: Seed of the hash.
        gap_indices: Positions in each load batch that always fail.
        gap_tail_ratios: Positions, as a fraction from the batch's tail, that always fail.

    Attributes:
        injected_failures: Loads failed on purpose (keys), since construction.
        load_requests: Keys asked to load, since construction.
    """

    def __init__(
        self,
        inner: L2AdapterV1,
        *,
        rate: float = 0.0,
        seed: int = 0,
        gap_indices: Sequence[int] = (),
        gap_tail_ratios: Sequence[float] = (),
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], not {rate}")
        if any(i < 0 for i in gap_indices) or any(not 0.0 <= r <= 1.0 for r in gap_tail_ratios):
            raise ValueError("gap_indices must be >= 0 and gap_tail_ratios in [0, 1]")
        self.inner = inner  # before the base's __init__, which sets buffers_are_scratch
        # One idle worker: every call is delegated, the base's pool runs nothing.
        super().__init__(
            "fault_inject",
            capacity_bytes=inner.capacity_bytes,
            object_format=inner.object_format,
            num_workers=1,
        )
        self.rate = rate
        self.seed = seed
        self.gap_indices = frozenset(gap_indices)
        self.gap_tail_ratios = tuple(gap_tail_ratios)
        self._threshold = int(rate * HASH_BUCKETS)
        self._counts_lock = threading.Lock()
        self.injected_failures = 0
        self.load_requests = 0
        logger.warning(
            "fault_inject L2 adapter ACTIVE, wrapping %s: rate=%s seed=%s gap_indices=%s "
            "gap_tail_ratios=%s (loads fail on purpose; a test aid, not for production)",
            inner.name,
            rate,
            seed,
            sorted(self.gap_indices),
            list(self.gap_tail_ratios),
        )

    # -- the drop choice -------------------------------------------------------------

    def drops_key(self, key: ObjectKey) -> bool:
        """Whether ``key`` is in the rate's drop set (depends only on the seed and the key)."""
        if self._threshold <= 0:
            return False
        ident = (
            f"{self.seed}:{key.chunk_hash.hex()}:{key.model_name}:"
            f"{key.kv_rank}:{key.object_group_id}:{key.cache_salt}"
        )
        digest = hashlib.blake2b(ident.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % HASH_BUCKETS < self._threshold

    def dropped_positions(self, keys: Sequence[ObjectKey]) -> set[int]:
        """Positions of ``keys`` (one load batch) whose load fails on purpose."""
        count = len(keys)
        if not count:
            return set()
        dropped = {i for i in self.gap_indices if i < count}
        dropped.update(round((1.0 - ratio) * (count - 1)) for ratio in self.gap_tail_ratios)
        dropped.update(i for i, key in enumerate(keys) if self.drops_key(key))
        return dropped

    # -- loads: the one faulted call -----------------------------------------------------

    def submit_load(
        self, keys: Sequence[ObjectKey], buffers: Sequence[memoryview]
    ) -> Future[list[bool]]:
        """Load through the inner adapter, except the dropped keys: False, buffer untouched."""
        self._check(keys, buffers)
        dropped = self.dropped_positions(keys)
        with self._counts_lock:
            self.load_requests += len(keys)
            self.injected_failures += len(dropped)
        passed = [i for i in range(len(keys)) if i not in dropped]
        combined: Future[list[bool]] = Future()
        if not passed:
            combined.set_result([False] * len(keys))
            return combined
        inner_future = self.inner.submit_load(
            [keys[i] for i in passed], [buffers[i] for i in passed]
        )

        def merge(done: Future[list[bool]]) -> None:
            try:
                loaded = done.result()
            except Exception as exc:  # noqa: BLE001 - handed to the caller's result()
                combined.set_exception(exc)
                return
            results = [False] * len(keys)
            for position, ok in zip(passed, loaded, strict=True):
                results[position] = ok
            combined.set_result(results)

        inner_future.add_done_callback(merge)
        return combined

    # -- everything else: the inner adapter's ---------------------------------------------

    @property
    def buffers_are_scratch(self) -> bool:
        """The inner adapter's setting (the tier sets it on the wrapper it sees)."""
        return self.inner.buffers_are_scratch

    @buffers_are_scratch.setter
    def buffers_are_scratch(self, value: bool) -> None:
        self.inner.buffers_are_scratch = value

    def start(self) -> None:
        """Start the inner adapter (loads its index of what is already stored)."""
        self.inner.start()

    def submit_store(
        self, keys: Sequence[ObjectKey], payloads: Sequence[bytes | memoryview]
    ) -> Future[list[bool]]:
        """The inner adapter's store (never faulted)."""
        self._check(keys, payloads)
        return self.inner.submit_store(keys, payloads)

    def submit_lookup_and_lock(self, keys: Sequence[ObjectKey]) -> Future[list[bool]]:
        """The inner adapter's lookup (never faulted: a dropped key is found and pinned)."""
        self._check(keys)
        return self.inner.submit_lookup_and_lock(keys)

    def unlock(self, keys: Sequence[ObjectKey]) -> None:
        """Release the inner adapter's pins."""
        self.inner.unlock(keys)

    def delete(self, keys: Sequence[ObjectKey], *, force: bool = False) -> int:
        """Delete from the inner adapter."""
        return self.inner.delete(keys, force=force)

    def usage(self) -> L2Usage:
        """The inner adapter's usage."""
        return self.inner.usage()

    @property
    def used_bytes(self) -> int:
        """The inner adapter's bytes held."""
        return self.inner.used_bytes

    def keys(self) -> list[ObjectKey]:
        """The inner adapter's keys."""
        return self.inner.keys()

    def status(self) -> dict[str, Any]:
        """The inner adapter's status, typed ``fault_inject``, with a ``fault_inject`` part."""
        status = dict(self.inner.status())
        status["type"] = self.name
        status["inner_type"] = self.inner.name
        with self._counts_lock:
            status["fault_inject"] = {
                "active": True,
                "rate": self.rate,
                "seed": self.seed,
                "gap_indices": sorted(self.gap_indices),
                "gap_tail_ratios": list(self.gap_tail_ratios),
                "load_requests": self.load_requests,
                "injected_failures": self.injected_failures,
            }
        return status

    def _close(self) -> None:
        self.inner.close()

    # The base's storage hooks are unreachable: every public call above goes to the
    # inner adapter, whose own hooks do the work. Reaching one is a bug, said loudly.

    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        raise NotImplementedError("fault_inject has no storage; its inner adapter stores")

    def _exists(self, key: ObjectKey) -> bool:
        raise NotImplementedError("fault_inject has no storage; its inner adapter looks up")

    def _get(self, key: ObjectKey, size: int) -> bytes | None:
        raise NotImplementedError("fault_inject has no storage; its inner adapter loads")

    def _remove(self, key: ObjectKey) -> bool:
        raise NotImplementedError("fault_inject has no storage; its inner adapter deletes")


def build_inner(spec_json: Mapping[str, Any], context: L2AdapterContext) -> L2AdapterV1:
    """Build the adapter an ``inner`` spec names, through the context's registry.

    Raises:
        ValueError: The context has no registry, or the spec fails its type's model
            (the field is named).
        UnknownPluginError: No installed plugin registers the inner type.
    """
    registry = context.registry
    if registry is None:
        raise ValueError(
            "fault_inject builds its inner adapter through the plugin registry: pass an "
            "L2AdapterContext with registry= (the server does)"
        )
    spec = registry.resolve(PluginKind.L2_ADAPTER, str(spec_json["type"]))
    assert isinstance(spec, L2AdapterSpec)  # the registry keeps each kind's own specs
    assert spec.config_model is not None  # enforced by L2AdapterSpec
    try:
        config = spec.config_model.model_validate(dict(spec_json))
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "spec"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown field for adapter type {spec.name!r}"
        raise ValueError(f"inner ({spec.name}): {where}: {message}") from None
    return registry.builder.l2_adapter(spec, config, context)


def build_fault_inject(
    config: FaultInjectConfig | Mapping[str, Any],
    context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT,
) -> FaultInjectL2Adapter:
    """Build the wrapper and its inner adapter from the validated configuration.

    Args:
        config: The ``--l2-adapter`` JSON, validated (a mapping is validated here).
        context: The adapter context; its ``registry`` builds the inner adapter.
    """
    if not isinstance(config, FaultInjectConfig):
        config = FaultInjectConfig.model_validate(config)
    inner = build_inner(config.inner, context)
    try:
        return FaultInjectL2Adapter(
            inner,
            rate=config.rate,
            seed=config.seed,
            gap_indices=config.gap_indices,
            gap_tail_ratios=config.gap_tail_ratios,
        )
    except BaseException:
        inner.close()
        raise
