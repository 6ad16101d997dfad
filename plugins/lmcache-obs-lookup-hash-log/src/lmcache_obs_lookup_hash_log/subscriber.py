"""The ``lookup_hash_log`` subscriber: one JSON line per ``mp.lookup`` event.

Each line records what a lookup asked for, in upstream's format, so the files
can be replayed or compared across servers::

    {"timestamp": 1700000000.5, "request_id": "r1", "model_name": "m",
     "chunk_size": 256, "seq_len": 512, "chunk_hashes": ["0x1f...", "0x9a..."]}

``timestamp`` is when the lookup was published (epoch seconds). Upstream also
writes ``dtypes`` and ``shapes`` of the GPU KV caches; this server's lookup does
not know them, so they are left out rather than guessed. The lines are written
on the event bus's drain thread, never on the request path.
"""

from __future__ import annotations

import json
from typing import Any

from lmcache_core.observability.events import MpLookup
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
        line = json.dumps(lookup_record(event), separators=(",", ":"), ensure_ascii=True)
        self.writer.write_line(line.encode() + b"\n")

    def close(self) -> None:
        """Close the current file."""
        self.writer.close()
