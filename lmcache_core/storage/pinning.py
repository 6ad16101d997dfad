"""Lazy pinning of the L1 arena: page-lock a prefix at start, grow it in the background.

Registering host memory with CUDA (``cudaHostRegister``) commits and page-locks every
page, at roughly 1 GB/s: pinning a 100 GB L1 at start would keep the server from being
healthy for over a minute (upstream pins everything at start: 24 s for 24 GB).
:class:`LazyPinner` registers ``--l1-init-size-gb`` synchronously, then the rest in
bounded steps on a background thread, one registration per step.

The L1 allocator only hands out what is pinned: after every registration the pinner
calls ``on_grow(end)`` and the L1 manager raises its limit to ``end``. Because it is not
established that one DMA may span two separate registrations, none will: each growth
past the first range takes one alignment unit at the boundary as a permanent guard
(see :meth:`~lmcache_core.storage.allocator.Allocator.grow_to`), so no object straddles
two registrations. The cost is at most one object's worth of bytes per step.

A registration that fails (out of lockable memory, ``ulimit -l``) stops the growth where
it is: L1 keeps serving from what is pinned, the failure is logged once and shown in
``/status``, and nothing crashes. Allocations beyond the pinned part are refused like
allocations beyond a full L1 (eviction makes room, else the chunk is not cached): they
never land in unpinned memory, and never wait for a registration.

The growth logic depends on a :class:`HostRegistrar` only; :class:`CudaHostRegistrar`
is the real one (a CUDA host), and tests drive the state machine with
:class:`lmcache_core.testing.fake_registrar.FakeHostRegistrar` (a FAKE that records the
calls).
"""

from __future__ import annotations

import logging
import mmap
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

__all__ = [
    "PIN_STEP_BYTES",
    "CudaHostRegistrar",
    "HostRegistrar",
    "LazyPinner",
    "PinState",
    "PinnedRange",
    "PinningError",
]

logger = logging.getLogger("lmcache.storage")

PIN_STEP_BYTES = 2 << 30
"""Bytes registered per background step (about 2 s of ``cudaHostRegister``): bounds how
long :meth:`LazyPinner.close` waits for a step in flight, and the guard waste to one
object per 2 GiB."""

PinState = Literal["idle", "growing", "done", "failed", "closed"]


class PinningError(RuntimeError):
    """A host registration failed."""


class HostRegistrar(Protocol):
    """Page-locks host memory ranges for device DMA."""

    name: str
    """What registers (``cuda``, ``fake``), for ``/status``."""

    def register(self, pointer: int, nbytes: int) -> None:
        """Page-lock ``[pointer, pointer + nbytes)``.

        Raises:
            PinningError: The registration failed (nothing is registered then).
        """

    def unregister(self, pointer: int) -> None:
        """Undo the registration that started at ``pointer``."""


class CudaHostRegistrar:
    """``cudaHostRegister`` through torch's cudart bindings (a CUDA host only).

    Ranges are registered ``portable`` (usable from every CUDA context of the process,
    whatever device a worker's stream runs on).

    Raises:
        PinningError: Torch sees no CUDA device.
    """

    name = "cuda"
    _PORTABLE = 1  # cudaHostRegisterPortable

    def __init__(self) -> None:
        if not torch.cuda.is_available():
            raise PinningError("host registration needs CUDA, and torch sees no CUDA device")
        self._cudart: Any = torch.cuda.cudart()  # type: ignore[no-untyped-call]  # untyped

    def register(self, pointer: int, nbytes: int) -> None:
        """``cudaHostRegister(pointer, nbytes, portable)``.

        Raises:
            PinningError: CUDA returned an error code.
        """
        code = int(self._cudart.cudaHostRegister(pointer, nbytes, self._PORTABLE))
        if code != 0:
            raise PinningError(f"cudaHostRegister of {nbytes} bytes failed: error {code}")

    def unregister(self, pointer: int) -> None:
        """``cudaHostUnregister(pointer)``; an error is logged, not raised (shutdown path)."""
        code = int(self._cudart.cudaHostUnregister(pointer))
        if code != 0:
            logger.warning("cudaHostUnregister at %#x failed: error %d", pointer, code)


@dataclass(frozen=True)
class PinnedRange:
    """One registration: ``nbytes`` from ``offset`` of the pinned region."""

    offset: int
    nbytes: int

    @property
    def end(self) -> int:
        """The first offset after the range."""
        return self.offset + self.nbytes


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


class LazyPinner:
    """Registers ``[0, target_bytes)`` of a host region: a first range now, the rest in steps.

    Thread-safe. :meth:`pin_initial` runs on the caller's thread; :meth:`start` runs the
    steps on a background thread (:meth:`step` may also be driven directly, as tests do).

    Args:
        base_pointer: Address of offset 0.
        target_bytes: Bytes to pin in the end (the L1 capacity).
        init_bytes: Bytes pinned by :meth:`pin_initial` (rounded up to ``unit``, clamped
            to ``target_bytes``); ``>= target_bytes`` pins everything at once (eager).
        registrar: Who page-locks.
        on_grow: Called with the new pinned end after every registration (the L1 raises
            its allocation limit); it runs on the thread that registered.
        step_bytes: Bytes per background step (rounded up to ``unit``).
        unit: Every range boundary is a multiple of it (the page size, or the L1
            alignment when larger).

    Raises:
        ValueError: Non-positive sizes.
    """

    def __init__(
        self,
        base_pointer: int,
        target_bytes: int,
        *,
        init_bytes: int,
        registrar: HostRegistrar,
        on_grow: Callable[[int], object],
        step_bytes: int = PIN_STEP_BYTES,
        unit: int = mmap.PAGESIZE,
    ) -> None:
        if target_bytes <= 0 or step_bytes <= 0 or unit <= 0 or init_bytes < 0:
            raise ValueError("target_bytes, step_bytes and unit must be > 0, init_bytes >= 0")
        self.base_pointer = base_pointer
        self.target_bytes = target_bytes
        self.init_bytes = min(_round_up(init_bytes, unit), target_bytes)
        self.step_bytes = _round_up(step_bytes, unit)
        self.registrar = registrar
        self._on_grow = on_grow
        self._lock = threading.Lock()
        self._ranges: list[PinnedRange] = []
        self._state: PinState = "idle"
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- state ---------------------------------------------------------------------

    @property
    def pinned_bytes(self) -> int:
        """Bytes registered so far (from offset 0, without gaps)."""
        with self._lock:
            return self._ranges[-1].end if self._ranges else 0

    @property
    def state(self) -> PinState:
        """``idle`` before :meth:`pin_initial`, ``growing``, ``done``, ``failed`` or ``closed``."""
        return self._state

    @property
    def ranges(self) -> list[PinnedRange]:
        """The registrations, in address order."""
        with self._lock:
            return list(self._ranges)

    def status(self) -> dict[str, Any]:
        """For ``/status``: registrar, state, pinned and target bytes, registrations, error."""
        with self._lock:
            pinned = self._ranges[-1].end if self._ranges else 0
            return {
                "registrar": self.registrar.name,
                "state": self._state,
                "pinned_bytes": pinned,
                "target_bytes": self.target_bytes,
                "registrations": len(self._ranges),
                "step_bytes": self.step_bytes,
                "error": self._error,
            }

    # -- growth --------------------------------------------------------------------

    def pin_initial(self) -> int:
        """Register the first range (``init_bytes``) on this thread.

        Returns:
            The pinned end.

        Raises:
            PinningError: The registration failed (the server cannot start pinned).
            RuntimeError: Called twice, or after :meth:`close`.
        """
        with self._lock:
            if self._state != "idle":
                raise RuntimeError(f"pin_initial() in state {self._state!r}")
            self._state = "growing"
        if self.init_bytes:
            self._register(PinnedRange(0, self.init_bytes))  # PinningError propagates
        with self._lock:
            if self.init_bytes >= self.target_bytes:
                self._state = "done"
        return self.pinned_bytes

    def step(self) -> bool:
        """Register the next range (at most ``step_bytes``).

        A failure is logged once, recorded in :meth:`status` and ends the growth: what
        is pinned stays pinned and in use.

        Returns:
            Whether more remains to pin (``False`` once done, failed or closed).
        """
        with self._lock:
            if self._state != "growing":
                return False
            start = self._ranges[-1].end if self._ranges else 0
        piece = PinnedRange(start, min(self.step_bytes, self.target_bytes - start))
        try:
            self._register(piece)
        except PinningError as exc:
            with self._lock:
                if self._state == "growing":
                    self._state = "failed"
                    self._error = str(exc)
            logger.warning(
                "lazy L1 pinning stopped at %d of %d bytes (L1 serves from the pinned part "
                "only): %s",
                start,
                self.target_bytes,
                exc,
            )
            return False
        with self._lock:
            if piece.end >= self.target_bytes and self._state == "growing":
                self._state = "done"
                logger.info("L1 pinned in full: %d bytes", self.target_bytes)
            return self._state == "growing"

    def start(self) -> None:
        """Run :meth:`step` on a background thread until done, failed or closed."""
        if self._thread is not None or self._state != "growing":
            return
        self._thread = threading.Thread(target=self._run, name="lmcache-l1-pinning", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop growing (waits for a step in flight) and unregister every range; idempotent.

        Args:
            timeout: How long to wait for the step in flight.
        """
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                # A registration that never returns: leave its range to process exit
                # rather than unregister memory CUDA may still be locking.
                logger.warning("L1 pinning thread did not stop in %.1f s", timeout)
                return
        with self._lock:
            ranges, self._ranges = self._ranges, []
            self._state = "closed"
        for piece in reversed(ranges):
            self.registrar.unregister(self.base_pointer + piece.offset)

    # -- internals -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set() and self.step():
            pass

    def _register(self, piece: PinnedRange) -> None:
        self.registrar.register(self.base_pointer + piece.offset, piece.nbytes)
        with self._lock:
            if self._state == "closed":  # close() raced this step: undo it here
                self.registrar.unregister(self.base_pointer + piece.offset)
                return
            self._ranges.append(piece)
        self._on_grow(piece.end)

    def __repr__(self) -> str:
        return f"<LazyPinner {self._state} {self.pinned_bytes}/{self.target_bytes} bytes>"
