"""The ``lookup_hash_log`` subscriber: one JSON line per ``mp.lookup`` (and ``cb.lookup.end``).

Each line records what a lookup asked for, in upstream's format, so the files
can be replayed or compared across servers::

    {"timestamp": 1700000000.5, "request_id": "r1", "model_name": "m",
     "chunk_size": 256, "seq_len": 512, "chunk_hashes": ["0x1f...", "0x9a..."]}

``timestamp`` is when the lookup was published (epoch seconds). Upstream also
writes ``dtypes`` and ``shapes`` of the GPU KV caches; this server's lookup does
not know them, so they are left out rather than guessed. The lines are written
on the event bus's drain thread, never on the request path.

The blend engine's unified lookups add a line of their own (``cb.lookup.end``),
after the prefix leg's ``mp.lookup`` line: the hit tokens per class (prefix,
non-prefix, segmented prefix) and the non-prefix segments as
``[old_st, cur_st, "0x<chunk hash>"]``::

    {"timestamp": 1700000000.6, "request_id": "r1", "model_name": "m",
     "event": "cb.lookup.end", "seq_len": 1064, "prefix_hit_tokens": 256,
     "non_prefix_hit_tokens": 768, "segmented_prefix_hit_tokens": 0,
     "segments": [[768, 256, "0x1f..."], ...]}
"""

from __future__ import annotations

import json
from typing import Any

from lmcache_core.observability.events import CbLookupEnd, MpLookup
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

    def on_mp_lookup(self, event: MpLookup) -> None:
        """Append the lookup's line (a write error is counted by the writer)."""
        self._write(lookup_record(event))

    def on_cb_lookup_end(self, event: CbLookupEnd) -> None:
        """Append a unified lookup's blend hits (after its prefix leg's ``mp.lookup`` line)."""
        self._write(blend_record(event))

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=True)
        self.writer.write_line(line.encode() + b"\n")

    def close(self) -> None:
        """Close the current file."""
        self.writer.close()
