"""The contract of a native connector client, the object the ``native_plugin`` adapter wraps.

A native client is a small, non-blocking batch API over some store, usually a C++
extension with its own I/O threads (upstream LMCache's connectors have this
shape, and so does the pure-Python example in ``examples/lmcache-example-l2``).
The ``native_plugin`` adapter builds it as ``class_name(**adapter_params)`` and
turns it into an :class:`~lmcache_core.storage.l2.adapter.L2AdapterV1` with
:class:`~lmcache_l2_native_plugin.native_bridge.NativeClientAdapter`, which adds
the framed object format, pins, usage per salt and capacity.

Required methods (:class:`NativeL2Client`):

* ``submit_batch_set(keys, buffers) -> int``: store ``buffers[i]`` (a contiguous,
  read-only byte ``memoryview``) under ``keys[i]``; the caller keeps the buffers
  alive and unchanged until the task completes. Storing a key again replaces it.
* ``submit_batch_get(keys, buffers) -> int``: copy the value of ``keys[i]`` into
  the writable byte ``memoryview`` ``buffers[i]``. A key is a hit only when its
  value has exactly ``len(buffers[i])`` bytes; otherwise it is a miss, and the
  client should leave the buffer untouched.
* ``submit_batch_exists(keys) -> int``: whether each key is stored.
* ``drain_completions() -> list[(task_id, ok, error, results)]``: every task
  finished since the last call, at once, without blocking. ``ok`` is False when
  the whole task failed (``error`` says why); ``results`` is one bool per key in
  submission order, or None for "every key as ``ok``". A client with an
  event fd resets it here (reads the eventfd) *before* collecting, so a task
  finishing in between signals the fd again and is never lost.
* ``close()``: finish or abandon in-flight work and release everything,
  including the fd. Called once, after every submitted task has completed (or
  after a bounded wait).

Every ``submit_*`` returns a task id unique among the tasks not yet drained, may
be called from several threads at once, and must not block on I/O. ``keys`` are
``str``: upstream's native key strings (:func:`~.key_names.native_key_name`),
``model@rank@group@hash[@salt]``.

Optional methods (each has its own protocol below, so a client can be checked
against exactly what it offers):

* ``event_fd() -> int | None``: a file descriptor that becomes readable when a
  task completes (an ``eventfd`` or the read end of a pipe). Without it (no
  method, or it returns None or a negative number) the bridge re-polls
  ``drain_completions`` every ``--periodic-notifier-interval-ms`` while tasks
  are in flight, and not at all while idle.
* ``submit_batch_delete(keys) -> int``: delete each key (``results``: whether it
  was there). Without it, deletes and eviction are no-ops: the adapter warns at
  start-up and says so in its status.
* ``submit_batch_setv(keys, parts) -> int`` and ``submit_batch_getv(keys, parts) -> int``
  (both, or neither is used): as ``set`` and ``get``, with each key's value given as a
  list of byte ``memoryview`` parts laid end to end (a value's size is the sum of its
  parts'). With them, framed objects move as header + payload with no joined copy on
  stores, and loads for the L2 tier fill the caller's buffer directly (verified after).
* ``list_keys() -> Iterable[(key, stored_bytes)]``: what the store already holds,
  called once at start-up, so usage, capacity and eviction count objects stored
  by an earlier process. Without it, they count only this process's stores.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

REQUIRED_METHODS = (
    "submit_batch_set",
    "submit_batch_get",
    "submit_batch_exists",
    "drain_completions",
    "close",
)
"""Methods a native client must have; a missing one fails start-up, named."""

OPTIONAL_METHODS = ("event_fd", "submit_batch_delete", "list_keys")
"""Methods a native client may have (see the module docstring for what each changes)."""

Completion = tuple[int, bool, str, Sequence[bool] | None]
"""One finished task: ``(task_id, ok, error, per-key results or None)``."""


class NativeL2Client(Protocol):
    """The required part of a native connector client (see the module docstring)."""

    def submit_batch_set(self, keys: list[str], buffers: list[memoryview]) -> int:
        """Store each buffer under its key; returns the task id."""

    def submit_batch_get(self, keys: list[str], buffers: list[memoryview]) -> int:
        """Copy each key's value (of exactly the buffer's size) into its buffer."""

    def submit_batch_exists(self, keys: list[str]) -> int:
        """Check which keys are stored; returns the task id."""

    def drain_completions(self) -> Sequence[Completion]:
        """Every task finished since the last call (resets the event fd first)."""

    def close(self) -> None:
        """Release the client and its fd."""


class SupportsEventFd(Protocol):
    """A client that signals completions on a pollable file descriptor."""

    def event_fd(self) -> int | None:
        """The fd, readable while completions wait to be drained (None: there is none)."""


class SupportsBatchDelete(Protocol):
    """A client that can delete keys (needed for deletes and eviction to do anything)."""

    def submit_batch_delete(self, keys: list[str]) -> int:
        """Delete each key; per-key results say whether it was there."""


class SupportsListKeys(Protocol):
    """A client that can enumerate what its store holds (for usage across restarts)."""

    def list_keys(self) -> Iterable[tuple[str, int]]:
        """``(key, stored bytes)`` of every stored object."""


def missing_methods(client: Any, names: Sequence[str] = REQUIRED_METHODS) -> list[str]:
    """The names among ``names`` that ``client`` lacks or has as non-callables."""
    return [name for name in names if not callable(getattr(client, name, None))]
