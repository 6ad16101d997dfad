"""FAKE host registrar: records register/unregister calls instead of page-locking.

Nothing on a CPU-only host can page-lock memory for a device, so the lazy-pinning state
machine (:class:`lmcache_core.storage.pinning.LazyPinner`) is tested against this FAKE.
The real registrar, :class:`~lmcache_core.storage.pinning.CudaHostRegistrar`, runs in
``tests/gpu``.
"""

from __future__ import annotations

import threading

from lmcache_core.storage.pinning import PinningError

__all__ = ["FakeHostRegistrar"]


class FakeHostRegistrar:
    """A FAKE :class:`~lmcache_core.storage.pinning.HostRegistrar`.

    Args:
        fail_at: 0-based index of the register call that fails (``None``: none fails).
        gate: If set, every register call waits on it first (lets a test hold a step
            in flight).

    Attributes:
        registered: ``(pointer, nbytes)`` of every successful register call, in order.
        unregistered: The pointers passed to unregister, in order.
        calls: How many register calls were made (failed ones included).
        entered: Set once a register call has started (before it waits on ``gate``).
    """

    name = "fake"

    def __init__(self, fail_at: int | None = None, gate: threading.Event | None = None) -> None:
        self.fail_at = fail_at
        self.gate = gate
        self.registered: list[tuple[int, int]] = []
        self.unregistered: list[int] = []
        self.calls = 0
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def register(self, pointer: int, nbytes: int) -> None:
        """Record the range, or raise on call number ``fail_at``.

        Raises:
            PinningError: This is call ``fail_at``.
        """
        self.entered.set()
        if self.gate is not None:
            self.gate.wait()
        with self._lock:
            index = self.calls
            self.calls += 1
            if index == self.fail_at:
                raise PinningError(f"FAKE registration {index} refused ({nbytes} bytes)")
            self.registered.append((pointer, nbytes))

    def unregister(self, pointer: int) -> None:
        """Record the pointer."""
        with self._lock:
            self.unregistered.append(pointer)

    @property
    def pinned_bytes(self) -> int:
        """Bytes registered and not unregistered."""
        with self._lock:
            gone = set(self.unregistered)
            return sum(nbytes for pointer, nbytes in self.registered if pointer not in gone)
