"""What one replay is configured with, shared by the driver and its engine clients.

It travels to every engine-client process as JSON on the command line, so the
upstream client (run with another interpreter, without ``lmcache_core``) reads
it too: this module imports nothing outside the standard library.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class KVShape:
    """The small KV layout of the replay's engine clients (one tensor per layer).

    The default makes a 256-token chunk 16 KiB: the trace's structure at a size
    this machine holds (2 layers, K and V, 1 head of 8 bf16 values per token).
    """

    num_layers: int = 2
    num_heads: int = 1
    head_dim: int = 8
    block_size: int = 16

    def object_bytes(self, chunk_size: int) -> int:
        """Bytes of one chunk's KV object (bf16, K and V)."""
        return self.num_layers * 2 * chunk_size * self.num_heads * self.head_dim * 2


@dataclass
class ReplaySettings:
    """One replay.

    Attributes:
        trace: The trace file.
        url: The server's ZeroMQ endpoint.
        client: ``ours`` or ``upstream``.
        concurrency: Engine clients (1-16), each its own process.
        max_requests: The first N requests only (None: all).
        time_budget_s: Stop issuing requests after this many seconds (None: none).
        as_fast_as_possible: Ignore the trace's arrival times.
        time_scale: Arrival times are divided by this (10: ten times faster).
        chunk_size: The server's chunk size in tokens.
        kv: The engine clients' KV layout.
        model_name: The model name in keys.
        status_url: The server's HTTP base URL; set, each request waits until
            L1 usage is at or below ``watermark`` (the eviction controller's
            round done), so the replay and the simulator see events in one order.
        watermark: See ``status_url``.
        start_at: Wall-clock time (``time.time()``) of the trace's time 0.
    """

    trace: str
    url: str
    client: str = "ours"
    concurrency: int = 1
    max_requests: int | None = None
    time_budget_s: float | None = None
    as_fast_as_possible: bool = False
    time_scale: float = 1.0
    chunk_size: int = 256
    kv: KVShape = field(default_factory=KVShape)
    model_name: str = "trace-model"
    status_url: str | None = None
    watermark: float = 0.8
    start_at: float = 0.0

    def to_json(self) -> str:
        """The settings as one JSON object."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ReplaySettings:
        """Settings from :meth:`to_json`'s output."""
        raw = json.loads(text)
        raw["kv"] = KVShape(**raw["kv"])
        return cls(**raw)
