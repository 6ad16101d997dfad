"""CUDA streams and interprocess events behind :mod:`.transfer_ordering`'s protocols.

Runs only on a CUDA host (the GPU tests exercise it); the ordering logic it serves is tested
on the CPU with a thread standing in for the stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

__all__ = ["CudaCompletionEvent", "CudaTransferStream"]

# Polling step while waiting with a deadline: far below a copy's duration (a 32 MiB chunk
# takes ~0.6 ms at 55 GB/s), so it adds little latency and almost no CPU.
_POLL_S = 0.0001


class CudaCompletionEvent:
    """An interprocess CUDA event recorded after a transfer's copies."""

    def __init__(self, event: torch.cuda.Event) -> None:
        self._event = event
        self._error: BaseException | None = None
        self._done = False

    def ipc_handle(self) -> bytes:
        """The handle the worker imports (``torch.cuda.Event.from_ipc_handle``)."""
        return bytes(self._event.ipc_handle())  # type: ignore[no-untyped-call]

    def wait(self, timeout: float | None) -> bool:
        """Block until the copies completed (True) or ``timeout`` passed (False)."""
        if self._done:
            return True
        try:
            if timeout is None:
                self._event.synchronize()
            else:
                deadline = time.monotonic() + timeout
                while not self._event.query():  # type: ignore[no-untyped-call]
                    if time.monotonic() >= deadline:
                        return False
                    time.sleep(_POLL_S)
        except RuntimeError as exc:  # a CUDA error of the copies surfaces here
            self._error = exc
        self._done = True
        return True

    def error(self) -> BaseException | None:
        """The CUDA error the copies raised, if any (after :meth:`wait` returned True)."""
        return self._error


class CudaTransferStream:
    """A dedicated CUDA stream of one client identity, on one device.

    Args:
        device: The local ordinal of the worker's GPU.
    """

    def __init__(self, device: int) -> None:
        self.device = device
        self._stream = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]

    @property
    def stream(self) -> torch.cuda.Stream:
        """The torch stream."""
        return self._stream

    def wait_worker_event(self, handle: bytes) -> None:
        """The stream waits for the worker's exported event before the next copies."""
        event = torch.cuda.Event.from_ipc_handle(self.device, handle)  # type: ignore[no-untyped-call]
        self._stream.wait_event(event)

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` with this stream current: the copies it issues go on the stream."""
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            work()

    def record(self) -> CudaCompletionEvent:
        """Record an interprocess event after everything enqueued so far."""
        event = torch.cuda.Event(interprocess=True)  # type: ignore[no-untyped-call]
        event.record(self._stream)
        return CudaCompletionEvent(event)

    def synchronize(self) -> None:
        """Wait for everything enqueued (shutdown, releases)."""
        self._stream.synchronize()
