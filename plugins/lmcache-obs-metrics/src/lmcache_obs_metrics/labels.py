"""Bounded label values: the first distinct values pass, the rest fold into ``_other``.

``cache_salt`` and ``model_name`` come from clients. Every distinct value of a
label multiplies the series a metric exports (and Prometheus memory), so a
client that sends a fresh salt per request could make the exporter grow without
limit. A :class:`LabelCap` admits the first ``limit`` distinct values it sees and
reports every later one as :data:`OTHER`; counters still count everything.
"""

from __future__ import annotations

import threading

OTHER = "_other"
"""The value that stands for every value past a label's cap."""

MAX_CACHE_SALTS = 64
"""Distinct ``cache_salt`` values exported before folding into :data:`OTHER`."""

MAX_MODEL_NAMES = 16
"""Distinct ``model_name`` values exported before folding into :data:`OTHER`."""

MAX_LABEL_LENGTH = 128
"""Longer values are cut (a label value is kept in every series that carries it)."""


class LabelCap:
    """Admits at most ``limit`` distinct values of one label.

    Args:
        limit: Distinct values kept; must be at least 1.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        self.limit = limit
        self.folded = 0
        """How many values were reported as :data:`OTHER` (for tests and ``/status``)."""
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: object) -> str:
        """The label value to export for ``value`` (``None`` is the empty string)."""
        text = "" if value is None else str(value)[:MAX_LABEL_LENGTH]
        seen = self._seen
        if text in seen:
            return text
        with self._lock:
            if text in seen:
                return text
            if len(seen) < self.limit:
                seen.add(text)
                return text
            self.folded += 1
            return OTHER

    def values(self) -> frozenset[str]:
        """The values admitted so far."""
        with self._lock:
            return frozenset(self._seen)
