"""Per-request state: hash memo, the lookup's result, and the read locks it holds.

Sessions expire after ``--session-ttl-seconds`` of *inactivity* (upstream counted
from creation, so long requests lost their state), and their table is bounded.
Whatever a session still holds when it ends, expires or is displaced is released
through ``release``; nothing waits for a lock TTL.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from lmcache_core.background import BackgroundLoop
from lmcache_core.hashing import RequestHashes
from lmcache_core.lifecycle import Health
from lmcache_core.storage.keys import ObjectKey

MAX_SESSIONS = 65536


def _set_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


FINISHED = _set_event()
"""The ``done`` event of every job finished when it is made (never cleared): a
lookup served at once skips building an Event (a Condition and its lock)."""


@dataclass
class LookupJob:
    """The result of a session's latest lookup.

    Attributes:
        hit_chunks: Chunks found for every rank; None while the job runs.
        hit_keys: The keys of those chunks, per chunk index, for every rank.
        done: Set once ``hit_chunks`` is known.
        reported: The hit count was returned by a status query (returned once).
        deadline: ``time.monotonic()`` by which the job must be done (its lookup
            request's deadline); a prefetch still running then is given up.
        gave_up: The job was finished at its deadline with its L1 hits only; the
            prefetch, when it ends, releases whatever it loaded.
        post_gap: Chunks past the first gap that a segmented lookup kept
            read-locked for the request (chunk index -> keys for every rank);
            empty for a prefix lookup.
    """

    hit_chunks: int | None = None
    hit_keys: list[list[ObjectKey]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    reported: bool = False
    deadline: float = math.inf
    gave_up: bool = False
    post_gap: dict[int, list[ObjectKey]] = field(default_factory=dict)

    def finish(self, hit_chunks: int, hit_keys: list[list[ObjectKey]]) -> None:
        """Record the result and wake waiters."""
        self.hit_keys = hit_keys
        self.hit_chunks = hit_chunks
        self.done.set()


@dataclass
class Session:
    """One request's state on the server."""

    request_id: str
    hashes: RequestHashes
    last_active: float
    job: LookupJob | None = None
    locks: dict[ObjectKey, tuple[int, float]] = field(default_factory=dict)
    """key -> (read locks held for this request, when the earliest of them expires)."""
    mutex: threading.Lock = field(default_factory=threading.Lock)
    announced: dict[str, Any] | None = None
    """What ``mp.request.start`` said of the request (and when), once published."""

    def take_locks(self, keys: Iterable[ObjectKey], count: int, deadline: float) -> None:
        """Record ``count`` read locks taken on each key, expiring at ``deadline``."""
        locks = self.locks
        keys = keys if isinstance(keys, list) else list(keys)
        fresh = dict.fromkeys(keys, (count, deadline))  # one C-level pass
        if len(fresh) == len(keys):  # no key repeats
            if not locks:  # the usual case: a fresh lookup (the previous job was released)
                self.locks = fresh
                return
            if locks.keys().isdisjoint(fresh.keys()):  # C-level, over the shorter side
                # A second leg of the same lookup (the blend engine's prefix, then its
                # sparse chunks): none held yet, so each key's entry is the fresh one.
                locks.update(fresh)
                return
        # a key repeats, or is held already: count it per occurrence
        get = locks.get
        for key in keys:
            held, expires = get(key, (0, deadline))
            locks[key] = (held + count, min(expires, deadline))

    def give_back(
        self, keys: Iterable[ObjectKey], count: int | None = None, now: float | None = None
    ) -> dict[ObjectKey, int]:
        """Forget up to ``count`` locks per key (all when None); returns what to release.

        With ``now``, locks past their deadline have expired in L1 already: they
        are forgotten but not returned, so a late release can never take another
        reader's lock.
        """
        released: dict[ObjectKey, int] = {}
        locks = self.locks
        for key in keys:
            entry = locks.get(key)
            if entry is None:
                continue
            held, expires = entry
            n = held if count is None or count >= held else count
            if n <= 0:
                continue
            if held > n:
                locks[key] = (held - n, expires)
            else:
                del locks[key]
            if now is None or now < expires:
                released[key] = n
        return released


Release = Callable[[dict[ObjectKey, int]], None]
OnEnd = Callable[[Session, str], None]


class SessionTable:
    """Sessions by request id, bounded, expiring after idleness.

    Args:
        ttl_seconds: Idle time after which a session ends.
        new_hashes: Builds a session's hash memo.
        release: Releases read locks (key -> count) a session still held.
        clock: Monotonic time source.
        capacity: Most sessions kept; the least recently active is ended first.
        on_end: Told of every session that ends, after its locks are released,
            with why: ``end_session``, ``expired``, ``displaced`` or ``shutdown``.
    """

    name = "sessions"

    def __init__(
        self,
        ttl_seconds: float,
        new_hashes: Callable[[], RequestHashes],
        release: Release,
        clock: Callable[[], float] = time.monotonic,
        capacity: int = MAX_SESSIONS,
        on_end: OnEnd | None = None,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self._new_hashes = new_hashes
        self._release = release
        self.clock = clock
        self.capacity = capacity
        self._on_end = on_end
        self._end_listeners: list[OnEnd] = []
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self._expiry = BackgroundLoop(
            "session expiry",
            self.expire,
            interval_s=max(0.05, min(ttl_seconds / 4, 10.0)),
            thread_name="lmcache-sessions",
        )

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, request_id: str) -> Session:
        """The request's session, created on first use; marks it active."""
        now = self.clock()
        displaced: list[Session] = []
        with self._lock:
            session = self._sessions.get(request_id)
            if session is None:
                session = Session(request_id, self._new_hashes(), now)
                self._sessions[request_id] = session
                while len(self._sessions) > self.capacity:
                    displaced.append(self._sessions.popitem(last=False)[1])
            else:
                session.last_active = now
                self._sessions.move_to_end(request_id)
        for old in displaced:
            self._finish(old, "displaced")
        return session

    def get_if_room(self, request_id: str) -> Session | None:
        """Like :meth:`get`, but ``None`` where creating the session would displace one.

        Displacing ends a session and releases its locks, which can wait on L1:
        the request loop, which must not wait, leaves that case to a pool thread.
        """
        now = self.clock()
        with self._lock:
            session = self._sessions.get(request_id)
            if session is None:
                if len(self._sessions) >= self.capacity:
                    return None
                session = Session(request_id, self._new_hashes(), now)
                self._sessions[request_id] = session
            else:
                session.last_active = now
                self._sessions.move_to_end(request_id)
        return session

    def peek(self, request_id: str) -> Session | None:
        """The session if it exists (does not create or refresh it)."""
        with self._lock:
            return self._sessions.get(request_id)

    def end(self, request_id: str) -> Session | None:
        """End a session, releasing what it holds; returns it (None if unknown)."""
        with self._lock:
            session = self._sessions.pop(request_id, None)
        if session is not None:
            self._finish(session, "end_session")
        return session

    def expire(self) -> int:
        """End every session idle for longer than the TTL; returns how many."""
        cutoff = self.clock() - self.ttl_seconds
        with self._lock:
            idle = [s for s in self._sessions.values() if s.last_active < cutoff]
            for session in idle:
                del self._sessions[session.request_id]
        for session in idle:
            self._finish(session, "expired")
        return len(idle)

    def _finish(self, session: Session, reason: str) -> None:
        with session.mutex:
            held = session.give_back(list(session.locks), now=self.clock())
        if held:
            self._release(held)
        if self._on_end is not None:
            self._on_end(session, reason)
        for listener in self._end_listeners:
            listener(session, reason)

    def add_end_listener(self, listener: OnEnd) -> None:
        """Also tell ``listener`` of every session that ends (after ``on_end``).

        For engines that keep more per-request state than the session (the blend
        engine's stashes): they forget it when the request's session ends.
        """
        self._end_listeners.append(listener)

    def start(self) -> None:
        """Expire idle sessions in the background (every quarter TTL, 50 ms to 10 s)."""
        self._expiry.start()

    def stop(self, timeout: float) -> None:
        """Stop expiring; end every session."""
        self._expiry.stop(timeout)
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            self._finish(session, "shutdown")

    def health(self) -> Health:
        """Healthy while the expiry thread runs."""
        return self._expiry.health(f"{len(self._sessions)} sessions", stopped="expiry stopped")
