"""Eviction totals over a time window, logged as one INFO line per window.

Under memory pressure L1 evicts several times a second; one line per eviction
would flood an INFO log, none would hide the pressure. A summary per window says
how much was evicted, why, and how often.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from lmcache_obs_logging.lines import human_bytes


@dataclass
class EvictionSummary:
    """Accumulates the evictions of one tier until its window has passed.

    Args:
        tier: ``"L1"`` or ``"L2"`` (the line's prefix).
        window_s: How long one summary covers at least.
    """

    tier: str
    window_s: float
    events: int = 0
    keys: int = 0
    nbytes: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    adapters: Counter[str] = field(default_factory=Counter)
    started: float | None = None

    def add(
        self, now: float, keys: int, nbytes: int = 0, reason: str = "", adapter: str = ""
    ) -> None:
        """Count one eviction event."""
        if self.started is None:
            self.started = now
        self.events += 1
        self.keys += keys
        self.nbytes += nbytes
        if reason:
            self.reasons[reason] += keys
        if adapter:
            self.adapters[adapter] += keys

    def due(self, now: float) -> bool:
        """Whether the window that began with the first eviction has passed."""
        return self.started is not None and now - self.started >= self.window_s

    def take(self, now: float) -> str | None:
        """The summary line of everything counted so far (and reset), or None if nothing was."""
        if self.started is None:
            return None
        span = max(now - self.started, 0.0)
        parts = [f"{self.tier} evicted {self.keys} keys"]
        if self.nbytes:
            parts[0] += f" ({human_bytes(self.nbytes)})"
        parts[0] += f" in {self.events} evictions over the last {span:.1f} s"
        if self.reasons:
            parts.append(
                "reasons: " + ", ".join(f"{r}={n}" for r, n in sorted(self.reasons.items()))
            )
        if self.adapters:
            parts.append(
                "adapters: " + ", ".join(f"{a}={n}" for a, n in sorted(self.adapters.items()))
            )
        self.events = self.keys = self.nbytes = 0
        self.reasons.clear()
        self.adapters.clear()
        self.started = None
        return "; ".join(parts)
