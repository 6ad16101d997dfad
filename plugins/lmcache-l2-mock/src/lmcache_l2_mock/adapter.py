"""The ``mock`` L2 adapter: an in-memory store with simulated bandwidth and fault injection.

Behaviour, batch by batch (every batch runs on one of the adapter's worker threads):

* **Capacity.** Objects (header + payload when ``framed``) are kept in a dict and
  never exceed ``max_size_gb``. A store that does not fit *fails*: the core's
  :class:`L2AdapterV1` refuses it before it reaches the backend (``refused_full``
  in the status), and the dict checks again as it stores, so a bypassed or
  changed check still cannot overfill it. Upstream's mock skipped the key and
  reported success. Re-storing a key replaces it.
* **Bandwidth.** A completion is delayed by the bytes the batch moved divided by
  ``mock_bandwidth_gb`` (the payload bytes of the keys that succeeded), plus
  ``added_latency_ms`` for every batch, lookups included.
* **Faults** affect loads only: a faulted key is still found by lookup, but its
  load fails and its buffer is left untouched (a hole in a cached prefix).

  * ``fail_chunk_indices``: positions within each submitted load batch (0 is the
    batch's first key) whose load always fails.
  * ``failure_rate``: a key fails when a blake3 hash of ``seed`` and the key,
    read as a number in [0, 1), is below the rate. The choice depends only on the
    seed and the key, never on call order or threads, so a run is reproducible
    and a faulted key fails on every load.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import blake3

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_core.storage.l2.object_format import key_digest
from lmcache_l2_mock.config import MockAdapterConfig

logger = logging.getLogger("lmcache.l2.mock")

GIB = 1 << 30


def _nbytes(buffer: bytes | memoryview) -> int:
    return buffer.nbytes if isinstance(buffer, memoryview) else len(buffer)


class DoesNotFit(RuntimeError):
    """A store would exceed the mock's capacity (the key's store fails)."""


class MockL2Adapter(L2AdapterV1):
    """In-memory L2 adapter for tests (see the module docstring for its behaviour).

    Args:
        config: The validated ``--l2-adapter`` JSON.
        num_workers: Worker threads.
        sleep: The function that waits (tests may record the delays instead).
    """

    def __init__(
        self,
        config: MockAdapterConfig,
        *,
        num_workers: int = 4,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(
            "mock",
            capacity_bytes=int(config.max_size_gb * GIB),
            object_format=config.format,
            num_workers=num_workers,
        )
        self.config = config
        self._bytes_per_second = config.mock_bandwidth_gb * GIB
        self._latency_s = config.added_latency_ms / 1000.0
        self._fail_positions = frozenset(config.fail_chunk_indices)
        self._sleep = sleep
        self._objects: dict[ObjectKey, bytes] = {}
        self._objects_lock = threading.Lock()
        self._held = 0
        self.injected_failures = 0
        if config.failure_rate or config.fail_chunk_indices:
            logger.warning(
                "mock L2 fault injection ACTIVE: failure_rate=%s seed=%s fail_chunk_indices=%s",
                config.failure_rate,
                config.seed,
                sorted(self._fail_positions),
            )

    # -- batches: the base's per-key work, plus simulated time and faults ----------------

    def submit_store(
        self, keys: Sequence[ObjectKey], payloads: Sequence[bytes | memoryview]
    ) -> Future[list[bool]]:
        """Store each payload; a key that does not fit fails (see :class:`L2AdapterV1`)."""
        self._check(keys, payloads)

        def batch() -> list[bool]:
            results = [self._store_one(k, p) for k, p in zip(keys, payloads, strict=True)]
            moved = sum(_nbytes(p) for p, ok in zip(payloads, results, strict=True) if ok)
            self._wait(moved)
            return results

        return self._submit(batch)

    def submit_lookup_and_lock(self, keys: Sequence[ObjectKey]) -> Future[list[bool]]:
        """Which keys are stored, pinning the found ones (faulted keys are found too)."""
        self._check(keys)

        def batch() -> list[bool]:
            results = [self._lookup_one(k) for k in keys]
            self._wait(0)
            return results

        return self._submit(batch)

    def submit_load(
        self, keys: Sequence[ObjectKey], buffers: Sequence[memoryview]
    ) -> Future[list[bool]]:
        """Load each key into its buffer; injected faults fail without touching the buffer."""
        self._check(keys, buffers)

        def batch() -> list[bool]:
            results: list[bool] = []
            for position, (key, buffer) in enumerate(zip(keys, buffers, strict=True)):
                if self.injects_fault(position, key):
                    with self._objects_lock:
                        self.injected_failures += 1
                    results.append(False)
                else:
                    results.append(self._load_one(key, buffer))
            moved = sum(_nbytes(b) for b, ok in zip(buffers, results, strict=True) if ok)
            self._wait(moved)
            return results

        return self._submit(batch)

    def injects_fault(self, position: int, key: ObjectKey) -> bool:
        """Whether loading ``key`` at ``position`` of its batch fails on purpose."""
        if position in self._fail_positions:
            return True
        rate = self.config.failure_rate
        if rate <= 0.0:
            return False
        seed = f"{self.config.seed}:".encode()
        draw = int.from_bytes(blake3.blake3(seed + key_digest(key)).digest(length=8), "little")
        return draw < rate * 2**64

    def _wait(self, moved_bytes: int) -> None:
        delay = self._latency_s + moved_bytes / self._bytes_per_second
        if delay > 0:
            self._sleep(delay)

    # -- the backend -------------------------------------------------------------------

    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        data = b"".join(parts)  # a copy: the caller may reuse its buffer after completion
        with self._objects_lock:
            held = self._held - len(self._objects.get(key, b""))
            if held + len(data) > self.capacity_bytes:
                raise DoesNotFit(
                    f"an object of {len(data)} bytes does not fit: "
                    f"{held} of {self.capacity_bytes} bytes held"
                )
            self._objects[key] = data
            self._held = held + len(data)

    def _exists(self, key: ObjectKey) -> bool:
        with self._objects_lock:
            return key in self._objects

    def _get(self, key: ObjectKey, size: int) -> bytes | None:
        with self._objects_lock:
            return self._objects.get(key)

    def _remove(self, key: ObjectKey) -> bool:
        with self._objects_lock:
            data = self._objects.pop(key, None)
            if data is None:
                return False
            self._held -= len(data)
            return True

    def _close(self) -> None:
        with self._objects_lock:
            self._objects.clear()
            self._held = 0

    # -- test aids ---------------------------------------------------------------------

    def tamper(self, key: ObjectKey, offset: int = -1) -> bool:
        """Flip every bit of one stored byte of ``key`` (a test aid for corruption handling).

        Args:
            key: The object to damage.
            offset: Which byte of the stored object (negative: from the end).

        Returns:
            False when ``key`` is not stored.
        """
        with self._objects_lock:
            data = self._objects.get(key)
            if data is None:
                return False
            damaged = bytearray(data)
            damaged[offset] ^= 0xFF
            self._objects[key] = bytes(damaged)
            return True

    def status(self) -> dict[str, Any]:
        """The base status plus the mock's own counters and fault settings."""
        status = super().status()
        status["mock"] = {
            "held_bytes": self._held,
            "bandwidth_gb": self.config.mock_bandwidth_gb,
            "added_latency_ms": self.config.added_latency_ms,
            "fault_inject": {
                "failure_rate": self.config.failure_rate,
                "seed": self.config.seed,
                "fail_chunk_indices": sorted(self._fail_positions),
                "injected_failures": self.injected_failures,
            },
        }
        return status


def build_mock(
    config: MockAdapterConfig | Mapping[str, Any],
    context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT,
) -> MockL2Adapter:
    """Build and start a :class:`MockL2Adapter` from its validated configuration.

    Args:
        config: The ``--l2-adapter`` JSON, validated (a mapping is validated here).
        context: The adapter context (unused: this adapter needs no server setting).
    """
    if not isinstance(config, MockAdapterConfig):
        config = MockAdapterConfig.model_validate(config)
    adapter = MockL2Adapter(config)
    adapter.start()
    return adapter
