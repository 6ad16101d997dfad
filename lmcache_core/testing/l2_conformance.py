"""A conformance suite every L2 adapter's tests subclass (third-party adapters too).

It checks the :class:`~lmcache_core.storage.l2.adapter.L2AdapterV1` contract through
the public methods only, against a real backend: round trips, misses, per-key
results, pins, deletes, per-salt usage, the ``framed`` and ``raw`` formats,
corruption, wrong-size buffers, concurrency, ``close()``, capacity and, for
persistent adapters, a restart. Subclass it in a class whose name starts with
``Test`` and implement :meth:`~L2AdapterConformance.make_adapter`::

    from lmcache_core.testing.l2_conformance import L2AdapterConformance


    class TestMyAdapterConformance(L2AdapterConformance):
        def make_adapter(self, tmp_path, *, capacity_bytes=0, object_format="framed"):
            return MyAdapter(base_path=tmp_path, capacity_bytes=capacity_bytes,
                             object_format=object_format)

The base class's name does not start with ``Test``, so pytest does not collect it
where it is imported; the subclass inherits every ``test_*`` method. Optional hooks:

* :meth:`~L2AdapterConformance.corrupt` flips a stored byte from outside the
  adapter (the corruption test skips while it returns False);
* :meth:`~L2AdapterConformance.reopen` builds a new adapter over the same backend
  (the restart test skips while it returns None);
* :attr:`~L2AdapterConformance.enforces_capacity`: set it to False for an adapter
  that cannot bound its size (the capacity test then skips).

The hooks return adapters that are *not started*: the suite calls ``start()`` and
closes every adapter it made when the test ends. Every wait is bounded by
:data:`TIMEOUT_S`; a hung future fails the test instead of hanging the run.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.storage.l2.object_format import HEADER_SIZE

TIMEOUT_S = 10.0
"""The longest the suite waits for one future."""

SALTS = ("", "tenant-a", "tenant-b")
_FILL = 0xA5  # what a buffer holds before a load; a miss must leave it as it was


def make_keys(
    count: int, *, salt: str = "", seed: int = 0, model: str = "conformance/model"
) -> list[ObjectKey]:
    """``count`` distinct keys (random 32-byte chunk hashes) under one cache salt.

    Args:
        count: How many keys.
        salt: Their ``cache_salt``.
        seed: Seed of the chunk hashes; different seeds give different keys.
        model: Their ``model_name``.
    """
    rng = random.Random(f"keys:{seed}:{salt}")
    return [ObjectKey(rng.randbytes(32), model, 0x01000100, 0, salt) for _ in range(count)]


def make_payloads(sizes: Sequence[int], *, seed: int = 0) -> list[bytes]:
    """Random payloads of the given sizes."""
    rng = random.Random(f"payloads:{seed}")
    return [rng.randbytes(size) for size in sizes]


def empty_buffers(sizes: Sequence[int]) -> list[memoryview]:
    """Writable buffers of the given sizes, filled with a marker a miss leaves intact."""
    return [memoryview(bytearray([_FILL]) * size) for size in sizes]


def untouched(buffer: memoryview) -> bool:
    """Whether ``buffer`` still holds only the marker of :func:`empty_buffers`."""
    return bytes(buffer) == bytes([_FILL]) * len(buffer)


def wait(future: Future[list[bool]]) -> list[bool]:
    """The future's result, waiting at most :data:`TIMEOUT_S`."""
    return future.result(timeout=TIMEOUT_S)


class AdapterOpener:
    """Opens adapters for one test, each over a fresh directory, and closes them all after."""

    def __init__(self, suite: L2AdapterConformance, tmp_path: Path) -> None:
        self._suite = suite
        self._tmp_path = tmp_path
        self._made: list[tuple[L2AdapterV1, Path]] = []

    def __call__(
        self, *, capacity_bytes: int = 0, object_format: ObjectFormat = "framed"
    ) -> L2AdapterV1:
        """A started adapter built by the suite's ``make_adapter``."""
        backend = self._tmp_path / f"l2-{len(self._made)}"
        backend.mkdir()
        adapter = self._suite.make_adapter(
            backend, capacity_bytes=capacity_bytes, object_format=object_format
        )
        self._made.append((adapter, backend))
        adapter.start()
        return adapter

    def path_of(self, adapter: L2AdapterV1) -> Path:
        """The directory ``adapter`` was made over."""
        return next(path for made, path in self._made if made is adapter)

    def close_all(self) -> None:
        """Close every adapter made (closing twice is harmless)."""
        for adapter, _ in self._made:
            adapter.close()


class L2AdapterConformance:
    """The contract tests; subclass in a ``Test*`` class and implement :meth:`make_adapter`.

    Attributes:
        enforces_capacity: The adapter refuses a store that does not fit in
            ``capacity_bytes`` (set False to skip the capacity test).
        sizes: Payload sizes of the round-trip tests (odd ones on purpose).
    """

    enforces_capacity: bool = True
    sizes: tuple[int, ...] = (1, 100, 4096, 4097, 65536, 3, 1 << 17, 777)

    # -- hooks ------------------------------------------------------------------------

    def make_adapter(
        self, tmp_path: Path, *, capacity_bytes: int = 0, object_format: ObjectFormat = "framed"
    ) -> L2AdapterV1:
        """Build the adapter under test, not started yet.

        Args:
            tmp_path: An empty directory this adapter may use as its backend.
            capacity_bytes: The capacity it must report and enforce (0: unlimited).
            object_format: ``framed`` or ``raw``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement make_adapter()")

    def corrupt(self, adapter: L2AdapterV1, key: ObjectKey) -> bool:
        """Flip the last byte of ``key``'s stored object in the backend, behind the adapter.

        Returns:
            False when the backend cannot be reached from outside (the test skips).
        """
        return False

    def reopen(self, adapter: L2AdapterV1, tmp_path: Path) -> L2AdapterV1 | None:
        """A new adapter over the backend of ``adapter`` (already closed), not started.

        Args:
            adapter: The closed adapter; its settings may be reused.
            tmp_path: The directory :meth:`make_adapter` was given for it.

        Returns:
            None when the adapter keeps nothing across restarts (the test skips).
        """
        return None

    # -- fixtures ---------------------------------------------------------------------

    @pytest.fixture
    def open_adapter(self, tmp_path: Path) -> Iterator[AdapterOpener]:
        """Makes and starts adapters, each over its own directory; all are closed at the end."""
        opener = AdapterOpener(self, tmp_path)
        yield opener
        opener.close_all()

    @pytest.fixture
    def adapter(self, open_adapter: AdapterOpener) -> L2AdapterV1:
        """A started ``framed`` adapter with unlimited capacity."""
        return open_adapter()

    # -- round trips and misses -------------------------------------------------------

    def test_round_trip_bytes_identical(self, adapter: L2AdapterV1) -> None:
        """Stored payloads of many sizes load back byte for byte."""
        keys = make_keys(len(self.sizes))
        payloads = make_payloads(self.sizes)
        assert wait(adapter.submit_store(keys, payloads)) == [True] * len(keys)
        assert wait(adapter.submit_lookup_and_lock(keys)) == [True] * len(keys)
        adapter.unlock(keys)
        buffers = empty_buffers(self.sizes)
        assert wait(adapter.submit_load(keys, buffers)) == [True] * len(keys)
        for buffer, payload in zip(buffers, payloads, strict=True):
            assert bytes(buffer) == payload

    def test_store_accepts_memoryviews(self, adapter: L2AdapterV1) -> None:
        """Payloads may be memoryviews of the caller's buffers."""
        keys = make_keys(2)
        payloads = make_payloads([512, 1000])
        views = [memoryview(bytearray(payload)) for payload in payloads]
        assert wait(adapter.submit_store(keys, views)) == [True, True]
        buffers = empty_buffers([512, 1000])
        assert wait(adapter.submit_load(keys, buffers)) == [True, True]
        assert [bytes(b) for b in buffers] == payloads

    def test_unknown_keys_miss(self, adapter: L2AdapterV1) -> None:
        """Unknown keys miss at lookup and load, and leave the buffers untouched."""
        keys = make_keys(3, seed=99)
        assert wait(adapter.submit_lookup_and_lock(keys)) == [False] * 3
        buffers = empty_buffers([64] * 3)
        assert wait(adapter.submit_load(keys, buffers)) == [False] * 3
        assert all(untouched(buffer) for buffer in buffers)
        assert adapter.delete(keys) == 0

    def test_mixed_batch_has_per_key_results(self, adapter: L2AdapterV1) -> None:
        """A batch of hits and misses answers key by key, in order."""
        stored, missing = make_keys(3, seed=1), make_keys(3, seed=2)
        payloads = make_payloads([10, 20, 30])
        assert wait(adapter.submit_store(stored, payloads)) == [True] * 3
        mixed = [stored[0], missing[0], stored[1], missing[1], missing[2], stored[2]]
        expected = [True, False, True, False, False, True]
        assert wait(adapter.submit_lookup_and_lock(mixed)) == expected
        adapter.unlock(mixed)
        sizes = [10, 5, 20, 5, 5, 30]
        buffers = empty_buffers(sizes)
        assert wait(adapter.submit_load(mixed, buffers)) == expected
        assert [bytes(buffers[i]) for i in (0, 2, 5)] == payloads
        assert all(untouched(buffers[i]) for i in (1, 3, 4))

    def test_empty_batches(self, adapter: L2AdapterV1) -> None:
        """Empty batches complete with empty results."""
        assert wait(adapter.submit_store([], [])) == []
        assert wait(adapter.submit_lookup_and_lock([])) == []
        assert wait(adapter.submit_load([], [])) == []

    def test_mismatched_lengths_raise_value_error(self, adapter: L2AdapterV1) -> None:
        """As many payloads or buffers as keys, or ValueError."""
        keys = make_keys(2)
        with pytest.raises(ValueError):
            adapter.submit_store(keys, make_payloads([4]))
        with pytest.raises(ValueError):
            adapter.submit_load(keys, empty_buffers([4, 4, 4]))

    def test_storing_a_key_twice_counts_it_once(self, adapter: L2AdapterV1) -> None:
        """A re-stored key is one object, counted once."""
        keys = make_keys(1)
        payloads = make_payloads([1000])
        assert wait(adapter.submit_store(keys, payloads)) == [True]
        used = adapter.usage().used_bytes
        assert wait(adapter.submit_store(keys, payloads)) == [True]
        assert adapter.usage().used_bytes == used
        assert adapter.keys() == keys
        buffers = empty_buffers([1000])
        assert wait(adapter.submit_load(keys, buffers)) == [True]
        assert bytes(buffers[0]) == payloads[0]

    # -- pins and deletes -------------------------------------------------------------

    def test_lookup_pins_until_unlock(self, adapter: L2AdapterV1) -> None:
        """Each hit pins its key once; delete skips it until every pin is released."""
        keys = make_keys(1)
        assert wait(adapter.submit_store(keys, make_payloads([64]))) == [True]
        # Two lookups take two pins; the key stays until both are released.
        assert wait(adapter.submit_lookup_and_lock(keys)) == [True]
        assert wait(adapter.submit_lookup_and_lock(keys)) == [True]
        assert adapter.delete(keys) == 0
        adapter.unlock(keys)
        assert adapter.delete(keys) == 0
        adapter.unlock(keys)
        adapter.unlock(keys)  # an extra release is ignored
        assert adapter.delete(keys) == 1
        assert wait(adapter.submit_lookup_and_lock(keys)) == [False]

    def test_a_miss_takes_no_pin(self, adapter: L2AdapterV1) -> None:
        """A lookup miss pins nothing (the key, stored later, can be deleted)."""
        keys = make_keys(1)
        assert wait(adapter.submit_lookup_and_lock(keys)) == [False]
        assert wait(adapter.submit_store(keys, make_payloads([64]))) == [True]
        assert adapter.delete(keys) == 1

    def test_delete_skips_pinned_keys_unless_forced(self, adapter: L2AdapterV1) -> None:
        """delete() skips pinned keys; force=True removes them."""
        keys = make_keys(3)
        assert wait(adapter.submit_store(keys, make_payloads([100, 200, 300]))) == [True] * 3
        assert wait(adapter.submit_lookup_and_lock(keys[:1])) == [True]
        assert adapter.delete(keys) == 2
        assert adapter.keys() == keys[:1]
        assert wait(adapter.submit_lookup_and_lock(keys)) == [True, False, False]
        assert adapter.delete(keys, force=True) == 1
        assert adapter.keys() == []
        assert adapter.usage().used_bytes == 0
        buffers = empty_buffers([100])
        assert wait(adapter.submit_load(keys[:1], buffers)) == [False]
        assert untouched(buffers[0])

    # -- usage ------------------------------------------------------------------------

    def test_usage_totals_and_per_salt_accounting(self, adapter: L2AdapterV1) -> None:
        """Usage counts header + payload per object, in total and per cache_salt."""
        expected: dict[str, int] = {}
        all_keys: list[ObjectKey] = []
        for index, salt in enumerate(SALTS):
            sizes = [100 * (index + 1), 7 + index]
            keys = make_keys(len(sizes), salt=salt)
            assert wait(adapter.submit_store(keys, make_payloads(sizes))) == [True] * 2
            expected[salt] = sum(size + HEADER_SIZE for size in sizes)
            all_keys += keys
        usage = adapter.usage()
        assert usage.by_salt == expected
        assert usage.used_bytes == sum(expected.values())
        assert sorted(adapter.keys()) == sorted(all_keys)
        status = adapter.status()
        assert status["used_bytes"] == usage.used_bytes
        assert status["objects"] == len(all_keys)

        assert adapter.delete(make_keys(2, salt="tenant-a")) == 2
        usage = adapter.usage()
        assert "tenant-a" not in usage.by_salt or usage.by_salt["tenant-a"] == 0
        assert usage.used_bytes == expected[""] + expected["tenant-b"]

    def test_unlimited_capacity_reports_minus_one(self, adapter: L2AdapterV1) -> None:
        """Capacity 0 means unlimited: the usage fraction is -1."""
        usage = adapter.usage()
        assert usage.capacity_bytes == 0
        assert usage.usage_fraction == -1.0

    def test_raw_format_round_trip(self, open_adapter: AdapterOpener) -> None:
        """The raw format stores bare payloads and counts only their bytes."""
        adapter = open_adapter(object_format="raw")
        keys = make_keys(len(self.sizes), salt="tenant-a")
        payloads = make_payloads(self.sizes, seed=3)
        assert wait(adapter.submit_store(keys, payloads)) == [True] * len(keys)
        assert adapter.usage().used_bytes == sum(self.sizes)
        assert adapter.usage().by_salt == {"tenant-a": sum(self.sizes)}
        buffers = empty_buffers(self.sizes)
        assert wait(adapter.submit_load(keys, buffers)) == [True] * len(keys)
        assert [bytes(buffer) for buffer in buffers] == payloads

    # -- bad objects and bad buffers ----------------------------------------------------

    def test_corrupt_object_is_a_miss(self, adapter: L2AdapterV1) -> None:
        """A damaged framed object is a miss, never wrong bytes, and is counted."""
        keys = make_keys(2)
        payloads = make_payloads([4096, 4096])
        assert wait(adapter.submit_store(keys, payloads)) == [True, True]
        if not self.corrupt(adapter, keys[0]):
            pytest.skip(f"{type(self).__name__}.corrupt() cannot reach this backend")
        before = adapter.status()["corrupt_objects"]
        buffers = empty_buffers([4096, 4096])
        assert wait(adapter.submit_load(keys, buffers)) == [False, True]
        assert untouched(buffers[0]), "a corrupt object wrote bytes into the buffer"
        assert bytes(buffers[1]) == payloads[1]
        assert adapter.status()["corrupt_objects"] == before + 1

    @pytest.mark.parametrize("delta", [-1, 1])
    def test_load_into_a_wrong_size_buffer_is_a_miss(
        self, open_adapter: AdapterOpener, delta: int
    ) -> None:
        """A buffer that is not the stored payload's size gets nothing."""
        for object_format in ("framed", "raw"):
            adapter = open_adapter(object_format=object_format)
            keys = make_keys(1)
            assert wait(adapter.submit_store(keys, make_payloads([1000]))) == [True]
            buffers = empty_buffers([1000 + delta])
            assert wait(adapter.submit_load(keys, buffers)) == [False], object_format
            assert untouched(buffers[0]), object_format

    # -- concurrency and completion -----------------------------------------------------

    def test_concurrent_submits_from_several_threads(self, adapter: L2AdapterV1) -> None:
        """Threads storing, looking up and loading at once lose nothing."""
        threads, per_thread = 8, 12
        start = threading.Barrier(threads)

        def worker(index: int) -> None:
            keys = make_keys(per_thread, salt=SALTS[index % len(SALTS)], seed=100 + index)
            sizes = [64 + 31 * i + index for i in range(per_thread)]
            payloads = make_payloads(sizes, seed=index)
            start.wait(timeout=TIMEOUT_S)
            assert wait(adapter.submit_store(keys, payloads)) == [True] * per_thread
            assert wait(adapter.submit_lookup_and_lock(keys)) == [True] * per_thread
            adapter.unlock(keys)
            buffers = empty_buffers(sizes)
            assert wait(adapter.submit_load(keys, buffers)) == [True] * per_thread
            assert [bytes(buffer) for buffer in buffers] == payloads, f"thread {index}"

        with ThreadPoolExecutor(threads) as pool:
            for future in [pool.submit(worker, index) for index in range(threads)]:
                future.result(timeout=4 * TIMEOUT_S)  # re-raises a worker's failure
        expected = sum(
            64 + 31 * i + index + HEADER_SIZE for index in range(threads) for i in range(per_thread)
        )
        assert adapter.usage().used_bytes == expected
        assert len(adapter.keys()) == threads * per_thread

    def test_futures_complete_without_polling(self, adapter: L2AdapterV1) -> None:
        """Futures complete by themselves: callbacks fire, result(timeout) returns."""
        keys = make_keys(2)
        done = threading.Event()
        results: list[list[bool]] = []

        def on_done(future: Future[list[bool]]) -> None:
            results.append(future.result())
            done.set()

        adapter.submit_store(keys, make_payloads([10, 20])).add_done_callback(on_done)
        assert done.wait(TIMEOUT_S), "the store future never completed"
        assert results == [[True, True]]
        future = adapter.submit_lookup_and_lock(keys)
        assert isinstance(future, Future)
        assert future.result(timeout=TIMEOUT_S) == [True, True]
        adapter.unlock(keys)

    def test_close_finishes_in_flight_work(self, adapter: L2AdapterV1) -> None:
        """close() returns after the work already submitted is done."""
        keys = make_keys(4)
        future = adapter.submit_store(keys, make_payloads([1 << 16] * 4))
        adapter.close()
        assert future.done(), "close() returned before in-flight work finished"
        assert future.result(timeout=0) == [True] * 4

    def test_closed_adapter_refuses_submits(self, adapter: L2AdapterV1) -> None:
        """After close(), every submit raises RuntimeError and status is unhealthy."""
        assert adapter.status()["is_healthy"] is True
        adapter.close()
        adapter.close()  # closing twice is harmless
        keys = make_keys(1)
        with pytest.raises(RuntimeError):
            adapter.submit_store(keys, make_payloads([8]))
        with pytest.raises(RuntimeError):
            adapter.submit_lookup_and_lock(keys)
        with pytest.raises(RuntimeError):
            adapter.submit_load(keys, empty_buffers([8]))
        assert adapter.status()["is_healthy"] is False

    def test_status_names_the_contract(self, adapter: L2AdapterV1) -> None:
        """status() reports health, the contract version and zeroed counters."""
        status = adapter.status()
        assert status["contract_version"] == L2AdapterV1.contract_version == 1
        assert status["is_healthy"] is True
        for counter in ("errors", "corrupt_objects", "objects", "used_bytes"):
            assert status[counter] == 0, counter
        assert status["capacity_bytes"] == adapter.usage().capacity_bytes

    # -- capacity ---------------------------------------------------------------------

    def test_store_that_does_not_fit_fails(self, open_adapter: AdapterOpener) -> None:
        """A store beyond the capacity fails (never a silent success); space freed is reusable."""
        if not self.enforces_capacity:
            pytest.skip(f"{type(self).__name__}.enforces_capacity is False")
        size = 1000
        capacity = 3 * (size + HEADER_SIZE)
        adapter = open_adapter(capacity_bytes=capacity)
        keys = make_keys(5)
        payloads = make_payloads([size] * 5)
        # The fourth and fifth do not fit: they must fail, never "succeed" unstored.
        assert wait(adapter.submit_store(keys[:4], payloads[:4])) == [True, True, True, False], (
            "a store that does not fit must fail (set enforces_capacity = False if the "
            "adapter cannot bound its size)"
        )
        usage = adapter.usage()
        assert usage.used_bytes == capacity
        assert usage.capacity_bytes == capacity
        assert usage.usage_fraction == 1.0
        assert wait(adapter.submit_lookup_and_lock(keys[3:4])) == [False]
        assert adapter.delete(keys[:1]) == 1
        assert wait(adapter.submit_store(keys[4:], payloads[4:])) == [True]
        assert sorted(adapter.keys()) == sorted(keys[1:3] + keys[4:])
        buffers = empty_buffers([size])
        assert wait(adapter.submit_load(keys[4:], buffers)) == [True]
        assert bytes(buffers[0]) == payloads[4]

    def test_object_larger_than_the_capacity_fails(self, open_adapter: AdapterOpener) -> None:
        """An object larger than the whole capacity fails and leaves nothing."""
        if not self.enforces_capacity:
            pytest.skip(f"{type(self).__name__}.enforces_capacity is False")
        adapter = open_adapter(capacity_bytes=4096)
        keys = make_keys(1)
        assert wait(adapter.submit_store(keys, make_payloads([4096]))) == [False]
        assert adapter.usage().used_bytes == 0
        assert adapter.keys() == []

    # -- persistence ------------------------------------------------------------------

    def test_keys_usage_and_bytes_survive_a_restart(self, open_adapter: AdapterOpener) -> None:
        """After close, reopen and start(), keys, usage and bytes are still there."""
        adapter = open_adapter()
        stored: dict[ObjectKey, bytes] = {}
        for index, salt in enumerate(SALTS):
            keys = make_keys(3, salt=salt, seed=index)
            payloads = make_payloads([50 + index, 4096, 3 * index + 1], seed=index)
            assert wait(adapter.submit_store(keys, payloads)) == [True] * 3
            stored.update(zip(keys, payloads, strict=True))
        usage = adapter.usage()
        adapter.close()
        reopened = self.reopen(adapter, open_adapter.path_of(adapter))
        if reopened is None:
            pytest.skip(f"{type(self).__name__}.reopen() returns None: not persistent")
        try:
            reopened.start()
            assert sorted(reopened.keys()) == sorted(stored)
            assert reopened.usage().used_bytes == usage.used_bytes
            assert reopened.usage().by_salt == usage.by_salt
            keys = list(stored)
            assert wait(reopened.submit_lookup_and_lock(keys)) == [True] * len(keys)
            reopened.unlock(keys)
            buffers = empty_buffers([len(stored[key]) for key in keys])
            assert wait(reopened.submit_load(keys, buffers)) == [True] * len(keys)
            assert [bytes(buffer) for buffer in buffers] == [stored[key] for key in keys]
        finally:
            reopened.close()
