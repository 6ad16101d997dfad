"""Counters the connector keeps, for vLLM's connector stats and the docs' figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Bounded: the latency samples feed percentiles, not a full history.
_MAX_SAMPLES = 4096


@dataclass
class ConnectorStats:
    """Scheduler- and worker-side counters (each role fills its own).

    Attributes:
        lookups: Lookups started (including ones answered "miss" without asking).
        lookups_degraded: Lookups answered "miss" because the server was down.
        lookup_errors: Lookups that failed (error reply or timeout).
        lookup_timeouts: Lookups abandoned after ``lookup_timeout``.
        lookup_tokens: Tokens asked for.
        hit_tokens: Tokens found.
        load_tokens: Tokens vLLM chose to load.
        store_tokens: Tokens planned for storing.
        lookup_seconds: Submission-to-answer latencies (the last 4096).
        loads_ok: Loads that completed (worker).
        loads_failed: Loads reported failed (worker; vLLM recomputes or fails them).
        stores_ok: Stores committed (worker).
        stores_dropped: Stores not done: server down, slow or out of room (worker).
    """

    lookups: int = 0
    lookups_degraded: int = 0
    lookup_errors: int = 0
    lookup_timeouts: int = 0
    lookup_tokens: int = 0
    hit_tokens: int = 0
    load_tokens: int = 0
    store_tokens: int = 0
    lookup_seconds: list[float] = field(default_factory=list)
    loads_ok: int = 0
    loads_failed: int = 0
    stores_ok: int = 0
    stores_dropped: int = 0

    def add_lookup_latency(self, seconds: float) -> None:
        """Record one lookup latency (the oldest sample goes when full)."""
        if len(self.lookup_seconds) >= _MAX_SAMPLES:
            del self.lookup_seconds[0]
        self.lookup_seconds.append(seconds)

    def snapshot(self) -> dict[str, Any]:
        """The counters as a plain dict (latencies summarised)."""
        values = {k: v for k, v in vars(self).items() if k != "lookup_seconds"}
        samples = sorted(self.lookup_seconds)
        if samples:
            values["lookup_p50_seconds"] = samples[len(samples) // 2]
            values["lookup_max_seconds"] = samples[-1]
        values["hit_rate"] = self.hit_tokens / self.lookup_tokens if self.lookup_tokens else 0.0
        return values
