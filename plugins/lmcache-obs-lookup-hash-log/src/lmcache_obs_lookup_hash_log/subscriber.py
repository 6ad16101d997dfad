"""The ``lookup_hash_log`` subscriber: one JSON line per ``mp.lookup`` (and ``cb.lookup.end``).

Each line records what a lookup asked for, in upstream's format, so the files
can be replayed or compared across servers, followed by what it found and why
the rest missed (keys upstream does not write; readers of upstream's format
ignore them)::

    {"timestamp": 1700000000.5, "request_id": "r1", "model_name": "m",
     "chunk_size": 256, "seq_len": 512, "chunk_hashes": ["0x1f...", "0x9a..."],
     "hit_tokens": 256, "hit_chunks_by_tier": {"l1": 1.0},
     "first_miss": {"chunk": 1, "cause": "evicted", "tier": "l1", ...},
     "miss_chunks_by_cause": {"evicted": 1}}

A lookup's line is written when its result (``mp.lookup_prefetch.end``)
arrives, at once for an L1-only lookup and after the L2 prefetch otherwise. At
most :data:`PENDING_LIMIT` lookups wait for their result, none longer than
:data:`PENDING_MAX_AGE_S` of event time; past either bound, and at close, a line
is written without the result keys (its result event was dropped or never
came). ``timestamp`` is when the lookup was published (epoch seconds). Upstream also
writes ``dtypes`` and ``shapes`` of the GPU KV caches; this server's lookup does
not know them, so they are left out rather than guessed. The lines are written
on the event bus's drain thread, never on the request path.

The blend engine's unified lookups add a line of their own (``cb.lookup.end``),
after the prefix leg's ``mp.lookup`` line: the hit tokens per class (prefix,
non-prefix, segmented prefix), the non-prefix segments as
``[old_st, cur_st, "0x<chunk hash>"]`` and the segmented-prefix ones alike::

    {"timestamp": 1700000000.6, "request_id": "r1", "model_name": "m",
     "event": "cb.lookup.end", "seq_len": 1064, "prefix_hit_tokens": 256,
     "non_prefix_hit_tokens": 768, "segmented_prefix_hit_tokens": 0,
     "segments": [[768, 256, "0x1f..."], ...], "segmented_segments": []}
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import msgspec

from lmcache_core.observability.events import CbLookupEnd, MpLookup, MpLookupPrefetchEnd
from lmcache_core.observability.subscribers import BaseSubscriber
from lmcache_obs_lookup_hash_log.writer import RotatingJsonlWriter


def lookup_record(event: MpLookup) -> dict[str, Any]:
    """The JSON object of one ``mp.lookup`` event (upstream's keys, in upstream's order)."""
    return {
        "timestamp": event.timestamp,
        "request_id": event.request_id,
        "model_name": event.model_name,
        "chunk_size": event.chunk_size,
        "seq_len": event.seq_len,
        "chunk_hashes": list(event.chunk_hashes),
    }


PENDING_LIMIT = 1024
"""Lookups that may wait for their result before their line is written without it."""
PENDING_MAX_AGE_S = 60.0
"""Event-time seconds a lookup waits for its result at most."""


def result_fields(event: MpLookupPrefetchEnd) -> dict[str, Any]:
    """The keys a lookup's result adds to its line."""
    first = event.first_miss
    return {
        "hit_tokens": event.hit_tokens,
        "hit_chunks_by_tier": dict(event.hit_chunks_by_tier),
        "first_miss": msgspec.to_builtins(first) if first is not None else None,
        "miss_chunks_by_cause": dict(event.miss_chunks_by_cause),
    }


def blend_record(event: CbLookupEnd) -> dict[str, Any]:
    """The JSON object of one ``cb.lookup.end`` event: blend hits by class, the segments."""
    return {
        "timestamp": event.timestamp,
        "request_id": event.request_id,
        "model_name": event.model_name,
        "event": event.type,
        "seq_len": event.num_tokens,
        "prefix_hit_tokens": event.prefix_hit_tokens,
        "non_prefix_hit_tokens": event.non_prefix_hit_tokens,
        "segmented_prefix_hit_tokens": event.segmented_prefix_hit_tokens,
        "segments": [[old, cur, "0x" + digest] for old, cur, digest in event.segments],
        "segmented_segments": [
            [old, cur, "0x" + digest] for old, cur, digest in event.segmented_segments
        ],
    }


class LookupHashLogSubscriber(BaseSubscriber):
    """Writes every ``mp.lookup`` event as a JSON line through a rotating writer.

    Args:
        writer: The files.
    """

    name = "lookup_hash_log"

    def __init__(self, writer: RotatingJsonlWriter) -> None:
        super().__init__()
        self.writer = writer
        self._pending: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def on_mp_lookup(self, event: MpLookup) -> None:
        """Hold the lookup's line until its result arrives (bounded in count and age)."""
        earlier = self._pending.pop(event.request_id, None)
        if earlier is not None:  # the request's previous lookup never got its result
            self._write(earlier)
        self._pending[event.request_id] = lookup_record(event)
        oldest_allowed = event.timestamp - PENDING_MAX_AGE_S
        while self._pending:
            request_id, record = next(iter(self._pending.items()))
            if len(self._pending) <= PENDING_LIMIT and record["timestamp"] >= oldest_allowed:
                break
            del self._pending[request_id]
            self._write(record)

    def on_mp_lookup_prefetch_end(self, event: MpLookupPrefetchEnd) -> None:
        """Append the lookup's line with its result (a write error is counted by the writer)."""
        record = self._pending.pop(event.request_id, None)
        if record is not None:
            record.update(result_fields(event))
            self._write(record)

    def on_cb_lookup_end(self, event: CbLookupEnd) -> None:
        """Append a unified lookup's blend hits (written when the blend lookup ends)."""
        self._write(blend_record(event))

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=True)
        self.writer.write_line(line.encode() + b"\n")

    def close(self) -> None:
        """Write the lookups still waiting for their result, close the current file."""
        while self._pending:
            self._write(self._pending.popitem(last=False)[1])
        self.writer.close()
