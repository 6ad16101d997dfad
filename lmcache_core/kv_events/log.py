"""The bounded replay log of cache changes, and the token bindings of stored chunks.

Every change gets the next sequence number; the log keeps the last
``capacity`` of them, so a subscriber that reconnects with its cursor gets what
it missed, and one that fell too far behind is told (``lost``). A ``lost``
marker in the log records that changes were dropped before they reached it (the
event bus was full): readers past it withdraw and start over. The incarnation
(the start time in nanoseconds) tells a subscriber the server restarted.

A store record carries its chunk's tokens and parent hash. Those are known when
the request's tokens are hashed, not when L1 commits the chunk, so the hashing
path binds them here first (:meth:`KVEventLog.bind_raw`, a bounded LRU map);
a store whose chunk was never bound is still recorded, with no tokens. The
hashing path only files the request's raw msgpack token array (shared by all
its chunks) and each chunk's position: decoding and slicing happen when the
store is recorded, on the event bus's thread, off the request path.

Memory: the log keeps tokens packed (4 bytes each), which become lists only in
the batches sent: with 256-token chunks at most about 1 KiB per record (32 MiB
at the default 32768 records). A binding holds a reference to its request's
raw tokens (about 5 bytes a token), so :data:`MAX_BINDINGS` bindings hold
about ``MAX_BINDINGS * chunk_size * 5`` bytes (10 MiB with 256-token chunks).
"""

from __future__ import annotations

import threading
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice

from lmcache_core.protocol.kv_event_records import (
    KIND_LOST,
    KIND_REMOVED,
    KIND_STORED,
    KVEventBatch,
    KVEventRecord,
)
from lmcache_core.protocol.types import decode_token_ids

DEFAULT_LOG_SIZE = 32768
"""Upstream's ``--kv-event-log-size`` default."""
MAX_BINDINGS = 8192
"""Chunks whose tokens are remembered for their store record (oldest forgotten first)."""
TOKEN_TYPECODE = "I"
"""Token ids are uint32 (the request decoder checks it): packed 4 bytes each."""
MAX_EVENTS_PER_BATCH = 1024


@dataclass(frozen=True, slots=True)
class _Entry:
    """One record as the log keeps it (tokens packed)."""

    seq: int
    kind: str
    medium: str
    model_name: str
    hashes: list[bytes]
    parent: bytes | None
    tokens: bytes

    def record(self) -> KVEventRecord:
        """The wire record."""
        tokens = array(TOKEN_TYPECODE)
        tokens.frombytes(self.tokens)
        return KVEventRecord(
            self.seq,
            self.kind,
            self.medium,
            self.model_name,
            self.hashes,
            self.parent,
            tokens.tolist(),
        )


@dataclass
class LogStats:
    """Counters for ``/status``.

    Attributes:
        lost_markers: Times changes were lost before reaching the log.
        unbound_stores: Stores recorded without tokens (their chunk was never bound).
        bound_chunks: Chunks whose tokens are held now.
    """

    lost_markers: int = 0
    unbound_stores: int = 0


class KVEventLog:
    """Sequenced cache changes, bounded, with a condition readers wait on.

    Args:
        capacity: Records kept (``--kv-event-log-size``); 0 disables the stream.
        max_bindings: Token bindings kept.
    """

    def __init__(self, capacity: int = DEFAULT_LOG_SIZE, max_bindings: int = MAX_BINDINGS) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, not {capacity}")
        self.capacity = capacity
        self.incarnation = time.time_ns()
        self.stats = LogStats()
        self.changed = threading.Condition()
        self._log: deque[_Entry] = deque(maxlen=capacity)
        self._next_seq = 1
        self._bindings: OrderedDict[bytes, tuple[bytes, int, bytes | None]] = OrderedDict()
        self._decoded: tuple[bytes, Sequence[int]] | None = None  # the last raw array decoded
        self._max_bindings = max_bindings
        self._chunk_size = 1
        self._closed = False

    @property
    def enabled(self) -> bool:
        """Whether changes are recorded (a capacity above 0, and not closed)."""
        return self.capacity > 0 and not self._closed

    # -- writers -------------------------------------------------------------------

    def bind_raw(self, hashes: Sequence[bytes], raw_tokens: bytes, chunk_size: int) -> None:
        """Remember where each chunk of one request's prefix finds its tokens and parent.

        Cheap on purpose (it runs on the request path): a reference to the raw
        array and a position per new chunk; nothing is decoded here.

        Args:
            hashes: The chunk hashes of the prefix, from its first chunk, in order.
            raw_tokens: The request's tokens as received (a msgpack array of ints).
            chunk_size: Tokens per chunk.
        """
        self._chunk_size = chunk_size
        with self.changed:
            bindings = self._bindings
            for index, chunk_hash in enumerate(hashes):
                if chunk_hash in bindings:
                    bindings.move_to_end(chunk_hash)
                else:
                    bindings[chunk_hash] = (raw_tokens, index, hashes[index - 1] if index else None)
            while len(bindings) > self._max_bindings:
                bindings.popitem(last=False)

    def _tokens_of(self, raw: bytes, index: int) -> bytes:
        """Chunk ``index``'s tokens, packed (the last raw array's decode is reused)."""
        decoded = self._decoded
        if decoded is None or decoded[0] is not raw:
            decoded = (raw, decode_token_ids(raw))
            self._decoded = decoded
        start = index * self._chunk_size
        return array(TOKEN_TYPECODE, decoded[1][start : start + self._chunk_size]).tobytes()

    def is_bound(self, chunk_hash: bytes) -> bool:
        """Whether ``chunk_hash``'s tokens are known (the hashing path skips those)."""
        return chunk_hash in self._bindings

    def stored(self, medium: str, model_name: str, hashes: Sequence[bytes]) -> None:
        """Record that ``hashes`` of ``model_name`` were stored into ``medium`` (a record each)."""
        if not self.enabled or not hashes:
            return
        with self.changed:
            for chunk_hash in hashes:
                binding = self._bindings.get(chunk_hash)
                if binding is None:
                    self.stats.unbound_stores += 1
                    tokens, parent = b"", None
                else:
                    raw, index, parent = binding
                    tokens = self._tokens_of(raw, index)
                self._append(KIND_STORED, medium, model_name, [chunk_hash], parent, tokens)
            self.changed.notify_all()

    def removed(self, medium: str, model_name: str, hashes: Sequence[bytes]) -> None:
        """Record that ``hashes`` of ``model_name`` left ``medium`` (one record)."""
        if not self.enabled or not hashes:
            return
        with self.changed:
            self._append(KIND_REMOVED, medium, model_name, list(hashes), None, b"")
            self.changed.notify_all()

    def lost(self) -> None:
        """Record that changes were lost before they reached the log."""
        if not self.enabled:
            return
        with self.changed:
            self.stats.lost_markers += 1
            self._append(KIND_LOST, "", "", [], None, b"")
            self.changed.notify_all()

    def close(self) -> None:
        """Stop recording; waiting readers wake and see ``enabled`` false."""
        with self.changed:
            self._closed = True
            self._bindings.clear()
            self._decoded = None
            self.changed.notify_all()

    def _append(
        self,
        kind: str,
        medium: str,
        model_name: str,
        hashes: list[bytes],
        parent: bytes | None,
        tokens: bytes,
    ) -> None:
        self._log.append(_Entry(self._next_seq, kind, medium, model_name, hashes, parent, tokens))
        self._next_seq += 1

    # -- readers -------------------------------------------------------------------

    def read(self, model_name: str, cursor: int, max_events: int) -> KVEventBatch:
        """Up to ``max_events`` records of ``model_name`` after ``cursor``.

        ``lost`` is set when records after ``cursor`` are gone (the log wrapped),
        when ``cursor`` is beyond the last record (a cursor of another
        incarnation), or when a lost marker lies in the range read (the records
        before it are then not returned).

        Raises:
            ValueError: ``cursor`` < 0 or ``max_events`` not in 1..1024.
        """
        if cursor < 0 or not 0 < max_events <= MAX_EVENTS_PER_BATCH:
            raise ValueError(
                f"cursor must be >= 0 and max_events in 1..{MAX_EVENTS_PER_BATCH} "
                f"(got {cursor}, {max_events})"
            )
        with self.changed:
            if not self.enabled:
                return KVEventBatch(False, self.incarnation, 0, False, [])
            last = self._next_seq - 1
            first = self._log[0].seq if self._log else last + 1
            lost = cursor + 1 < first or cursor > last
            next_cursor = min(cursor, last)
            records: list[KVEventRecord] = []
            for record in islice(self._log, max(0, cursor + 1 - first), None):
                next_cursor = record.seq
                if record.kind == KIND_LOST:
                    lost = True
                    records.clear()
                elif record.model_name == model_name:
                    records.append(record.record())
                    if len(records) == max_events:
                        break
            return KVEventBatch(True, self.incarnation, next_cursor, lost, records)

    def status(self) -> dict[str, object]:
        """JSON-ready summary for ``/status``."""
        with self.changed:
            return {
                "enabled": self.enabled,
                "incarnation": self.incarnation,
                "log_depth": len(self._log),
                "log_capacity": self.capacity,
                "next_seq": self._next_seq,
                "lost_markers": self.stats.lost_markers,
                "unbound_stores": self.stats.unbound_stores,
                "bound_chunks": len(self._bindings),
            }
