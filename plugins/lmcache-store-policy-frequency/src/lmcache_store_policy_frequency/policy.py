"""Frequency-based L2 admission: a chunk goes to L2 only once it was stored N times.

Like vLLM's ``store_threshold``: a chunk that is computed once and never again
(most of a trace's chunks) costs an L2 write and evicts something useful there;
a chunk stored into L1 for the N-th time (recomputed because it was evicted,
so it recurs) is worth keeping in L2. The counts live in a bounded LRU table,
so memory stays flat whatever the traffic: a key forgotten there starts again
from one.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence

from lmcache_core.storage.keys import ObjectKey

THRESHOLD_ENV = "LMCACHE_L2_STORE_FREQUENCY_THRESHOLD"
TRACKED_ENV = "LMCACHE_L2_STORE_FREQUENCY_TRACKED_KEYS"
DEFAULT_THRESHOLD = 2
DEFAULT_TRACKED = 1 << 20


class FrequencyAdmission:
    """An admitting store policy: every target adapter, keys seen ``threshold`` times.

    Args:
        threshold: Stores into L1 a key needs before it goes to L2 (>= 1; 1 admits all).
        tracked_keys: Most keys counted at once (the least recent are forgotten).

    Raises:
        ValueError: A bound is below 1.
    """

    keep_in_l1 = True

    def __init__(
        self, threshold: int = DEFAULT_THRESHOLD, tracked_keys: int = DEFAULT_TRACKED
    ) -> None:
        if threshold < 1:
            raise ValueError(f"the frequency threshold must be >= 1, not {threshold}")
        if tracked_keys < 1:
            raise ValueError(f"the tracked keys bound must be >= 1, not {tracked_keys}")
        self.threshold = threshold
        self.tracked_keys = tracked_keys
        self._counts: OrderedDict[ObjectKey, int] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._counts)

    def targets(self, adapter_count: int) -> Sequence[int]:
        """Every adapter, in cascade order."""
        return range(adapter_count)

    def admit(self, keys: Sequence[ObjectKey]) -> list[bool]:
        """Count one store of each key; True for those stored ``threshold`` times or more."""
        counts, threshold = self._counts, self.threshold
        out = []
        with self._lock:
            for key in keys:
                count = counts.pop(key, 0) + 1
                counts[key] = count
                out.append(count >= threshold)
            while len(counts) > self.tracked_keys:
                counts.popitem(last=False)
        return out


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {raw!r}") from None


def build_policy() -> FrequencyAdmission:
    """The spec's factory (store policies take no arguments: the bounds come from the env).

    ``LMCACHE_L2_STORE_FREQUENCY_THRESHOLD`` (default 2) and
    ``LMCACHE_L2_STORE_FREQUENCY_TRACKED_KEYS`` (default 1,048,576).

    Raises:
        ValueError: A variable is not an integer >= 1 (the server does not start).
    """
    return FrequencyAdmission(
        _env_int(THRESHOLD_ENV, DEFAULT_THRESHOLD), _env_int(TRACKED_ENV, DEFAULT_TRACKED)
    )
