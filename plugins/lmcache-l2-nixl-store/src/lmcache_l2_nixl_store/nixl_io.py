"""The NIXL calls both NIXL adapters make: one agent, one storage back end, bounded transfers.

NIXL (``pip install --no-deps nixl==1.5.1 nixl-cu12==1.5.1`` plus numpy; a plain
install drags in a CUDA torch) moves bytes between registered memory
(``DRAM``) and a storage back end's segments (``FILE`` descriptors for POSIX,
GDS, GDS_MT and HF3FS; ``OBJ`` keys for object stores). :class:`NixlStorage`
wraps the few calls the adapters need:

* :func:`open_storage` builds an agent without a listener thread (as upstream
  does: no sockets) and creates the back end; a back end this NIXL build cannot
  create (no plugin in the wheel, or a plugin that fails to start, such as GDS
  without ``libcuda``) stops start-up with one line naming it and why;
* :meth:`NixlStorage.transfer` registers the caller's memory and the segments,
  runs one ``WRITE`` or ``READ`` of many descriptors, waits for it with a
  bounded back-off (NIXL storage back ends have no completion fd), and always
  releases the handle and the registrations; memory already registered once
  (:meth:`NixlStorage.register_region`, such as the L1 arena) is not registered
  again;
* :class:`BounceBuffers` holds the per-thread page-aligned buffers that
  ``O_DIRECT`` transfers of unaligned memory go through.
"""

from __future__ import annotations

import importlib
import itertools
import mmap
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmcache_core.storage.l2.loading import AdapterLoadError
from lmcache_l2_nixl_store.params import (
    DEFAULT_TRANSFER_TIMEOUT_S,
    INSTALL_HINT,
    OBJECT_BACKENDS,
)

POLL_MAX_SLEEP_S = 0.001
"""Longest sleep between two polls of a transfer's state."""
_agent_ids = itertools.count(1)

Segment = tuple[int, int, int, str]
"""A storage segment to register: ``(offset, length, fd or object index, object key)``."""
Piece = tuple[int, int, int]
"""One transfer descriptor: ``(offset or address, length, fd / object index / 0)``."""


class NixlTransferError(OSError):
    """A NIXL transfer failed or did not finish in time."""


def address_of(view: memoryview) -> int:
    """The address of a contiguous buffer's first byte."""
    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data)


def import_nixl(adapter: str) -> Any:
    """``nixl._api``, or a start-up error saying how to install it."""
    try:
        return importlib.import_module("nixl._api")
    except ImportError as exc:
        raise AdapterLoadError(
            f"{adapter}: the NIXL library is not installed ({exc}); install it with {INSTALL_HINT}"
        ) from exc


class BounceBuffers:
    """One page-aligned scratch buffer per thread, grown on demand (never shrunk).

    ``O_DIRECT`` wants block-aligned memory and lengths; memory that is not goes
    through this buffer. ``mmap`` memory is page-aligned, which covers every block
    size a file system reports.

    Args:
        minimum: The smallest buffer to allocate (a block or a page).
    """

    def __init__(self, minimum: int) -> None:
        self.minimum = minimum
        self._local = threading.local()

    def get(self, size: int) -> memoryview:
        """This thread's buffer, at least ``size`` bytes, viewed as exactly ``size``."""
        current: mmap.mmap | None = getattr(self._local, "buffer", None)
        if current is None or len(current) < size:
            current = mmap.mmap(-1, max(size, self.minimum))
            self._local.buffer = current
        return memoryview(current)[:size]


def gather(views: Sequence[memoryview], into: memoryview) -> None:
    """Copy ``views`` end to end into the front of ``into`` (a bounce buffer before a WRITE)."""
    offset = 0
    for view in views:
        into[offset : offset + view.nbytes] = view
        offset += view.nbytes


def scatter(source: memoryview, views: Sequence[memoryview]) -> None:
    """Fill ``views`` from ``source`` laid end to end (a bounce buffer after a READ)."""
    offset = 0
    for view in views:
        view[:] = source[offset : offset + view.nbytes]
        offset += view.nbytes


class NixlStorage:
    """One NIXL agent with one storage back end.

    Args:
        agent: The ``nixl_agent``.
        backend: The back end's name (``POSIX``, ``OBJ``, ...).
        transfer_timeout_s: Longest wait for one transfer.
        params: The ``backend_params`` the back end was created with.
    """

    def __init__(
        self,
        agent: Any,
        backend: str,
        transfer_timeout_s: float,
        params: dict[str, str] | None = None,
    ) -> None:
        self.agent = agent
        self.backend = backend
        self.params = dict(params or {})
        self.segment_type = "OBJ" if backend in OBJECT_BACKENDS else "FILE"
        self.transfer_timeout_s = transfer_timeout_s
        self._regions: list[tuple[int, int, Any]] = []  # (start, end, registration)

    def register_region(self, address: int, size: int) -> None:
        """Register ``[address, address + size)`` once (until :meth:`close`).

        Transfers of memory inside it then skip their per-transfer registration:
        the L1 arena is registered this way, as upstream registers it.
        """
        registration = self.agent.register_memory([(address, size, 0, "")], mem_type="DRAM")
        self._regions.append((address, address + size, registration))

    def _registered(self, address: int, size: int) -> bool:
        return any(start <= address and address + size <= end for start, end, _ in self._regions)

    def close(self) -> None:
        """Deregister the regions of :meth:`register_region`."""
        regions, self._regions = self._regions, []
        for _start, _end, registration in regions:
            self.agent.deregister_memory(registration)

    def register_segments(self, segments: Sequence[Segment]) -> Any:
        """Register storage segments (kept by the caller; see :meth:`release`)."""
        return self.agent.register_memory(list(segments), mem_type=self.segment_type)

    def release(self, registration: Any) -> None:
        """Deregister what :meth:`register_segments` or a transfer registered."""
        self.agent.deregister_memory(registration)

    def _wait(self, handle: Any, operation: str) -> None:
        """Post ``handle`` and poll it to completion with a bounded back-off."""
        agent = self.agent
        state = agent.transfer(handle)
        deadline = time.monotonic() + self.transfer_timeout_s
        pause = 0.0
        while state not in ("DONE", "ERR"):
            if time.monotonic() > deadline:
                raise NixlTransferError(
                    f"NIXL {self.backend} {operation} did not finish in "
                    f"{self.transfer_timeout_s:.0f} s"
                )
            if pause:
                time.sleep(pause)
            pause = min(POLL_MAX_SLEEP_S, pause * 2 or 0.00005)
            state = agent.check_xfer_state(handle)
        if state == "ERR":
            raise NixlTransferError(f"NIXL {self.backend} {operation} failed")

    def transfer(
        self,
        operation: str,
        buffers: Sequence[memoryview],
        pieces: Sequence[Piece],
        *,
        segments: Sequence[Segment] = (),
        regions: Sequence[memoryview] | None = None,
    ) -> None:
        """Move ``buffers[i]`` to (``WRITE``) or from (``READ``) the storage piece ``pieces[i]``.

        Args:
            operation: ``WRITE`` or ``READ``.
            buffers: The memory side, one contiguous buffer per piece.
            pieces: The storage side, as ``(offset, length, fd or object index)``.
            segments: Storage segments to register for this transfer only (those
                registered once, such as a pre-allocated pool, are left out).
            regions: The memory to register for this transfer, when ``buffers``
                are slices of fewer, larger buffers (default: ``buffers``
                themselves). Regions inside one of :meth:`register_region` are
                skipped.

        Raises:
            NixlTransferError: NIXL refused or failed the transfer, or it timed out.
        """
        agent = self.agent
        memory = [(address_of(view), view.nbytes, 0) for view in buffers]
        to_register: list[Segment] = []
        for view in buffers if regions is None else regions:
            address = address_of(view)
            if view.nbytes and not self._registered(address, view.nbytes):
                to_register.append((address, view.nbytes, 0, ""))
        registered: list[Any] = []
        handle = None
        try:
            if to_register:
                registered.append(agent.register_memory(to_register, mem_type="DRAM"))
            if segments:
                registered.append(self.register_segments(segments))
            local = agent.get_xfer_descs(memory, mem_type="DRAM")
            remote = agent.get_xfer_descs(list(pieces), mem_type=self.segment_type)
            handle = agent.initialize_xfer(operation, local, remote, agent.name)
            self._wait(handle, operation)
        except NixlTransferError:
            raise
        except Exception as exc:  # nixlBackendError and friends: the library's own errors
            raise NixlTransferError(f"NIXL {self.backend} {operation}: {exc}") from exc
        finally:
            if handle is not None:
                agent.release_xfer_handle(handle)
            for registration in registered:
                agent.deregister_memory(registration)


def open_storage(
    adapter: str,
    backend: str,
    params: dict[str, str],
    *,
    transfer_timeout_s: float = DEFAULT_TRANSFER_TIMEOUT_S,
) -> NixlStorage:
    """An agent with ``backend`` created from ``params``, or a one-line start-up error.

    Raises:
        AdapterLoadError: NIXL is not installed, or it cannot create ``backend``
            (the message names the back end and the reason).
    """
    api = import_nixl(adapter)
    name = f"lmcache-{adapter}-{os.getpid()}-{next(_agent_ids)}"
    # No listener thread (no sockets), as upstream builds it. Without one NIXL's default
    # is no locking at all, and the adapters' worker threads register and transfer
    # concurrently (upstream runs everything on one event-loop thread): ask for
    # strict locking, or concurrent calls crash the agent.
    strict = api.nixl_thread_sync_t.NIXL_THREAD_SYNC_STRICT
    agent = api.nixl_agent(name, api.nixl_agent_config(backends=[], sync_mode=strict))
    plugins = list(agent.get_plugin_list())
    if backend not in plugins:
        raise AdapterLoadError(
            f"{adapter}: NIXL back end {backend} is not available: this NIXL build has no "
            f"{backend} plugin (it has {', '.join(sorted(plugins))})"
        )
    try:
        agent.create_backend(backend, dict(params))
    except Exception as exc:  # the library says NIXL_ERR_NOT_FOUND / NIXL_ERR_BACKEND
        why = "its plugin failed to start"
        if backend in ("GDS", "GDS_MT"):
            why += " (GDS needs cuFile, libcuda.so.1 and the nvidia-fs driver)"
        raise AdapterLoadError(
            f"{adapter}: NIXL back end {backend} cannot be created: {why}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return NixlStorage(agent, backend, transfer_timeout_s, params)
