"""``NativeClientAdapter``: an :class:`L2AdapterV1` over a native connector client.

The client (contract: :mod:`.native_client`) runs batches on its own threads and
reports finished tasks through ``drain_completions``. This bridge sends each
public call as one batch, keeps the :class:`~concurrent.futures.Future` of every
task in flight, and one completion thread resolves them:

* with an event fd, the thread sleeps in ``poll()`` on that fd and on its own
  wake-up pipe, so nothing spins while the client works (a poll that wakes
  without completions several times in a row backs off by the periodic interval,
  so a client that forgets to reset its fd costs little CPU);
* without one, it re-polls ``drain_completions`` every ``poll_interval_s``
  (``--periodic-notifier-interval-ms``) while tasks are in flight, and sleeps on
  the wake-up pipe while idle.

On top of the client it adds what the base class promises: the framed object
format (header with key digest and checksum, unless ``format`` is ``raw``), pins
taken by lookups and honoured by deletes, bytes per ``cache_salt``, and the
capacity (a store that does not fit fails without reaching the client).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat, _byte_view
from lmcache_core.storage.l2.key_names import native_key_name, parse_native_key_name
from lmcache_core.storage.l2.loading import AdapterLoadError
from lmcache_core.storage.l2.object_format import HEADER_SIZE, CorruptObject, frame, verify
from lmcache_l2_native_plugin.native_client import REQUIRED_METHODS, missing_methods

logger = logging.getLogger("lmcache.l2")

DEFAULT_OP_TIMEOUT_S = 30.0
"""Bound on a blocking delete, and on waiting for in-flight tasks at close."""
FD_SAFETY_POLL_MS = 1000
"""With an event fd, also drain this often while busy, in case a signal was missed."""
MAX_EARLY_COMPLETIONS = 4096
"""Completions whose task id is not registered yet (a race with submit) kept at most."""
_IDLE_WAKES_BEFORE_BACKOFF = 3
_BAD_FD_EVENTS = select.POLLERR | select.POLLNVAL | select.POLLHUP

Finish = Callable[[list[bool]], list[bool]]
"""Turns a task's per-key client results into the caller's per-key results."""


@dataclass
class _Task:
    """One batch the client is working on."""

    op: str
    count: int
    finish: Finish
    future: Future[list[bool]]
    keepalive: Any  # the buffers the client reads or writes until completion


def _done(value: list[bool]) -> Future[list[bool]]:
    future: Future[list[bool]] = Future()
    future.set_result(value)
    return future


class NativeClientAdapter(L2AdapterV1):
    """An L2 adapter over a native connector client.

    Args:
        client: The client; it must have :data:`~.native_client.REQUIRED_METHODS`.
        label: Names the client in messages (``module.Class``).
        name: The adapter's type name.
        capacity_bytes: Capacity reported and enforced (0: unlimited).
        object_format: ``framed`` or ``raw``.
        poll_interval_s: Re-poll interval for a client without an event fd.
        persist: False deletes what this adapter stored when it closes.
        op_timeout_s: Bound on a delete and on the wait for in-flight tasks at close.

    Raises:
        AdapterLoadError: The client lacks a required method (it is closed first,
            when it can be), or its event fd is not an integer.
    """

    def __init__(
        self,
        client: Any,
        *,
        label: str,
        name: str = "native_plugin",
        capacity_bytes: int = 0,
        object_format: ObjectFormat = "framed",
        poll_interval_s: float = 0.005,
        persist: bool = True,
        op_timeout_s: float = DEFAULT_OP_TIMEOUT_S,
    ) -> None:
        missing = missing_methods(client, REQUIRED_METHODS)
        if missing:
            _close_quietly(client, label)
            raise AdapterLoadError(
                f"{label} is not a native connector client: it lacks {', '.join(missing)} "
                f"(required: {', '.join(REQUIRED_METHODS)})"
            )
        event_fd = _event_fd_of(client, label)
        super().__init__(
            name, capacity_bytes=capacity_bytes, object_format=object_format, num_workers=1
        )
        self.label = label
        self._client = client
        self._event_fd = event_fd
        self._interval_s = poll_interval_s
        self._persist = persist
        self._op_timeout_s = op_timeout_s
        self.deletes_supported = callable(getattr(client, "submit_batch_delete", None))
        # Optional scatter-gather calls: framed objects then move as header + payload parts.
        self._vectored = all(
            callable(getattr(client, f"submit_batch_{op}", None)) for op in ("setv", "getv")
        )
        if not self.deletes_supported:
            logger.warning(
                "%s: %s has no submit_batch_delete: deletes and eviction are no-ops",
                name,
                label,
            )
        self._tasks: dict[int, _Task] = {}
        self._early: OrderedDict[int, Any] = OrderedDict()
        self._tasks_changed = threading.Condition()
        self._broken: str | None = None
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(
            target=self._completion_loop, name=f"lmcache-l2-{name}-completions", daemon=True
        )
        self._thread.start()

    # -- the contract ------------------------------------------------------------------

    def submit_store(
        self, keys: Sequence[ObjectKey], payloads: Sequence[bytes | memoryview]
    ) -> Future[list[bool]]:
        """Store each payload under its key, as one client batch."""
        self._check(keys, payloads)
        views = [_byte_view(p) for p in payloads]
        sizes = [self._stored_size(view.nbytes) for view in views]
        accepted = self._admit(keys, sizes)
        sent = [i for i, ok in enumerate(accepted) if ok]
        if not sent:
            return _done([False] * len(keys))

        def finish(hits: list[bool]) -> list[bool]:
            result = [False] * len(keys)
            with self._lock:
                for i, hit in zip(sent, hits, strict=True):
                    self._release(sizes[i])
                    if hit:
                        self._set_size(keys[i], sizes[i])
                        result[i] = True
            return result

        names = [native_key_name(keys[i]) for i in sent]
        if self.object_format == "framed" and self._vectored:
            # Header and payload as two parts: the client writes them with one
            # scatter-gather call, so the payload is never copied into a joined buffer.
            parts = [[memoryview(frame(keys[i], views[i])), views[i].toreadonly()] for i in sent]
            return self._submit_task("setv", names, parts, finish)
        buffers = [self._encode(keys[i], views[i]) for i in sent]
        return self._submit_task("set", names, buffers, finish)

    def submit_lookup_and_lock(self, keys: Sequence[ObjectKey]) -> Future[list[bool]]:
        """Which keys the client holds, as one batch; each hit is pinned until unlock."""
        self._check(keys)
        if not keys:
            return _done([])
        keys = list(keys)

        def finish(hits: list[bool]) -> list[bool]:
            with self._lock:
                for key, hit in zip(keys, hits, strict=True):
                    if hit:
                        self._pins[key] = self._pins.get(key, 0) + 1
            return hits

        return self._submit_task("exists", [native_key_name(k) for k in keys], None, finish)

    def submit_load(
        self, keys: Sequence[ObjectKey], buffers: Sequence[memoryview]
    ) -> Future[list[bool]]:
        """Read each key into its buffer, as one batch; a bad framed object is a miss."""
        self._check(keys, buffers)
        if not keys:
            return _done([])
        keys = list(keys)
        views = [_byte_view(b) for b in buffers]
        if self.object_format == "raw":
            # The client writes straight into the caller's buffers.
            return self._submit_task("get", [native_key_name(k) for k in keys], views, list)
        names = [native_key_name(k) for k in keys]
        if self._vectored and self.buffers_are_scratch:
            # Straight into the caller's buffers (scratch until verified: the L2 tier
            # discards a failed load's buffer), the header into a small one of its own.
            headers = [memoryview(bytearray(HEADER_SIZE)) for _ in views]

            def verified(hits: list[bool]) -> list[bool]:
                result = []
                for key, hit, header, view in zip(keys, hits, headers, views, strict=True):
                    result.append(hit and self._verify_parts(key, header, view))
                return result

            parts = [[header, view] for header, view in zip(headers, views, strict=True)]
            return self._submit_task("getv", names, parts, verified)
        staging = [memoryview(bytearray(HEADER_SIZE + view.nbytes)) for view in views]

        def finish(hits: list[bool]) -> list[bool]:
            result = []
            for key, hit, stage, view in zip(keys, hits, staging, views, strict=True):
                result.append(hit and self._unframe_into(key, stage, view))
            return result

        return self._submit_task("get", names, staging, finish)

    def delete(self, keys: Sequence[ObjectKey], *, force: bool = False) -> int:
        """Delete unpinned keys (pinned too with ``force``) as one batch; waits, bounded.

        Returns 0 without asking the client when it has no ``submit_batch_delete``.
        """
        if not self.deletes_supported or self._closed or self._broken:
            return 0
        with self._lock:
            chosen = [k for k in dict.fromkeys(keys) if force or not self._pins.get(k)]
        return self._delete_now(chosen)

    def status(self) -> dict[str, Any]:
        """The base counters, plus the client, its completion signalling and delete support."""
        status = super().status()
        with self._tasks_changed:
            in_flight = len(self._tasks)
        status.update(
            {
                "is_healthy": status["is_healthy"]
                and self._broken is None
                and self._thread.is_alive(),
                "client": self.label,
                "completion": "event_fd" if self._event_fd is not None else "periodic_poll",
                "deletes": "supported"
                if self.deletes_supported
                else "no-op: the client has no submit_batch_delete, so eviction frees nothing",
                "in_flight_tasks": in_flight,
            }
        )
        if self._broken is not None:
            status["error"] = self._broken
        return status

    # -- L2AdapterV1's blocking hooks (the public methods above do not use them) ---------

    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        data = memoryview(b"".join(parts))
        if not self._wait(self._submit_task("set", [native_key_name(key)], [data], list))[0]:
            raise OSError(f"{self.label}: set failed")

    def _exists(self, key: ObjectKey) -> bool:
        return self._wait(self._submit_task("exists", [native_key_name(key)], None, list))[0]

    def _get(self, key: ObjectKey, size: int) -> bytearray | None:
        buffer = bytearray(size)
        task = self._submit_task("get", [native_key_name(key)], [memoryview(buffer)], list)
        return buffer if self._wait(task)[0] else None

    def _remove(self, key: ObjectKey) -> bool:
        return self._delete_now([key]) == 1

    def _known_objects(self) -> dict[ObjectKey, int]:
        list_keys = getattr(self._client, "list_keys", None)
        if not callable(list_keys):
            return {}
        known: dict[ObjectKey, int] = {}
        for name, size in list_keys():
            key = parse_native_key_name(str(name))
            if key is not None:  # names this bridge did not write are not ours to count
                known[key] = int(size)
        return known

    def _close(self) -> None:
        # close() has set _closed: no new calls come in; finish what the client holds.
        if not self._wait_idle(self._op_timeout_s):
            logger.warning("%s: tasks still in flight at close; failing them", self.name)
        if not self._persist and self.deletes_supported and not self._broken:
            self._delete_now(self.keys())
        self._stopping = True
        self._wake()
        self._thread.join(self._op_timeout_s)
        self._fail_all("the adapter closed before the task completed")
        _close_quietly(self._client, self.label)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def _check(self, keys: Sequence[ObjectKey], values: Sequence[Any] | None = None) -> None:
        super()._check(keys, values)
        if self._broken is not None:
            raise RuntimeError(f"L2 adapter {self.name} is broken: {self._broken}")

    # -- internals -----------------------------------------------------------------------

    def _encode(self, key: ObjectKey, payload: memoryview) -> memoryview:
        if self.object_format == "raw":
            return payload.toreadonly()
        # Native clients take one contiguous buffer per key: header and payload are joined.
        buffer = bytearray(HEADER_SIZE + payload.nbytes)
        buffer[:HEADER_SIZE] = frame(key, payload)
        buffer[HEADER_SIZE:] = payload
        return memoryview(buffer).toreadonly()

    def _verify_parts(self, key: ObjectKey, header: memoryview, payload: memoryview) -> bool:
        """Check a framed object loaded as header and payload; False when it is bad."""
        try:
            verify(key, header, payload)
        except CorruptObject as exc:
            self.corrupt += 1
            logger.warning("%s: %s: treated as a miss", self.name, exc)
            return False
        return True

    def _unframe_into(self, key: ObjectKey, stage: memoryview, view: memoryview) -> bool:
        """Check a loaded framed object and copy its payload out; False when it is bad."""
        try:
            verify(key, stage[:HEADER_SIZE], stage[HEADER_SIZE:])
        except CorruptObject as exc:
            self.corrupt += 1
            logger.warning("%s: %s: treated as a miss", self.name, exc)
            return False
        view[:] = stage[HEADER_SIZE:]
        return True

    def _delete_now(self, keys: list[ObjectKey]) -> int:
        if not keys:
            return 0

        def finish(hits: list[bool]) -> list[bool]:
            with self._lock:
                for key, hit in zip(keys, hits, strict=True):
                    if hit:
                        self._set_size(key, None)
                        self._pins.pop(key, None)
            return hits

        future = self._submit_task("delete", [native_key_name(k) for k in keys], None, finish)
        return sum(self._wait(future))

    def _wait(self, future: Future[list[bool]]) -> list[bool]:
        if threading.current_thread() is self._thread and not future.done():
            # A done-callback waiting on the thread that must complete its task would hang.
            self.errors += 1
            logger.error("%s: a blocking call from a completion callback; failed", self.name)
            return [False]
        try:
            return future.result(timeout=self._op_timeout_s)
        except FutureTimeout:
            self.errors += 1
            logger.warning("%s: a task took longer than %.0f s", self.name, self._op_timeout_s)
            return [False]

    def _submit_task(
        self,
        op: str,
        names: list[str],
        buffers: list[memoryview] | list[list[memoryview]] | None,
        finish: Finish,
    ) -> Future[list[bool]]:
        future: Future[list[bool]] = Future()
        task = _Task(op, len(names), finish, future, buffers)
        submit = getattr(self._client, f"submit_batch_{op}")
        try:
            task_id = submit(names, buffers) if buffers is not None else submit(names)
            if not isinstance(task_id, int):
                raise TypeError(f"submit_batch_{op} returned {type(task_id).__name__}, not int")
        except Exception:
            self.errors += 1
            logger.warning(
                "%s: %s.submit_batch_%s failed", self.name, self.label, op, exc_info=True
            )
            self._finish(task, [False] * task.count)
            return future
        clash = first = False
        with self._tasks_changed:
            early = self._early.pop(task_id, None)
            if early is None:
                if task_id in self._tasks:
                    clash = True
                else:
                    self._tasks[task_id] = task
                    first = len(self._tasks) == 1
        if early is not None:
            self._resolve(task, early)
        elif clash:
            self.errors += 1
            logger.warning("%s: %s reused task id %d", self.name, self.label, task_id)
            self._finish(task, [False] * task.count)
        elif first and self._event_fd is None:
            self._wake()  # the idle loop sleeps until told to re-poll
        return future

    def _resolve(self, task: _Task, completion: Any) -> None:
        _task_id, ok, error, results = completion
        if not ok:
            self.errors += 1
            logger.warning("%s: %s task failed: %s", self.name, task.op, error)
            hits = [False] * task.count
        elif results is None:
            hits = [True] * task.count
        else:
            hits = [bool(result) for result in results]
            if len(hits) != task.count:
                self.errors += 1
                logger.warning(
                    "%s: %s task answered %d results for %d keys",
                    self.name,
                    task.op,
                    len(hits),
                    task.count,
                )
                hits = [False] * task.count
            elif task.op in ("set", "setv"):  # a key the client could not store failed
                self.errors += hits.count(False)
        self._finish(task, hits)

    def _finish(self, task: _Task, hits: list[bool]) -> None:
        try:
            value = task.finish(hits)
        except Exception:  # a bug here must not leave the caller waiting forever
            self.errors += 1
            logger.exception("%s: finishing a %s task failed", self.name, task.op)
            value = [False] * task.count
        task.future.set_result(value)

    def _completion_loop(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if self._event_fd is not None:
            poller.register(self._event_fd, select.POLLIN)
        interval_ms = max(1, round(self._interval_s * 1000))
        idle_wakes = 0
        while not self._stopping:
            with self._tasks_changed:
                busy = bool(self._tasks)
            if not busy:
                timeout: int | None = None
            else:
                timeout = FD_SAFETY_POLL_MS if self._event_fd is not None else interval_ms
            signalled = False
            for fd, events in poller.poll(timeout):
                if fd == self._wake_r:
                    _drain_pipe(self._wake_r)
                elif events & _BAD_FD_EVENTS:
                    self._break(f"the event fd of {self.label} failed (poll events {events:#x})")
                    return
                else:
                    signalled = True
            drained = self._drain()
            idle_wakes = idle_wakes + 1 if signalled and not drained else 0
            if idle_wakes >= _IDLE_WAKES_BEFORE_BACKOFF:  # the fd stays readable: back off
                time.sleep(self._interval_s)

    def _drain(self) -> int:
        try:
            completions = list(self._client.drain_completions())
        except Exception:
            self.errors += 1
            logger.warning("%s: drain_completions failed", self.name, exc_info=True)
            time.sleep(self._interval_s)
            return 0
        for completion in completions:
            if not (isinstance(completion, tuple | list) and len(completion) == 4):
                self.errors += 1
                logger.warning("%s: malformed completion %.80r", self.name, completion)
                continue
            task_id = completion[0]
            with self._tasks_changed:
                task = self._tasks.pop(task_id, None)
                if task is None:
                    # Completed before submit_* returned its id: kept for the submitter.
                    self._early[task_id] = completion
                    while len(self._early) > MAX_EARLY_COMPLETIONS:
                        self._early.popitem(last=False)
                self._tasks_changed.notify_all()
            if task is not None:
                self._resolve(task, completion)
        return len(completions)

    def _wait_idle(self, timeout: float) -> bool:
        with self._tasks_changed:
            return self._tasks_changed.wait_for(lambda: not self._tasks, timeout)

    def _break(self, reason: str) -> None:
        self._broken = reason
        logger.error("%s: %s; the adapter stops", self.name, reason)
        self._fail_all(reason)

    def _fail_all(self, reason: str) -> None:
        with self._tasks_changed:
            tasks = list(self._tasks.values())
            self._tasks.clear()
            self._tasks_changed.notify_all()
        for task in tasks:
            logger.warning("%s: %s task failed: %s", self.name, task.op, reason)
            self._finish(task, [False] * task.count)

    def _wake(self) -> None:
        # A full pipe means the loop is already due to wake.
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")


def _event_fd_of(client: Any, label: str) -> int | None:
    get_fd = getattr(client, "event_fd", None)
    if not callable(get_fd):
        return None
    fd = get_fd()
    if fd is None:
        return None
    if not isinstance(fd, int) or isinstance(fd, bool):
        _close_quietly(client, label)
        raise AdapterLoadError(f"{label}.event_fd() returned {fd!r}, not an int or None")
    return fd if fd >= 0 else None


def _drain_pipe(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


def _close_quietly(client: Any, label: str) -> None:
    close = getattr(client, "close", None)
    if not callable(close):
        return
    try:
        close()
    except Exception:  # closing a client we are giving up on must not hide the real error
        logger.warning("closing %s failed", label, exc_info=True)
